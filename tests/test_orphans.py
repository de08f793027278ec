"""SPEC §11: orphaned llama-servers of ours are killed; live children and others' are not."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psutil
import pytest

from llamagate.adapters import paths
from llamagate.adapters.engine_discovery import find_llama_server
from llamagate.adapters.orphans import is_ours, kill_orphans

pytestmark = pytest.mark.engine


def test_ours_means_under_an_install_dir_or_a_configured_binary():
    assert is_ours("/c/engine/x-cpu/bin/llama-server", [Path("/c/engine")], [])
    assert is_ours("/opt/llama-server", [Path("/c/engine")], [Path("/opt/llama-server")])
    assert not is_ours("/usr/bin/llama-server", [Path("/c/engine")], [Path("/opt/llama-server")])


def _serve_args(model: Path) -> list[str]:
    return ["-m", str(model), "--port", "0", "-c", "256", "--no-webui"]


def test_an_orphan_of_ours_is_killed_and_a_live_child_is_not(smollm2_path):
    binary = find_llama_server({"PATH": ""})
    # The shell exits at once: its llama-server is re-parented, an orphan.
    shell = subprocess.run(
        ["sh", "-c", f"'{binary}' {' '.join(_serve_args(smollm2_path))} >/dev/null 2>&1 & echo $!"],
        capture_output=True, text=True, check=True, start_new_session=True,
    )
    orphan = psutil.Process(int(shell.stdout))
    child = subprocess.Popen([str(binary), *_serve_args(smollm2_path)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while orphan.ppid() not in (0, 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        if orphan.ppid() not in (0, 1):
            pytest.fail(f"orphan was re-parented to {orphan.ppid()} (a subreaper), not init")

        killed = kill_orphans([paths.engine_root()], [binary])

        assert orphan.pid in killed and child.pid not in killed
        orphan.wait(timeout=10)
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()
        if orphan.is_running():
            orphan.kill()
