"""Native (Rust) core of llamagate, built by maturin as ``llamagate.rust_ext._native``.

``scan_file`` / ``scan_bytes`` read a GGUF header (versions 1-3) without
reading what they do not need; ``ToolCallParser`` parses tool calls out of a
model's streamed text (Hermes JSON and Qwen3-Coder XML markup). See
``_native.pyi`` for the shapes.
"""

from llamagate.rust_ext._native import (
    GGUFError,
    ToolCallParseError,
    ToolCallParser,
    __version__,
    scan_bytes,
    scan_file,
)

__all__ = ["GGUFError", "ToolCallParseError", "ToolCallParser", "__version__", "scan_bytes", "scan_file"]
