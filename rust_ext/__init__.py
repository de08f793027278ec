"""Native (Rust) core of llamagate, built by maturin as ``rust_ext._native``."""

from rust_ext._native import __version__

__all__ = ["__version__"]
