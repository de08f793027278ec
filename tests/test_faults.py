"""Faults a machine causes (issue 13): the service killed and started again, with
another llama-server on the machine that is not its own."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import psutil
import pytest
from processes import gone, gone_within
from test_cli import free_port, start_serve

pytestmark = pytest.mark.engine


def test_a_restart_after_sigkill_leaves_no_orphan_and_never_touches_a_foreign_llama_server(
        tmp_path, llama_cpp_tree, smollm2_path, service_settings):
    from llamagate.adapters.engine_discovery import find_llama_server

    binary = find_llama_server(service_settings.env, service_settings.cache_dir, None)
    copy = tmp_path / "llama-server"  # someone else's llama-server: the same program, another install
    shutil.copy2(binary, copy)
    foreign = subprocess.Popen([str(copy), "-m", str(smollm2_path), "--port", str(free_port()), "-c", "256",
                                "--no-webui"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "LD_LIBRARY_PATH": str(binary.parent)})
    serve, child = start_serve(f"127.0.0.1:{free_port()}")
    try:
        serve.send_signal(signal.SIGKILL)
        serve.wait(timeout=10)
        assert gone_within(child, 2.0), f"llama-server {child} outlived its SIGKILLed parent"
        again, new_child = start_serve(f"127.0.0.1:{free_port()}")  # its start-up clean-up runs
        try:
            assert psutil.pid_exists(new_child) and new_child != child
            assert foreign.poll() is None, "the foreign llama-server was killed"
        finally:
            again.send_signal(signal.SIGTERM)
            assert again.wait(timeout=30) == 0
        assert gone_within(new_child, 5.0)
        assert foreign.poll() is None  # nor at exit
    finally:
        foreign.kill()
        foreign.wait(timeout=10)
        for pid in (child,):
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
