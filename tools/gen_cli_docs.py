"""Write docs/cli.md from the commands' --help (or, with --check, fail if it is stale).

    python tools/gen_cli_docs.py          # regenerate
    python tools/gen_cli_docs.py --check  # exit 1 if docs/cli.md differs
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def rendered() -> str:
    env = dict(os.environ, TERMINAL_WIDTH="100", NO_COLOR="1", ARBOOTH_LOAD_PLUGINS="", COLUMNS="100")
    env.pop("FORCE_COLOR", None)
    code = "from arbooth_cli.cli import build_app; from arbooth_cli.cli._docs import render; " \
           "import sys; sys.stdout.write(render(build_app()))"
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                          text=True).stdout


def main() -> int:
    text = rendered()
    if "--check" in sys.argv:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is stale: run python tools/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.parent.mkdir(exist_ok=True)
    tmp = DOC.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, DOC)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
