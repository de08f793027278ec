"""Native (Rust) core of llamagate, built by maturin as ``llamagate.rust_ext._native``.

``scan_file`` / ``scan_bytes`` read a GGUF header (versions 1-3) without
reading what they do not need; see ``_native.pyi`` for the result's shape.
"""

from llamagate.rust_ext._native import GGUFError, __version__, scan_bytes, scan_file

__all__ = ["GGUFError", "__version__", "scan_bytes", "scan_file"]
