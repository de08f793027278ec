//! GGUF header scanner: pure Rust, no Python.
//!
//! [`scan_file`] and [`scan_bytes`] read a GGUF header (versions 1 to 3,
//! either byte order) and return a [`Header`]: the counts, every metadata
//! value (array elements on request), the tensor infos (on request; always
//! walked and checked) and the hyperparameters planning needs. Nothing read
//! from the data is trusted: every length is checked against the bytes that
//! remain before anything is allocated, and malformed data is an error with a
//! byte offset, never a panic.

mod error;
mod ggml;
mod header;
mod model;
mod reader;
mod source;
mod value;
mod walk;

use std::fs::File;
use std::path::Path;

pub use error::{ErrorKind, GgufError, Item, Result};
pub use header::{ArraySelection, Header, Kv, Metadata, Options, Split, TensorInfo};
pub use model::{IntOrList, ModelParams, SwaPattern};
pub use reader::{MAX_ARRAY_DEPTH, MAX_ARRAY_LEN, MAX_STRING_LEN};
pub use source::{FileSource, SliceSource, Source};
pub use value::{Array, ArrayValues, Int, Scalar, Value, ValueType};

/// Scans a header held in memory. When `data` is a prefix of a longer
/// header the error [`GgufError::is_truncated`], and
/// [`GgufError::bytes_needed`] says how many more bytes to fetch at least.
pub fn scan_bytes(data: &[u8], opts: &Options) -> Result<Header> {
    header::scan(SliceSource::new(data), opts)
}

/// Scans the header of a file, seeking past what it does not need. A file
/// cannot grow, so a truncated header is an error, and so is tensor data
/// that would end past the end of the file.
pub fn scan_file(path: &Path, opts: &Options) -> Result<Header> {
    let io = |e| GgufError::new(0, ErrorKind::Io(e));
    let src = FileSource::new(File::open(path).map_err(io)?).map_err(io)?;
    let file_len = src.len();
    let h = header::scan(src, opts)?;
    if h.tensor_data_end > 0 {
        let end = h.header_size.saturating_add(h.tensor_data_end);
        if end > file_len {
            return Err(GgufError::new(file_len, ErrorKind::DataTruncated { end, file_len }));
        }
    }
    Ok(h)
}
