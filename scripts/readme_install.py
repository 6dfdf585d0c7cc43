"""The README's "Install into your ComfyUI" commands, exactly as a user reads them.

    python scripts/readme_install.py            # prints the commands (one per line)

``scripts/newcomer_install.sh`` runs what this prints (with ``<this repository>`` replaced by the clone being
tested), so CI installs the pack the way the README tells a user; ``tests/test_install.py`` checks the parse."""
from __future__ import annotations

import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADING = "## Install into your ComfyUI"
PLACEHOLDER = "<this repository>"


def install_commands(readme_text: str) -> list:
    """The shell lines of the first ```bash block under HEADING, comments and blank lines dropped."""
    at = readme_text.find(HEADING)
    if at < 0:
        raise SystemExit(f"README has no '{HEADING}' section")
    m = re.search(r"```bash\n(.*?)```", readme_text[at:], re.S)
    if not m:
        raise SystemExit(f"README's '{HEADING}' section has no ```bash block")
    out = []
    for line in m.group(1).splitlines():
        line = line.split("   #", 1)[0].rstrip()  # trailing comments are written after three spaces
        if line and not line.lstrip().startswith("#"):
            out.append(line)
    return out


def main() -> None:
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as fh:
        for line in install_commands(fh.read()):
            print(line)


if __name__ == "__main__":
    sys.exit(main())
