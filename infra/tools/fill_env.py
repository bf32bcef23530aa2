"""Write the untracked *.env files of an overlay from its committed *.env.example templates.

Every value `change-me` becomes a fresh random token (hex, so it is safe inside a URL); other
values are copied as they are. An existing .env is never overwritten.

Usage: python infra/tools/fill_env.py OVERLAY_DIR
"""

import secrets
import sys
from pathlib import Path

PLACEHOLDER = "change-me"


def fill_env(overlay: Path) -> list[Path]:
    """Create the missing `.env` files under `overlay`; return the ones written."""
    written = []
    for example in sorted(overlay.rglob("*.env.example")):
        target = example.with_name(example.name.removesuffix(".example"))
        if target.exists():
            continue
        lines = []
        for line in example.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#") and value.strip() == PLACEHOLDER:
                line = f"{key}={secrets.token_hex(16)}"
            lines.append(line)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.chmod(0o600)
        tmp.replace(target)
        written.append(target)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        raise SystemExit(__doc__.strip().splitlines()[-1])
    for path in fill_env(Path(sys.argv[1])):
        print(f"wrote {path}")
