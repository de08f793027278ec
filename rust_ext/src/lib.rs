//! Native core of llamagate. `gguf` is pure Rust; `python` is the thin
//! PyO3 binding that `rust_ext._native` is built from.

pub mod gguf;

#[cfg(feature = "python")]
mod python;
