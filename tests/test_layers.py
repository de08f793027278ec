"""domain/ talks to the world only through ports: no I/O library imports."""

from __future__ import annotations

import ast
from pathlib import Path

FORBIDDEN = {"grpc", "httpx", "subprocess", "psutil", "huggingface_hub", "pynvml", "requests", "socket"}
DOMAIN = Path(__file__).resolve().parent.parent / "domain"


def forbidden_imports(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names} & FORBIDDEN
    return found


def test_the_checker_catches_every_form_of_import():
    source = "import os\nimport grpc.aio\nfrom httpx import AsyncClient\ndef f():\n    import psutil\n"
    assert forbidden_imports(source) == {"grpc", "httpx", "psutil"}


def test_no_domain_module_imports_an_io_library():
    modules = sorted(DOMAIN.rglob("*.py"))
    assert len(modules) > 5
    offenders = {str(m.relative_to(DOMAIN)): forbidden_imports(m.read_text()) for m in modules}
    assert {name: libs for name, libs in offenders.items() if libs} == {}
