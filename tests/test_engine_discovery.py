"""Finding llama-server (SPEC §1)."""

from __future__ import annotations

import os
import stat

import pytest

from llamagate.adapters import engine_discovery, paths
from llamagate.adapters.engine_discovery import (
    candidates,
    child_environment,
    find_llama_server,
)
from llamagate.domain.errors import EngineNotFound


def executable(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.fixture
def empty_cache(tmp_path):
    return tmp_path / "cache"


def test_explicit_path_beats_chosen_dir_beats_cache_beats_path(tmp_path, empty_cache):
    env_bin = executable(tmp_path / "env" / "llama-server")
    dir_bin = executable(tmp_path / "llama.cpp" / "build" / "bin" / "llama-server")
    cache_bin = executable(paths.engine_build_dir(empty_cache, "cpu") / "bin" / "llama-server")
    path_bin = executable(tmp_path / "onpath" / "llama-server")
    env = {"LLAMA_SERVER_PATH": str(env_bin), "PATH": str(path_bin.parent)}
    chosen = str(tmp_path / "llama.cpp")

    assert find_llama_server(env, empty_cache, chosen) == env_bin
    assert find_llama_server({"PATH": env["PATH"]}, empty_cache, chosen) == dir_bin
    assert find_llama_server({"PATH": env["PATH"]}, empty_cache) == cache_bin
    cache_bin.unlink()
    assert find_llama_server({"PATH": env["PATH"]}, empty_cache) == path_bin
    order = candidates({"LLAMA_SERVER_PATH": str(env_bin), "PATH": env["PATH"]}, empty_cache, chosen)
    assert order[0] == env_bin and order[-1] == path_bin


def test_nothing_found_lists_every_place_and_the_fix(tmp_path, empty_cache):
    with pytest.raises(EngineNotFound) as caught:
        find_llama_server({"PATH": str(tmp_path / "nowhere")}, empty_cache, str(tmp_path / "mine"))
    message = str(caught.value)
    for place in candidates({}, empty_cache, str(tmp_path / "mine")):
        assert str(place) in message
    assert "on PATH" in message and "llamagate engine install" in message


def test_the_child_finds_libraries_beside_its_binary(tmp_path):
    env = child_environment(tmp_path / "bin" / "llama-server", {"LD_LIBRARY_PATH": "/opt/x"})
    dirs = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert dirs[0] == str(tmp_path / "bin") and dirs[-1] == "/opt/x"


def test_the_real_engine_is_installed_where_discovery_looks(cache_dir):
    found = find_llama_server({"PATH": ""}, cache_dir)
    assert found.name == engine_discovery.BINARY and os.access(found, os.X_OK)
