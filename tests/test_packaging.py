"""Installed, everything lives under the one name llamagate (issue 7, defect 19)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

GENERIC = ("domain", "application", "adapters", "server", "rust_ext")


def python_outside_the_checkout(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)


def test_defect_19_outside_the_checkout_only_llamagate_is_importable(tmp_path):
    code = (
        "import importlib.util, sys\n"
        "from llamagate.domain.load_plan import plan_load\n"
        "import llamagate.server.app, llamagate.application.slot, llamagate.rust_ext\n"
        f"print(sorted(n for n in {GENERIC!r} if importlib.util.find_spec(n) is not None))\n"
    )
    done = python_outside_the_checkout(tmp_path, code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_defect_19_an_application_with_its_own_server_module_still_imports_llamagate(tmp_path):
    (tmp_path / "server.py").write_text("NAME = 'the application'\n")
    (tmp_path / "domain.py").write_text("NAME = 'the application'\n")
    code = ("import sys; sys.path.insert(0, '.')\n"
            "import server, domain\n"
            "from llamagate.server.cli import main\n"
            "from llamagate.domain.planning import make_plan\n"
            "print(server.NAME, domain.NAME)\n")
    done = python_outside_the_checkout(tmp_path, code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "the application the application"


def test_the_installed_import_path_holds_nothing_but_llamagate():
    files = importlib.metadata.distribution("llamagate").files or []
    pth = [f for f in files if f.name.endswith(".pth")]
    roots = [Path(line) for f in pth for line in Path(f.locate()).read_text().split() if line]
    tops = {name for f in files if f.parts and f.parts[0] not in (".", "..") for name in [f.parts[0]]
            if not name.endswith((".dist-info", ".pth")) and not name.startswith("__")}
    for root in roots:  # an editable install: the .pth names one folder
        tops |= {p.name for p in root.iterdir() if not p.name.startswith(".")}
    assert tops == {"llamagate"}


def test_the_llamagate_command_runs_outside_the_checkout(tmp_path):
    command = Path(sys.executable).with_name("llamagate")
    done = subprocess.run([str(command), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "serve" in done.stdout and "plan" in done.stdout


def test_a_wheel_holds_the_one_package_with_its_python_files(tmp_path):
    """Built from this checkout, the wheel ships llamagate/ whole and nothing else
    (maturin skips git-ignored files, and the staged package is git-ignored)."""
    root = Path(__file__).resolve().parent.parent
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # maturin
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path), str(root)], capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    import zipfile

    [wheel] = tmp_path.glob("llamagate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"llamagate"}
    for module in ("llamagate/__init__.py", "llamagate/domain/load_plan.py", "llamagate/server/cli.py",
                   "llamagate/application/slot.py", "llamagate/adapters/llama_process.py",
                   "llamagate/v1/llamagate_pb2.py", "llamagate/rust_ext/__init__.py"):
        assert module in names
    assert any(name.startswith("llamagate/rust_ext/_native") and name.endswith(".so") for name in names)
    assert not any("__pycache__" in name or name.endswith(".rs") for name in names)
    assert (root / ".pkg" / "llamagate" / "domain").is_symlink()  # the checkout's editable install still works
