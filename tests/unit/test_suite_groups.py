"""The suite's xdist grouping stays true: every module that uses a session-scoped DAG run or
server is in one group of tests/conftest.py's XDIST_GROUPS (else each worker would start its own)."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
SHARED = {"smoke_run": "e2e", "served": "e2e", "nano_pair": "nano", "cut_and_rerun": "server", "tracking_server": "server", "s3": "server", "moto_url": "server"}


def _groups() -> dict:
    tree = ast.parse((TESTS / "conftest.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "XDIST_GROUPS")
    return ast.literal_eval(node.value)


def _fixtures_used(path: Path) -> set[str]:
    """The parameter names of the module's test functions and fixtures."""
    tree = ast.parse(path.read_text())
    return {a.arg for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) for a in n.args.args}


def test_every_grouped_module_exists():
    assert all((ROOT / module).is_file() for module in _groups()), _groups()


def test_every_module_using_a_shared_run_or_server_is_in_its_group():
    groups = _groups()
    for path in sorted(TESTS.rglob("test_*.py")):
        module = path.relative_to(ROOT).as_posix()
        needs = {SHARED[f] for f in _fixtures_used(path) & set(SHARED)}
        assert len(needs) <= 1, f"{module} uses the shared fixtures of several groups: {needs}"
        if needs:
            assert groups.get(module) == needs.pop(), f"{module} uses a shared session fixture: add it to XDIST_GROUPS in tests/conftest.py"
