//! Bounds-checked decoding of GGUF primitives and values from a [`Source`].
//!
//! Every length or count read from the data is checked against the bytes
//! that remain before anything is read or allocated; arrays that are not
//! wanted are skipped by moving the position (string arrays by walking the
//! length prefixes, nothing else).

use super::error::{ErrorKind, GgufError, Item, Result};
use super::source::Source;
use super::value::{Array, ArrayValues, Scalar, ValueType};
use super::walk::{self, Prefix, Stop};

/// Longest string accepted (llama.cpp's `GGUF_MAX_STRING_LENGTH`).
pub const MAX_STRING_LEN: u64 = 1 << 30;
/// Most elements accepted in one array (llama.cpp's `GGUF_MAX_ARRAY_ELEMENTS`).
pub const MAX_ARRAY_LEN: u64 = 1 << 30;
/// Deepest nesting of arrays of arrays accepted (an array of scalars is depth 1).
pub const MAX_ARRAY_DEPTH: u32 = 8;

pub struct Reader<S> {
    src: S,
    len: u64,
    pub pos: u64,
    /// Multi-byte numbers are big-endian (a GGUF written for a big-endian host).
    pub big_endian: bool,
    /// Lengths and counts are 64-bit (GGUF v2 and v3); 32-bit in v1.
    pub wide: bool,
}

fn io_error(offset: u64, e: std::io::Error) -> GgufError {
    GgufError::new(offset, ErrorKind::Io(e))
}

macro_rules! decode_vec {
    ($bytes:expr, $ty:ty, $be:expr) => {{
        const N: usize = std::mem::size_of::<$ty>();
        $bytes
            .chunks_exact(N)
            .map(|c| {
                let a: [u8; N] = c.try_into().unwrap_or([0; N]);
                if $be {
                    <$ty>::from_be_bytes(a)
                } else {
                    <$ty>::from_le_bytes(a)
                }
            })
            .collect::<Vec<$ty>>()
    }};
}

impl<S: Source> Reader<S> {
    pub fn new(src: S) -> Self {
        let len = src.size();
        Reader {
            src,
            len,
            pos: 0,
            big_endian: false,
            wide: true,
        }
    }

    pub fn size(&self) -> u64 {
        self.len
    }

    /// Bytes of the length prefix of strings and arrays.
    pub fn len_size(&self) -> u64 {
        if self.wide {
            8
        } else {
            4
        }
    }

    /// Fails unless `needed` bytes remain at `at`; the error names `err_at`
    /// (where the length was read) and the item.
    #[inline]
    pub fn check(&self, at: u64, needed: u64, item: Item, err_at: u64) -> Result<()> {
        let remaining = self.len.saturating_sub(at);
        if needed > remaining {
            return Err(GgufError::new(
                err_at,
                ErrorKind::Truncated {
                    item,
                    needed,
                    remaining,
                    min_total: at.saturating_add(needed),
                },
            ));
        }
        Ok(())
    }

    /// The next `n` bytes (checked), advancing past them.
    #[inline]
    pub fn take(&mut self, n: u64, item: Item) -> Result<&[u8]> {
        let at = self.pos;
        self.check(at, n, item, at)?;
        let n_usize =
            usize::try_from(n).map_err(|_| GgufError::new(at, ErrorKind::SizeOverflow))?;
        self.pos = at + n;
        let window = self.src.window(at, n_usize).map_err(|e| io_error(at, e))?;
        window.get(..n_usize).ok_or_else(|| {
            GgufError::new(
                at,
                ErrorKind::Truncated {
                    item,
                    needed: n,
                    remaining: 0,
                    min_total: at.saturating_add(n),
                },
            )
        })
    }

    /// Moves past `n` bytes without reading them (checked).
    #[inline]
    pub fn skip(&mut self, n: u64, item: Item, err_at: u64) -> Result<()> {
        self.check(self.pos, n, item, err_at)?;
        self.pos += n;
        Ok(())
    }

    #[inline]
    fn bytes<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let at = self.pos;
        let s = self.take(N as u64, Item::Field(what))?;
        s.try_into().map_err(|_| {
            GgufError::new(
                at,
                ErrorKind::Truncated {
                    item: Item::Field(what),
                    needed: N as u64,
                    remaining: 0,
                    min_total: at.saturating_add(N as u64),
                },
            )
        })
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32> {
        let b = self.bytes::<4>(what)?;
        Ok(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64> {
        let b = self.bytes::<8>(what)?;
        Ok(if self.big_endian {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        })
    }

    pub fn i64(&mut self, what: &'static str) -> Result<i64> {
        let b = self.bytes::<8>(what)?;
        Ok(if self.big_endian {
            i64::from_be_bytes(b)
        } else {
            i64::from_le_bytes(b)
        })
    }

    /// A string length or array count: 64-bit in v2+, 32-bit in v1.
    pub fn length(&mut self, what: &'static str) -> Result<u64> {
        if self.wide {
            self.u64(what)
        } else {
            self.u32(what).map(u64::from)
        }
    }

    /// The raw bytes of a string (length checked against the cap and the data).
    pub fn string_bytes(&mut self) -> Result<&[u8]> {
        let at = self.pos;
        let len = self.length("string length")?;
        if len > MAX_STRING_LEN {
            return Err(GgufError::new(
                at,
                ErrorKind::StringTooLong {
                    len,
                    max: MAX_STRING_LEN,
                },
            ));
        }
        self.check(self.pos, len, Item::String, at)?;
        self.take(len, Item::String)
    }

    pub fn string(&mut self) -> Result<String> {
        let at = self.pos;
        let bytes = self.string_bytes()?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GgufError::new(at, ErrorKind::InvalidUtf8)),
        }
    }

    /// A value type id.
    pub fn value_type(&mut self, what: &'static str) -> Result<ValueType> {
        let at = self.pos;
        let id = self.u32(what)?;
        ValueType::from_id(id).ok_or_else(|| GgufError::new(at, ErrorKind::InvalidValueType(id)))
    }

    pub fn scalar(&mut self, t: ValueType) -> Result<Scalar> {
        let be = self.big_endian;
        Ok(match t {
            ValueType::U8 => Scalar::U8(u8::from_le_bytes(self.bytes::<1>("uint8 value")?)),
            ValueType::I8 => Scalar::I8(i8::from_le_bytes(self.bytes::<1>("int8 value")?)),
            ValueType::Bool => Scalar::Bool(self.bytes::<1>("bool value")? != [0]),
            ValueType::U16 => {
                let b = self.bytes::<2>("uint16 value")?;
                Scalar::U16(if be {
                    u16::from_be_bytes(b)
                } else {
                    u16::from_le_bytes(b)
                })
            }
            ValueType::I16 => {
                let b = self.bytes::<2>("int16 value")?;
                Scalar::I16(if be {
                    i16::from_be_bytes(b)
                } else {
                    i16::from_le_bytes(b)
                })
            }
            ValueType::U32 => Scalar::U32(self.u32("uint32 value")?),
            ValueType::I32 => {
                let b = self.bytes::<4>("int32 value")?;
                Scalar::I32(if be {
                    i32::from_be_bytes(b)
                } else {
                    i32::from_le_bytes(b)
                })
            }
            ValueType::F32 => {
                let b = self.bytes::<4>("float32 value")?;
                Scalar::F32(if be {
                    f32::from_be_bytes(b)
                } else {
                    f32::from_le_bytes(b)
                })
            }
            ValueType::U64 => Scalar::U64(self.u64("uint64 value")?),
            ValueType::I64 => Scalar::I64(self.i64("int64 value")?),
            ValueType::F64 => {
                let b = self.bytes::<8>("float64 value")?;
                Scalar::F64(if be {
                    f64::from_be_bytes(b)
                } else {
                    f64::from_le_bytes(b)
                })
            }
            ValueType::String => Scalar::String(self.string()?),
            // The caller handles arrays; an array is never a scalar.
            ValueType::Array => {
                return Err(GgufError::new(self.pos, ErrorKind::InvalidValueType(9)))
            }
        })
    }

    /// Smallest encoding of one element of type `t`.
    fn min_elem_size(&self, t: ValueType) -> u64 {
        match t.fixed_size() {
            Some(n) => n,
            None if t == ValueType::String => self.len_size(),
            None => 4 + self.len_size(), // an inner array: its type and count
        }
    }

    /// An array's element type and count, checked against the cap and against
    /// the bytes that remain (each element takes at least its minimum size).
    pub fn array_header(&mut self, depth: u32) -> Result<(ValueType, u64)> {
        let at = self.pos;
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::new(
                at,
                ErrorKind::NestingTooDeep {
                    max: MAX_ARRAY_DEPTH,
                },
            ));
        }
        let elem = self.value_type("array element type")?;
        let count = self.length("array count")?;
        if count > MAX_ARRAY_LEN {
            return Err(GgufError::new(
                at,
                ErrorKind::ArrayTooLong {
                    count,
                    max: MAX_ARRAY_LEN,
                },
            ));
        }
        // count <= 2^30 and sizes <= 16: no overflow.
        let min = count * self.min_elem_size(elem);
        self.check(self.pos, min, Item::Array { count, elem }, at)?;
        Ok((elem, count))
    }

    /// Moves past the elements of an array (header already read).
    pub fn skip_array(&mut self, elem: ValueType, count: u64, depth: u32) -> Result<()> {
        let at = self.pos;
        match elem {
            ValueType::String => self.skip_strings(count),
            ValueType::Array => {
                let min = 4 + self.len_size();
                for i in 0..count {
                    let following = (count - i - 1) * min;
                    let (t, n) = self
                        .array_header(depth + 1)
                        .map_err(|e| e.followed_by(following))?;
                    self.skip_array(t, n, depth + 1)
                        .map_err(|e| e.followed_by(following))?;
                }
                Ok(())
            }
            fixed => {
                let size = fixed.fixed_size().unwrap_or(1);
                self.skip(count * size, Item::Array { count, elem }, at)
            }
        }
    }

    /// Moves past `count` strings: reads each length prefix, seeks past the
    /// bytes (walking the window in memory, see [`walk`]).
    fn skip_strings(&mut self, count: u64) -> Result<()> {
        let lw = self.len_size();
        let prefix = Prefix {
            wide: self.wide,
            big_endian: self.big_endian,
        };
        let mut left = count;
        while left > 0 {
            let at = self.pos;
            self.check(at, lw, Item::Field("string length"), at)
                .map_err(|e| e.followed_by((left - 1) * lw))?;
            let window = self
                .src
                .window(at, lw as usize)
                .map_err(|e| io_error(at, e))?;
            let w = walk::walk(window, left, prefix);
            left -= w.walked;
            let str_at = at + w.off as u64;
            self.pos = str_at;
            match w.stop {
                Stop::Done | Stop::WindowEnd => {}
                Stop::TooLong { len } => {
                    return Err(GgufError::new(
                        str_at,
                        ErrorKind::StringTooLong {
                            len,
                            max: MAX_STRING_LEN,
                        },
                    ));
                }
                Stop::Spill { len } => {
                    // The string runs past the window: seek over it.
                    left -= 1;
                    let body_at = str_at + lw;
                    self.check(body_at, len, Item::String, str_at)
                        .map_err(|e| e.followed_by(left * lw))?;
                    self.pos = body_at + len;
                }
            }
        }
        Ok(())
    }

    /// Reads the elements of an array (header already read; its count was
    /// checked against the bytes that remain, which bounds every allocation).
    pub fn read_array(&mut self, elem: ValueType, count: u64, depth: u32) -> Result<ArrayValues> {
        let be = self.big_endian;
        let item = Item::Array { count, elem };
        // Capacity is bounded by the data: count * min element size <= remaining.
        let cap = usize::try_from(count).unwrap_or(0);
        Ok(match elem {
            ValueType::U8 => ArrayValues::U8(self.take(count, item)?.to_vec()),
            ValueType::I8 => {
                ArrayValues::I8(self.take(count, item)?.iter().map(|&b| b as i8).collect())
            }
            ValueType::Bool => {
                ArrayValues::Bool(self.take(count, item)?.iter().map(|&b| b != 0).collect())
            }
            ValueType::U16 => ArrayValues::U16(decode_vec!(self.take(count * 2, item)?, u16, be)),
            ValueType::I16 => ArrayValues::I16(decode_vec!(self.take(count * 2, item)?, i16, be)),
            ValueType::U32 => ArrayValues::U32(decode_vec!(self.take(count * 4, item)?, u32, be)),
            ValueType::I32 => ArrayValues::I32(decode_vec!(self.take(count * 4, item)?, i32, be)),
            ValueType::F32 => ArrayValues::F32(decode_vec!(self.take(count * 4, item)?, f32, be)),
            ValueType::U64 => ArrayValues::U64(decode_vec!(self.take(count * 8, item)?, u64, be)),
            ValueType::I64 => ArrayValues::I64(decode_vec!(self.take(count * 8, item)?, i64, be)),
            ValueType::F64 => ArrayValues::F64(decode_vec!(self.take(count * 8, item)?, f64, be)),
            ValueType::String => {
                let lw = self.len_size();
                let mut out = Vec::with_capacity(cap);
                for i in 0..count {
                    out.push(
                        self.string()
                            .map_err(|e| e.followed_by((count - i - 1) * lw))?,
                    );
                }
                ArrayValues::String(out)
            }
            ValueType::Array => {
                let min = 4 + self.len_size();
                let mut out = Vec::with_capacity(cap);
                for i in 0..count {
                    let following = (count - i - 1) * min;
                    let (t, n) = self
                        .array_header(depth + 1)
                        .map_err(|e| e.followed_by(following))?;
                    let values = self
                        .read_array(t, n, depth + 1)
                        .map_err(|e| e.followed_by(following))?;
                    out.push(Array {
                        elem: t,
                        len: n,
                        values: Some(values),
                    });
                }
                ArrayValues::Array(out)
            }
        })
    }
}
