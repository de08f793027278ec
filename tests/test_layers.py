"""The layers' rules, read from the source (issue 7).

domain/ talks to the world only through ports: no I/O library, no asyncio,
no llama-server wire format (its JSON keys and flags live in the adapters).
Imports point down only: server → application → domain ← adapters. Every
import names the one installed package, llamagate.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("domain", "application", "adapters", "server", "rust_ext")
FORBIDDEN_IN_DOMAIN = {"grpc", "httpx", "subprocess", "psutil", "huggingface_hub", "pynvml", "requests", "socket",
                       "asyncio", "os", "threading"}
# Words chat templates use, which SPEC §3's capability rules read from the
# Jinja source or render with: the template's variables, not the API's JSON.
TEMPLATE_WORDS = {"reasoning_content", "tool_calls", "tool_call_id"}
# Words of llamagate's own API that llama-server's JSON happens to share:
# field names of llamagate.proto, ErrorInfo metadata keys it documents.
API_WORDS = {"json_schema", "prompt_tokens", "response_format"}
# what each layer may import from the project (besides itself)
MAY_IMPORT = {
    "domain": set(),
    "application": {"domain"},
    "adapters": {"domain", "rust_ext"},
    "server": {"domain", "application", "adapters", "v1"},
}


def modules(layer: str) -> list[Path]:
    found = sorted((ROOT / layer).rglob("*.py"))
    assert found, f"no modules in {layer}/"
    return found


def imported(source: str, *, typing_only: bool = True) -> Iterator[str]:
    """Every absolute module name a source imports, at any depth
    (``typing_only=False``: leaving out those under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(source)
    if not typing_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
                node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def strings(source: str) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def wire_words(source: str) -> set[str]:
    """A llama adapter's flags and JSON keys: dict keys, subscripts and .get() names."""
    words: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):
            words |= {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            words.add(str(node.slice.value))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get" and node.args:
            if isinstance(node.args[0], ast.Constant):
                words.add(str(node.args[0].value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("-"):
            words.add(node.value)
    return {w for w in words if w.startswith("-") or "_" in w}  # flags and snake_case keys


def test_the_checkers_catch_what_they_look_for():
    source = "import os\nimport grpc.aio\nfrom httpx import AsyncClient\ndef f():\n    import psutil\n"
    assert set(imported(source)) == {"os", "grpc.aio", "httpx", "psutil"}
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import grpc\nimport os\n"
    assert set(imported(typed)) == {"typing", "grpc", "os"}
    assert set(imported(typed, typing_only=False)) == {"typing", "os"}
    assert wire_words('x = {"max_tokens": 1}\ny = p["n_ctx"]\nz = d.get("chat_template_caps")\nf = ["--jinja"]') == {
        "max_tokens", "n_ctx", "chat_template_caps", "--jinja"}


def test_no_domain_module_imports_an_io_library_or_asyncio():
    offenders = {str(m.relative_to(ROOT)): {n.split(".")[0] for n in imported(m.read_text())} & FORBIDDEN_IN_DOMAIN
                 for m in modules("domain")}
    assert {name: libs for name, libs in offenders.items() if libs} == {}


def test_no_llama_server_json_key_or_flag_appears_under_domain():
    wire = set().union(*(wire_words(m.read_text()) for m in (ROOT / "adapters").glob("llama_*.py")))
    assert {"--flash-attn", "max_tokens", "chat_template_caps"} <= wire  # the adapters do own them
    found = {str(m.relative_to(ROOT)): sorted(strings(m.read_text()) & wire - TEMPLATE_WORDS - API_WORDS)
             for m in modules("domain")}
    flags = {str(m.relative_to(ROOT)): sorted(s for s in strings(m.read_text()) if s.startswith("--"))
             for m in modules("domain")}
    assert {k: v for k, v in found.items() if v} == {} and {k: v for k, v in flags.items() if v} == {}


def test_the_api_words_let_through_are_the_apis_own():
    proto = (ROOT / "proto/llamagate/v1/llamagate.proto").read_text()
    assert all(re.search(rf"\b{word}\b", proto) for word in API_WORDS)


def test_imports_point_down_the_layers_only():
    wrong = {}
    for layer, allowed in MAY_IMPORT.items():
        for module in modules(layer):
            used = {name.split(".")[1] for name in imported(module.read_text()) if name.startswith("llamagate.")}
            if used - allowed - {layer}:
                wrong[str(module.relative_to(ROOT))] = sorted(used - allowed - {layer})
    assert wrong == {}


def test_every_import_of_the_project_names_the_installed_package():
    """Installed, only ``llamagate`` exists: a bare ``import domain`` would break (defect 19)."""
    sources = [m for layer in LAYERS for m in modules(layer)] + sorted((ROOT / "tests").glob("*.py"))
    sources += sorted((ROOT / "bench").glob("*.py"))
    bare = {str(m.relative_to(ROOT)): sorted({n for n in imported(m.read_text()) if n.split(".")[0] in LAYERS})
            for m in sources}
    assert {k: v for k, v in bare.items() if v} == {}


def test_domain_modules_import_each_other_without_a_cycle():
    """model.py used to close a cycle (model -> load_plan -> kv_cache -> model).
    Imports for type checking only never run, so they close no cycle."""
    graph = {m.stem: {name.split(".")[2] for name in imported(m.read_text(), typing_only=False)
                      if name.startswith("llamagate.domain.") and name.count(".") >= 2}
             for m in modules("domain")}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module not in done:
            for needed in graph.get(module, ()):
                visit(needed, (*path, module))
            done.add(module)

    for module in graph:
        visit(module, ())
    assert len(done) >= 15
