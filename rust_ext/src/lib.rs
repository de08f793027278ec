//! Native core of llamagate. `gguf` (the GGUF header scanner) and
//! `toolcall` (the streaming tool-call parser) are pure Rust; `python` and
//! `python_toolcall` are the thin PyO3 bindings that `rust_ext._native` is
//! built from.

pub mod gguf;
pub mod toolcall;

#[cfg(feature = "python")]
mod python;
#[cfg(feature = "python")]
mod python_toolcall;
