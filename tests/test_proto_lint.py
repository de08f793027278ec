"""The API follows buf's STANDARD lint rules (proto/buf.yaml).

Those are the names every language's generator expects (a *Service suffix,
<Method>Request/<Method>Response, prefixed enum values with an _UNSPECIFIED
zero), so the generated clients read like their language's own.
buildsys/buf runs the pinned buf, installing it once from npm.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_proto_passes_buf_lint_with_the_standard_rules():
    lint = [str(ROOT / "buildsys" / "buf"), "lint", "proto"]
    done = subprocess.run(lint, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, f"buf lint proto:\n{done.stdout}{done.stderr}"
