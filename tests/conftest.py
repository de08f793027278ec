"""Shared fixtures: the real llama.cpp tree and the real default model.

Both are set up by ``./dev`` (``llamagate engine install`` and
``llamagate model default``); a test that needs them fails loudly when they
are missing instead of skipping, so a broken set-up cannot pass CI.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters import paths


def _require(path: Path, how: str) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing; run `{how}` (./dev does this)")
    return path


@pytest.fixture(scope="session")
def llama_cpp_tree() -> Path:
    """The llama.cpp source tree of the pinned sdist (models/, templates/)."""
    return _require(paths.engine_source_dir(), "llamagate engine install")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return _require(paths.default_model_path(), "llamagate model default")
