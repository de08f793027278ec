"""The command line as a user runs it: serve, chat, status, unload, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import grpc
import psutil
import pytest
from conftest import RunningService
from processes import gone, gone_within

from llamagate.v1 import llamagate_pb2 as pb

pytestmark = pytest.mark.engine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llamagate(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llamagate.server.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_serve_loads_the_default_model_and_chat_streams_an_answer(smollm2_path):
    address = f"127.0.0.1:{free_port()}"
    serve = subprocess.Popen([sys.executable, "-m", "llamagate.server.cli", "serve", "--listen", address, "--ctx", "1024"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        chat = llamagate("chat", "--address", address, "--max-tokens", "16", "Say hello.")
        assert chat.returncode == 0, chat.stderr
        assert chat.stdout.strip()
        assert "tokens" in chat.stderr  # the closing line: finish reason and usage

        status = llamagate("status", "--address", address)
        assert "SmolLM2-135M-Instruct" in status.stdout and "ready" in status.stdout
        pid = int(status.stdout.split("pid")[1].split()[0])
        assert psutil.Process(pid).name() == "llama-server"

        serve.send_signal(signal.SIGTERM)
        output, _ = serve.communicate(timeout=30)
        assert serve.returncode == 0, output
        assert not psutil.pid_exists(pid)
    finally:
        if serve.poll() is None:
            serve.kill()


def start_serve(address: str) -> tuple[subprocess.Popen, int]:
    """``llamagate serve`` with SmolLM2, once its model is ready: (process, llama-server pid)."""
    serve = subprocess.Popen([sys.executable, "-m", "llamagate.server.cli", "serve", "--listen", address, "--ctx",
                              "1024"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert serve.stdout is not None
    for line in serve.stdout:
        if line.startswith("model ") and " ready" in line:
            return serve, int(line.rsplit("pid", 1)[1])
    raise AssertionError(f"serve ended before its model was ready (code {serve.wait()})")


def test_defect_10_a_sigkilled_service_leaves_no_llama_server_running():
    serve, pid = start_serve(f"127.0.0.1:{free_port()}")
    try:
        serve.send_signal(signal.SIGKILL)  # no handler, no clean-up: only the kernel acts
        serve.wait(timeout=10)
        assert gone_within(pid, 2.0), f"llama-server {pid} outlived its SIGKILLed parent by 2 s"
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_chat_without_a_service_says_where_it_looked():
    address = f"127.0.0.1:{free_port()}"
    chat = llamagate("chat", "--address", address, "--connect-timeout", "1", "hi")
    assert chat.returncode == 1
    assert address in chat.stderr and "llamagate serve" in chat.stderr


def test_loading_without_an_engine_is_failed_precondition_naming_the_fix(monkeypatch, tmp_path, smollm2_path):
    monkeypatch.setenv("LLAMAGATE_CACHE_DIR", str(tmp_path))  # no engine built there
    monkeypatch.delenv("LLAMA_SERVER_PATH", raising=False)
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("PATH", os.defpath)
    service = RunningService()
    try:
        from llamagate.v1 import llamagate_pb2_grpc

        stub = llamagate_pb2_grpc.LlamaGateServiceStub(grpc.insecure_channel(service.address))
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.LoadModel(pb.LoadModelRequest(path=str(smollm2_path))))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "llamagate engine install" in caught.value.details()
        assert str(tmp_path) in caught.value.details()
        assert stub.GetStatus(pb.GetStatusRequest()).model.state == pb.MODEL_STATE_EMPTY
    finally:
        service.close()
