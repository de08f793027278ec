"""PEP 517 backend: maturin, after staging the ``llamagate`` package.

The repository keeps its layers as top-level folders (``domain/``,
``application/``, ``adapters/``, ``server/``, ``rust_ext/``); installed, they
all live under the one import name ``llamagate`` so that nothing generic
(``server``, ``domain``) lands in site-packages. ``stage_package`` builds
``.pkg/llamagate/`` (maturin's ``python-source``): symbolic links to the
folders for an editable install, so edits are live, and copies for a wheel
(maturin packs real files only). The gRPC stubs are generated into it too.
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
_NOT_SHIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "src")

INIT = '''"""llamagate: plan, launch and stream GGUF models through llama.cpp's llama-server.

Subpackages: ``domain`` (pure rules, usable as a library), ``application``
(the model slot), ``adapters`` (llama-server, GGUF, GPUs), ``server`` (gRPC and
the command line), ``rust_ext`` (the native GGUF scanner), ``v1`` (the API's
generated stubs).
"""
'''


def stage_package(*, linked: bool) -> Path:
    """(Re)build .pkg/llamagate; returns the python-source directory."""
    shutil.rmtree(STAGE, ignore_errors=True)
    PACKAGE.mkdir(parents=True)
    (PACKAGE / "__init__.py").write_text(INIT)
    for layer in LAYERS:
        if linked:
            os.symlink(os.path.relpath(ROOT / layer, PACKAGE), PACKAGE / layer, target_is_directory=True)
        else:
            shutil.copytree(ROOT / layer, PACKAGE / layer, ignore=_NOT_SHIPPED)
    generate_stubs(STAGE)
    shutil.rmtree(ROOT / "llamagate", ignore_errors=True)  # stubs of the old layout would shadow the package
    return STAGE


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    stage_package(linked=False)
    return maturin.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    stage_package(linked=True)
    return maturin.build_editable(wheel_directory, config_settings, metadata_directory)


build_sdist = maturin.build_sdist
get_requires_for_build_wheel = maturin.get_requires_for_build_wheel
get_requires_for_build_editable = maturin.get_requires_for_build_wheel
get_requires_for_build_sdist = maturin.get_requires_for_build_sdist


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    stage_package(linked=False)  # maturin reads the package layout from python-source
    return maturin.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    stage_package(linked=True)
    return maturin.prepare_metadata_for_build_wheel(metadata_directory, config_settings)
