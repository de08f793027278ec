"""PEP 517 backend: maturin, after staging the ``llamagate`` package.

The repository keeps its layers as top-level folders (``domain/``,
``application/``, ``adapters/``, ``server/``, ``rust_ext/``); installed, they
all live under the one import name ``llamagate`` so that nothing generic
(``server``, ``domain``) lands in site-packages. ``stage_package`` builds
``.pkg/llamagate/`` (maturin's ``python-source``) out of symbolic links to
the folders, and generates the gRPC stubs into it. An editable install puts
``.pkg`` on the path, so edits are live; a wheel takes its Python files from
the ``include`` globs in pyproject.toml (maturin would otherwise skip them:
``.pkg`` is git-ignored).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import maturin
from protogen import generate_stubs

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / ".pkg"
PACKAGE = STAGE / "llamagate"
LAYERS = ("domain", "application", "adapters", "server", "rust_ext")

INIT = '''"""llamagate: plan, launch and stream GGUF models through llama.cpp's llama-server.

Subpackages: ``domain`` (pure rules, usable as a library), ``application``
(the model slot), ``adapters`` (llama-server, GGUF, GPUs), ``server`` (gRPC and
the command line), ``rust_ext`` (the native GGUF scanner and tool-call parser), ``v1`` (the API's
generated stubs).
"""
'''


def stage_package() -> Path:
    """(Re)build .pkg/llamagate; returns the python-source directory."""
    shutil.rmtree(STAGE, ignore_errors=True)
    PACKAGE.mkdir(parents=True)
    (PACKAGE / "__init__.py").write_text(INIT)
    for layer in LAYERS:
        os.symlink(os.path.relpath(ROOT / layer, PACKAGE), PACKAGE / layer, target_is_directory=True)
    generate_stubs(STAGE)
    shutil.rmtree(ROOT / "llamagate", ignore_errors=True)  # stubs of the old layout would shadow the package
    return STAGE


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    stage_package()
    return maturin.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    stage_package()
    return maturin.build_editable(wheel_directory, config_settings, metadata_directory)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    stage_package()  # maturin reads the package layout from python-source
    return maturin.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


build_sdist = maturin.build_sdist
get_requires_for_build_wheel = maturin.get_requires_for_build_wheel
get_requires_for_build_editable = maturin.get_requires_for_build_wheel
get_requires_for_build_sdist = maturin.get_requires_for_build_sdist
prepare_metadata_for_build_editable = prepare_metadata_for_build_wheel
