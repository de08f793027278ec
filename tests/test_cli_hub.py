"""The command line names Hub models as REPO[:VARIANT] wherever it takes a file (issue 11)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import RunningService
from hub_server import SINGLE_REPO, SMOLLM2_Q4_1, SMOLLM2_Q8_0, VARIANTS_REPO
from test_cli import free_port, llamagate

from llamagate.domain.errors import InvalidArgument
from llamagate.domain.hub import HubSource
from llamagate.server.cli import model_source


def test_a_file_that_is_there_or_a_gguf_name_is_a_file_and_anything_else_a_hub_reference(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "model").write_bytes(b"GGUF")
    assert model_source("org/model") == "org/model"  # a file by that name wins
    assert model_source("models/missing.gguf") == "models/missing.gguf"  # not found later, as a file
    assert model_source("unsloth/Qwen3-4B-GGUF:Q4_K_M") == HubSource("unsloth/Qwen3-4B-GGUF", "Q4_K_M")
    assert model_source("hf.co/unsloth/Qwen3-4B-GGUF", revision="v2") == HubSource("unsloth/Qwen3-4B-GGUF",
                                                                                       revision="v2")
    with pytest.raises(InvalidArgument, match="neither a file nor"):
        model_source("no such thing")


def test_plan_of_a_hub_model_reads_its_header_only_and_shows_the_download(hub, hf_cache):
    result = llamagate("plan", f"{VARIANTS_REPO}:Q8_0")
    assert result.returncode == 0, result.stderr
    assert f"{VARIANTS_REPO}:Q8_0" in result.stdout and "still to fetch" in result.stdout
    assert str(hf_cache) in result.stdout and "fits" in result.stdout
    assert hub.body_requests(VARIANTS_REPO, SMOLLM2_Q8_0) and all(r.range for r in hub.body_requests())


def test_plan_of_an_unknown_repo_fails_with_one_line(hub, hf_cache):
    result = llamagate("plan", "llamagate-test/no-such-GGUF")
    assert result.returncode == 1 and "no repository llamagate-test/no-such-GGUF" in result.stderr
    assert "Traceback" not in result.stderr


def test_load_streams_the_download_and_the_service_serves_the_hub_model(hub, hf_cache, llama_cpp_tree):
    service = RunningService()
    try:
        result = llamagate("load", SINGLE_REPO, "--ctx", "1024", "--address", service.address)
        assert result.returncode == 0, result.stderr
        assert "downloading: " in result.stderr and SMOLLM2_Q4_1 in result.stderr
        assert "SmolLM2-135M-Instruct-Q4_1 ready: context 1024" in result.stdout
        assert str(hf_cache) in result.stdout
    finally:
        service.close()


def test_serve_takes_a_hub_model_at_start(hub, hf_cache, llama_cpp_tree):
    address = f"127.0.0.1:{free_port()}"
    serve = subprocess.Popen([sys.executable, "-m", "llamagate.server.cli", "serve", "--listen", address, "--ctx",
                              "1024", "--model", f"{VARIANTS_REPO}:Q4_1"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        assert serve.stdout is not None
        lines = []
        for line in serve.stdout:
            lines.append(line)
            if line.startswith("model "):
                break
        assert lines[-1].startswith("model SmolLM2-135M-Instruct-Q4_1 ready"), "".join(lines)
        assert [r.range for r in hub.body_requests(VARIANTS_REPO, SMOLLM2_Q4_1)][-1] is None  # downloaded whole
    finally:
        serve.terminate()
        serve.wait(timeout=30)
