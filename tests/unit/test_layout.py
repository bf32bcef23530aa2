"""Rules of the library's shape, checked on its source: no import cycle in scenesearch/ (counting
imports inside functions too), and the library never prints or exits (only scenesearch/cli.py,
the edge of the CLI and of every KFP task, does)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "scenesearch"
EDGE = {"scenesearch.cli"}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The scenesearch modules `name` imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_the_import_graph_of_scenesearch_has_no_cycle():
    modules = _modules()
    known = set(modules)
    # a package's __init__ is not an edge to its submodules' importers: `import a.b` runs a/__init__ first,
    # so only real imports count; a package that re-exports its submodules points at them.
    graph = {n: {m for m in _imports(n, t, known) if not n.startswith(m + ".")} for n, t in modules.items()}
    assert {"scenesearch.gallery", "scenesearch.train"} <= graph["scenesearch.retrieval"]  # the walk sees function-level imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_library_never_prints_or_exits():
    offenders = []
    for name, tree in _modules().items():
        if name in EDGE or name.endswith(".__main__"):  # entry points: `python -m ...`
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("print", "exit", "quit"):
                offenders.append(f"{name}:{node.lineno} {node.func.id}()")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "exit" and getattr(node.func.value, "id", "") in ("sys", "os"):
                offenders.append(f"{name}:{node.lineno} exit")
            if isinstance(node, ast.Name) and node.id == "SystemExit":
                offenders.append(f"{name}:{node.lineno} SystemExit")
    assert offenders == []


def test_no_method_name_appears_outside_its_module():
    """Methods are plugins: train, retrieve, serve, register and the pipeline never name one."""
    from scenesearch import methods

    names = methods.names()
    offenders = []
    for path in [*PACKAGE.rglob("*.py"), *PACKAGE.parent.joinpath("components").glob("*.py"), *PACKAGE.parent.joinpath("pipelines").glob("*.py")]:
        if path.parent == PACKAGE / "methods" and path.stem != "__init__" and path.stem != "base":
            continue  # a method's own module
        text = path.read_text()
        offenders += [f"{path.relative_to(PACKAGE.parent)}: {n}" for n in names if f'"{n}"' in text or f"'{n}'" in text]
    assert offenders == []
