//! The GGUF header: magic, version, counts, key-value pairs, tensor infos.

use std::collections::{HashMap, HashSet};

use super::error::{ErrorKind, GgufError, Item, Result};
use super::ggml;
use super::model::{self, ModelParams};
use super::reader::Reader;
use super::source::Source;
use super::value::{Array, Int, Scalar, Value, ValueType};

const MAGIC: &[u8; 4] = b"GGUF";
/// Most key-value pairs accepted in one header.
pub const MAX_KV_COUNT: u64 = 1 << 20;
/// Most tensors accepted in one file.
pub const MAX_TENSOR_COUNT: u64 = 1 << 24;
/// llama.cpp's `GGUF_DEFAULT_ALIGNMENT`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// llama.cpp's `GGML_MAX_NAME`: a tensor name has fewer bytes than this.
const GGML_MAX_NAME: u64 = 64;
const GGML_MAX_DIMS: u32 = 4;

/// Which arrays to read the elements of.
#[derive(Debug, Clone, Default)]
pub enum ArraySelection {
    #[default]
    None,
    All,
    Keys(HashSet<String>),
}

impl ArraySelection {
    pub fn wants(&self, key: &str) -> bool {
        match self {
            ArraySelection::None => false,
            ArraySelection::All => true,
            ArraySelection::Keys(keys) => keys.contains(key),
        }
    }
}

/// What to read besides the metadata.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Return the tensor infos (they are always walked and checked).
    pub tensors: bool,
    /// Return the elements of these arrays.
    pub array_values: ArraySelection,
}

/// One key-value pair, with the offset of its key.
#[derive(Debug, Clone, PartialEq)]
pub struct Kv {
    pub key: String,
    pub offset: u64,
    pub value: Value,
}

/// The key-value pairs in file order, with lookup by key.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    pub entries: Vec<Kv>,
    index: HashMap<String, usize>,
}

impl Metadata {
    pub fn get(&self, key: &str) -> Option<&Kv> {
        self.index.get(key).and_then(|&i| self.entries.get(i))
    }

    fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    fn push(&mut self, kv: Kv) {
        self.index.insert(kv.key.clone(), self.entries.len());
        self.entries.push(kv);
    }
}

/// One tensor info: dimensions in GGUF order (`ne[0]` first), ggml type id,
/// data offset relative to the start of the data section.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<u64>,
    pub ggml_type: u32,
    pub offset: u64,
    pub n_bytes: u64,
}

/// The `split.*` keys of a shard of a split model.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub count: Option<Int>,
    pub no: Option<Int>,
    pub tensors_count: Option<Int>,
}

#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub big_endian: bool,
    pub tensor_count: u64,
    pub kv_count: u64,
    pub alignment: u64,
    pub architecture: Option<String>,
    pub metadata: Metadata,
    pub chat_template: Option<String>,
    pub split: Option<Split>,
    /// Offset of the data section: the end of the tensor infos, aligned.
    pub header_size: u64,
    /// Sum of the tensor sizes, each padded to the alignment.
    pub tensor_data_size: u64,
    /// End of the last tensor's bytes, relative to the data section.
    pub tensor_data_end: u64,
    pub tensors: Option<Vec<TensorInfo>>,
    pub model: ModelParams,
}

fn err(offset: u64, kind: ErrorKind) -> GgufError {
    GgufError::new(offset, kind)
}

fn align_up(x: u64, alignment: u64, at: u64) -> Result<u64> {
    // alignment is a power of two >= 1
    x.checked_add(alignment - 1)
        .map(|v| v & !(alignment - 1))
        .ok_or_else(|| err(at, ErrorKind::SizeOverflow))
}

pub fn scan<S: Source>(src: S, opts: &Options) -> Result<Header> {
    let mut r = Reader::new(src);

    // Magic: a prefix that differs is not GGUF, however short.
    let have = r.size().min(4);
    let head = r.take(have, Item::Field("magic"))?.to_vec();
    if MAGIC.get(..head.len()) != Some(&head[..]) {
        return Err(err(0, ErrorKind::NotGguf));
    }
    // version + two counts of at least 4 bytes each follow the magic
    r.check(0, 4, Item::Field("magic"), 0)
        .map_err(|e| e.followed_by(12))?;

    // Version; a big-endian file reads as a number with zero low 16 bits.
    let raw = r.u32("version").map_err(|e| e.followed_by(8))?;
    let version = if raw & 0xFFFF == 0 && raw != 0 {
        r.big_endian = true;
        raw.swap_bytes()
    } else {
        raw
    };
    if !(1..=3).contains(&version) {
        return Err(err(4, ErrorKind::UnsupportedVersion(version)));
    }
    r.wide = version >= 2;
    let lw = r.len_size();

    let tensor_count = r.length("tensor count").map_err(|e| e.followed_by(lw))?;
    let kv_count = r.length("key-value count")?;
    if tensor_count > MAX_TENSOR_COUNT {
        return Err(err(
            8,
            ErrorKind::TooManyEntries {
                what: "tensors",
                count: tensor_count,
                max: MAX_TENSOR_COUNT,
            },
        ));
    }
    if kv_count > MAX_KV_COUNT {
        return Err(err(
            8 + lw,
            ErrorKind::TooManyEntries {
                what: "key-value pairs",
                count: kv_count,
                max: MAX_KV_COUNT,
            },
        ));
    }
    // Smallest key-value pair: key length + 1-byte key + type + 1-byte value.
    // Smallest tensor info: name length + n_dims + type + offset.
    let (min_kv, min_ti) = if r.wide { (14, 24) } else { (10, 20) };
    r.check(
        r.pos,
        kv_count * min_kv + tensor_count * min_ti,
        Item::Entries {
            kv_count,
            tensor_count,
        },
        8,
    )?;

    let mut md = Metadata::default();
    for i in 0..kv_count {
        let following = (kv_count - i - 1) * min_kv + tensor_count * min_ti;
        read_kv(&mut r, &mut md, opts).map_err(|e| e.followed_by(following))?;
    }

    let alignment = match md.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(kv) => match kv.value {
            Value::Scalar(Scalar::U32(a)) if a.is_power_of_two() => u64::from(a),
            Value::Scalar(Scalar::U32(a)) => {
                return Err(err(kv.offset, ErrorKind::BadAlignment(a)))
            }
            ref other => {
                return Err(err(
                    kv.offset,
                    ErrorKind::WrongType {
                        key: kv.key.clone(),
                        found: other.type_name(),
                        expected: "uint32",
                    },
                ))
            }
        },
    };

    let mut tensors = TensorWalk {
        names: String::new(),
        spans: Vec::new(),
        infos: opts.tensors.then(Vec::new),
        expected_offset: 0,
        data_end: 0,
        alignment,
    };
    for i in 0..tensor_count {
        let following = (tensor_count - i - 1) * min_ti;
        tensors.read(&mut r).map_err(|e| e.followed_by(following))?;
    }
    tensors.check_names_unique()?;
    let header_size = align_up(r.pos, alignment, r.pos)?;

    let architecture = model::string(&md, "general.architecture")?.map(str::to_owned);
    let chat_template = model::string(&md, "tokenizer.chat_template")?.map(str::to_owned);
    let split = {
        let count = model::int(&md, "split.count")?;
        let no = model::int(&md, "split.no")?;
        let tensors_count = model::int(&md, "split.tensors.count")?;
        (count.is_some() || no.is_some() || tensors_count.is_some()).then_some(Split {
            count,
            no,
            tensors_count,
        })
    };
    let model = ModelParams::extract(&md, architecture.as_deref())?;

    // Arrays read only for planning keep their values to themselves.
    for kv in &mut md.entries {
        if let Value::Array(a) = &mut kv.value {
            if a.values.is_some() && !opts.array_values.wants(&kv.key) {
                a.values = None;
            }
        }
    }

    Ok(Header {
        version,
        big_endian: r.big_endian,
        tensor_count,
        kv_count,
        alignment,
        architecture,
        metadata: md,
        chat_template,
        split,
        header_size,
        tensor_data_size: tensors.expected_offset,
        tensor_data_end: tensors.data_end,
        tensors: tensors.infos,
        model,
    })
}

fn read_kv<S: Source>(r: &mut Reader<S>, md: &mut Metadata, opts: &Options) -> Result<()> {
    let at = r.pos;
    // a type id (4) and a value (>= 1) follow the key
    let key = r.string().map_err(|e| e.followed_by(5))?;
    if key.is_empty() {
        return Err(err(at, ErrorKind::EmptyKey));
    }
    if md.contains(&key) {
        return Err(err(at, ErrorKind::DuplicateKey(key)));
    }
    let t = r.value_type("value type").map_err(|e| e.followed_by(1))?;
    let value = if t == ValueType::Array {
        let (elem, len) = r.array_header(1)?;
        let per_layer = model::needs_values(&key, elem);
        if per_layer && len > model::MAX_PER_LAYER_LEN {
            let max = model::MAX_PER_LAYER_LEN;
            return Err(err(at, ErrorKind::PerLayerTooLong { key, len, max }));
        }
        let values = if opts.array_values.wants(&key) || per_layer {
            Some(r.read_array(elem, len, 1)?)
        } else {
            r.skip_array(elem, len, 1)?;
            None
        };
        Value::Array(Array { elem, len, values })
    } else {
        Value::Scalar(r.scalar(t)?)
    };
    md.push(Kv {
        key,
        offset: at,
        value,
    });
    Ok(())
}

/// State of the walk over the tensor infos, checked as llama.cpp checks them.
struct TensorWalk {
    /// All names, concatenated.
    names: String,
    spans: Vec<NameSpan>,
    infos: Option<Vec<TensorInfo>>,
    /// Where the next tensor's data must start: the padded sizes so far.
    expected_offset: u64,
    data_end: u64,
    alignment: u64,
}

impl TensorWalk {
    fn read<S: Source>(&mut self, r: &mut Reader<S>) -> Result<()> {
        let at = r.pos;
        let dim_size: u64 = if r.wide { 8 } else { 4 };
        // n_dims (4), type (4) and offset (8) follow the name
        let name_bytes = r.string_bytes().map_err(|e| e.followed_by(16))?;
        let name_len = name_bytes.len() as u64;
        if name_len >= GGML_MAX_NAME {
            return Err(err(
                at,
                ErrorKind::TensorNameTooLong {
                    len: name_len,
                    max: GGML_MAX_NAME - 1,
                },
            ));
        }
        let name = std::str::from_utf8(name_bytes).map_err(|_| err(at, ErrorKind::InvalidUtf8))?;
        let start = self.names.len();
        self.names.push_str(name);
        self.spans.push(NameSpan {
            hash: fnv1a(name.as_bytes()),
            start,
            end: self.names.len(),
            offset: at,
        });
        let name = self.infos.is_some().then(|| name.to_owned());

        let dims_at = r.pos;
        let n_dims = r
            .u32("tensor dimension count")
            .map_err(|e| e.followed_by(12))?;
        if n_dims > GGML_MAX_DIMS {
            return Err(err(dims_at, ErrorKind::TooManyDims(n_dims)));
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        let mut n_elements: i64 = 1;
        for d in 0..n_dims {
            let dim_at = r.pos;
            let following = u64::from(n_dims - d - 1) * dim_size + 12;
            let ne = if r.wide {
                r.i64("tensor dimension")
            } else {
                r.u32("tensor dimension").map(i64::from)
            }
            .map_err(|e| e.followed_by(following))?;
            if ne < 0 {
                return Err(err(dim_at, ErrorKind::NegativeDim { dim: d, value: ne }));
            }
            n_elements = n_elements
                .checked_mul(ne)
                .ok_or_else(|| err(dims_at, ErrorKind::ShapeOverflow))?;
            shape.push(ne as u64);
        }

        let type_at = r.pos;
        let ggml_type = r.u32("tensor type").map_err(|e| e.followed_by(8))?;
        let (block, type_size) = ggml::type_size(ggml_type)
            .ok_or_else(|| err(type_at, ErrorKind::UnknownTensorType(ggml_type)))?;
        let ne0 = shape.first().map_or(1, |&n| n as i64);
        if ne0 % block as i64 != 0 {
            return Err(err(type_at, ErrorKind::RowNotBlockAligned { ne0, block }));
        }
        let n_bytes = (n_elements as u64 / block)
            .checked_mul(type_size)
            .ok_or_else(|| err(type_at, ErrorKind::SizeOverflow))?;

        let offset_at = r.pos;
        let offset = r.u64("tensor data offset")?;
        if offset != self.expected_offset {
            return Err(err(
                offset_at,
                ErrorKind::BadTensorOffset {
                    offset,
                    expected: self.expected_offset,
                },
            ));
        }
        let padded = align_up(n_bytes, self.alignment, offset_at)?;
        self.expected_offset = offset
            .checked_add(padded)
            .ok_or_else(|| err(offset_at, ErrorKind::SizeOverflow))?;
        self.data_end = offset + n_bytes; // <= expected_offset

        if let (Some(infos), Some(name)) = (&mut self.infos, name) {
            infos.push(TensorInfo {
                name,
                shape,
                ggml_type,
                offset,
                n_bytes,
            });
        }
        Ok(())
    }

    /// Two tensors with the same name: found by sorting by (hash, name), so
    /// that names are compared only when their hashes are equal, and a file
    /// full of colliding names costs a sort, never a quadratic search.
    fn check_names_unique(&self) -> Result<()> {
        let name = |s: &NameSpan| self.names.get(s.start..s.end).unwrap_or_default();
        let mut order: Vec<&NameSpan> = self.spans.iter().collect();
        order.sort_unstable_by(|a, b| {
            a.hash
                .cmp(&b.hash)
                .then_with(|| name(a).cmp(name(b)))
                .then(a.offset.cmp(&b.offset))
        });
        let same = |a: &NameSpan, b: &NameSpan| a.hash == b.hash && name(a) == name(b);
        match order
            .windows(2)
            .find(|pair| matches!(pair, [a, b] if same(a, b)))
        {
            Some(&[_, second]) => Err(err(
                second.offset,
                ErrorKind::DuplicateTensor(name(second).to_owned()),
            )),
            _ => Ok(()),
        }
    }
}

/// Where one tensor name is in `TensorWalk::names`, and where its info is.
struct NameSpan {
    hash: u64,
    start: usize,
    end: usize,
    offset: u64,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
