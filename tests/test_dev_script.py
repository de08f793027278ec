"""The two README commands, run with every tool they call replaced by a recorder."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def recorder(path: Path, log: Path) -> None:
    path.write_text(f'#!/bin/sh\necho "{path.name} $*" >> "{log}"\n')
    path.chmod(0o755)


def run_dev(command: str, tmp_path: Path) -> list[str]:
    """``./dev COMMAND`` against a recording venv, cargo and cmake; returns the calls."""
    log = tmp_path / f"{command}.log"
    venv, tools = tmp_path / "venv", tmp_path / "tools"
    for directory, names in ((venv / "bin", ("python", "pip", "llamagate", "pytest")), (tools, ("cargo", "cmake"))):
        directory.mkdir(parents=True, exist_ok=True)
        for name in names:
            recorder(directory / name, log)
    env = os.environ | {"LLAMAGATE_VENV": str(venv), "PATH": f"{tools}:{os.environ['PATH']}"}
    done = subprocess.run([str(ROOT / "dev"), command], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines()


def test_defect_14_demo_and_test_set_up_the_same_targets_so_llama_cpp_is_built_once(tmp_path):
    demo, test = run_dev("demo", tmp_path), run_dev("test", tmp_path)

    setups = [[line for line in calls if line.startswith("llamagate setup")] for calls in (demo, test)]
    assert setups[0] == setups[1] == ["llamagate setup --test-tools"]
    assert any(line.startswith("llamagate chat") for line in demo)
    assert any(line.startswith("python -m mypy") for line in test) and any(line.startswith("pytest") for line in test)
