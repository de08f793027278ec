//! The scanner's one error type: a reason ([`ErrorKind`]) at a byte offset.

use std::fmt;

use super::value::ValueType;

/// What a length or count read from the data announced, for [`ErrorKind::Truncated`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// A fixed-size field (the magic, a count, a type id, a tensor dimension...).
    Field(&'static str),
    /// The bytes of a string, after its length prefix.
    String,
    /// The elements of an array, after its element type and count.
    Array { count: u64, elem: ValueType },
    /// The key-value pairs and tensor infos the header announces.
    Entries { kv_count: u64, tensor_count: u64 },
}

/// Why the data is not a GGUF header the scanner accepts.
#[derive(Debug)]
pub enum ErrorKind {
    /// The data does not start with the magic bytes `GGUF`. What it starts
    /// with is not kept: the message reaches callers who named a file they
    /// may not read (a service's model path), so it must carry none of its bytes.
    NotGguf,
    /// The version is not 1, 2 or 3.
    UnsupportedVersion(u32),
    /// An item extends past the end of the data: `needed` bytes at least, `remaining` left.
    Truncated {
        item: Item,
        needed: u64,
        remaining: u64,
        min_total: u64,
    },
    /// A string length is above the cap.
    StringTooLong { len: u64, max: u64 },
    /// An array count is above the cap.
    ArrayTooLong { count: u64, max: u64 },
    /// The header announces more key-value pairs or tensors than the cap.
    TooManyEntries {
        what: &'static str,
        count: u64,
        max: u64,
    },
    /// Arrays of arrays nest deeper than the limit.
    NestingTooDeep { max: u32 },
    /// A value type id is not one of the 13 GGUF value types.
    InvalidValueType(u32),
    /// A key, string value or tensor name is not valid UTF-8.
    InvalidUtf8,
    /// A key is the empty string.
    EmptyKey,
    /// A key appears twice.
    DuplicateKey(String),
    /// A key the scanner interprets holds a value of a type it cannot use.
    WrongType {
        key: String,
        found: String,
        expected: &'static str,
    },
    /// A per-layer hyperparameter array (its values are always read) has
    /// more elements than any model has layers.
    PerLayerTooLong { key: String, len: u64, max: u64 },
    /// `general.alignment` is zero or not a power of two.
    BadAlignment(u32),
    /// A tensor name is at least llama.cpp's `GGML_MAX_NAME` (64) bytes long.
    TensorNameTooLong { len: u64, max: u64 },
    /// Two tensors have the same name.
    DuplicateTensor(String),
    /// A tensor has more than 4 dimensions.
    TooManyDims(u32),
    /// A tensor dimension is negative.
    NegativeDim { dim: u32, value: i64 },
    /// The product of a tensor's dimensions does not fit in an int64.
    ShapeOverflow,
    /// A tensor's ggml type id is not a type llama.cpp can load.
    UnknownTensorType(u32),
    /// A tensor's rows are not a whole number of its type's blocks.
    RowNotBlockAligned { ne0: i64, block: u64 },
    /// A tensor's data offset is not where the tensors before it end.
    BadTensorOffset { offset: u64, expected: u64 },
    /// A tensor size, the data section size or the header size overflows 64 bits.
    SizeOverflow,
    /// The tensor data the header describes extends past the end of the file.
    DataTruncated { end: u64, file_len: u64 },
    /// Reading the file failed.
    Io(std::io::Error),
}

/// A scan failure: the reason and the byte offset in the data where it was found.
#[derive(Debug)]
pub struct GgufError {
    pub offset: u64,
    pub kind: ErrorKind,
}

pub type Result<T> = std::result::Result<T, GgufError>;

impl GgufError {
    pub fn new(offset: u64, kind: ErrorKind) -> Self {
        GgufError { offset, kind }
    }

    /// Whether the data simply ends too early (a prefix of a longer header).
    pub fn is_truncated(&self) -> bool {
        matches!(self.kind, ErrorKind::Truncated { .. })
    }

    /// For a truncated prefix of `have` bytes: a lower bound (> 0) of the
    /// bytes to append before the scan can get further; None otherwise.
    pub fn bytes_needed(&self, have: u64) -> Option<u64> {
        match self.kind {
            ErrorKind::Truncated { min_total, .. } => Some(min_total.saturating_sub(have).max(1)),
            _ => None,
        }
    }

    /// Raises the lower bound of a truncation by `extra` bytes that are known
    /// to follow the item that was cut (the minimum size of later items).
    pub(crate) fn followed_by(mut self, extra: u64) -> Self {
        if let ErrorKind::Truncated { min_total, .. } = &mut self.kind {
            *min_total = min_total.saturating_add(extra);
        }
        self
    }
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Field(name) => write!(f, "{name}"),
            Item::String => write!(f, "string"),
            Item::Array { count, elem } => write!(f, "array of {count} {} values", elem.name()),
            Item::Entries {
                kv_count,
                tensor_count,
            } => {
                write!(
                    f,
                    "{kv_count} key-value pairs and {tensor_count} tensor infos"
                )
            }
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::NotGguf => {
                write!(f, "not a GGUF file (it does not start with the magic \"GGUF\")")
            }
            ErrorKind::UnsupportedVersion(v) => {
                write!(f, "unsupported GGUF version {v} (supported: 1, 2, 3)")
            }
            ErrorKind::Truncated {
                item: Item::String,
                needed,
                remaining,
                ..
            } => {
                write!(
                    f,
                    "string length {needed} exceeds the {remaining} bytes that remain"
                )
            }
            ErrorKind::Truncated {
                item,
                needed,
                remaining,
                ..
            } => {
                write!(
                    f,
                    "{item} (at least {needed} bytes) exceeds the {remaining} bytes that remain"
                )
            }
            ErrorKind::StringTooLong { len, max } => {
                write!(f, "string length {len} exceeds the limit of {max}")
            }
            ErrorKind::ArrayTooLong { count, max } => {
                write!(f, "array count {count} exceeds the limit of {max}")
            }
            ErrorKind::TooManyEntries { what, count, max } => {
                write!(f, "{count} {what} exceed the limit of {max}")
            }
            ErrorKind::NestingTooDeep { max } => write!(f, "arrays nested more than {max} deep"),
            ErrorKind::InvalidValueType(t) => write!(f, "invalid value type {t} (valid: 0 to 12)"),
            ErrorKind::InvalidUtf8 => write!(f, "string is not valid UTF-8"),
            ErrorKind::EmptyKey => write!(f, "empty key"),
            ErrorKind::DuplicateKey(key) => write!(f, "duplicate key {key:?}"),
            ErrorKind::WrongType {
                key,
                found,
                expected,
            } => {
                write!(f, "key {key:?} has type {found}, expected {expected}")
            }
            ErrorKind::PerLayerTooLong { key, len, max } => {
                write!(
                    f,
                    "key {key:?} has {len} per-layer values, more than the limit of {max}"
                )
            }
            ErrorKind::BadAlignment(a) => write!(f, "alignment {a} is not a power of two"),
            ErrorKind::TensorNameTooLong { len, max } => {
                write!(f, "tensor name of {len} bytes is too long (at most {max})")
            }
            ErrorKind::DuplicateTensor(name) => write!(f, "duplicate tensor name {name:?}"),
            ErrorKind::TooManyDims(n) => write!(f, "tensor has {n} dimensions (at most 4)"),
            ErrorKind::NegativeDim { dim, value } => {
                write!(f, "tensor dimension {dim} is negative ({value})")
            }
            ErrorKind::ShapeOverflow => write!(f, "tensor element count overflows int64"),
            ErrorKind::UnknownTensorType(t) => write!(f, "unknown ggml tensor type {t}"),
            ErrorKind::RowNotBlockAligned { ne0, block } => {
                write!(
                    f,
                    "tensor row of {ne0} elements is not a multiple of the block size {block}"
                )
            }
            ErrorKind::BadTensorOffset { offset, expected } => {
                write!(
                    f,
                    "tensor data offset {offset} is not the expected {expected}"
                )
            }
            ErrorKind::SizeOverflow => write!(f, "tensor data size overflows 64 bits"),
            ErrorKind::DataTruncated { end, file_len } => {
                write!(
                    f,
                    "tensor data ends at byte {end} but the file has only {file_len} bytes"
                )
            }
            ErrorKind::Io(e) => write!(f, "read failed: {e}"),
        }
    }
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GGUF error at byte {}: {}", self.offset, self.kind)
    }
}

impl std::error::Error for GgufError {}
