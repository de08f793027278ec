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
pub use model::{Field, IntOrList, ModelParams, SwaPattern, MAX_PER_LAYER_LEN};
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
    let file_len = src.size();
    let h = header::scan(src, opts)?;
    if h.tensor_data_end > 0 {
        let end = h.header_size.saturating_add(h.tensor_data_end);
        if end > file_len {
            return Err(GgufError::new(
                file_len,
                ErrorKind::DataTruncated { end, file_len },
            ));
        }
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small GGUF encoder: `wide` false writes v1 (32-bit lengths).
    struct Enc {
        out: Vec<u8>,
        wide: bool,
        be: bool,
    }

    impl Enc {
        fn new(version: u32, be: bool) -> Self {
            let mut e = Enc {
                out: b"GGUF".to_vec(),
                wide: version >= 2,
                be,
            };
            e.u32(version);
            e
        }
        fn u32(&mut self, x: u32) -> &mut Self {
            self.out.extend(if self.be {
                x.to_be_bytes()
            } else {
                x.to_le_bytes()
            });
            self
        }
        fn u64(&mut self, x: u64) -> &mut Self {
            self.out.extend(if self.be {
                x.to_be_bytes()
            } else {
                x.to_le_bytes()
            });
            self
        }
        fn len(&mut self, n: usize) -> &mut Self {
            if self.wide {
                self.u64(n as u64)
            } else {
                self.u32(n as u32)
            }
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.len(s.len());
            self.out.extend(s.as_bytes());
            self
        }
        fn key(&mut self, k: &str, t: u32) -> &mut Self {
            self.str(k).u32(t)
        }
    }

    /// Every value type, nested arrays, a vocabulary and three tensors.
    fn sample(version: u32, be: bool) -> Vec<u8> {
        let mut e = Enc::new(version, be);
        e.len(3).len(9);
        e.key("general.architecture", 8).str("llama");
        e.key("llama.context_length", 4).u32(4096);
        e.key("llama.attention.head_count_kv", 9)
            .u32(5)
            .len(3)
            .u32(8)
            .u32(8)
            .u32(4);
        e.key("x.f64", 12).u64(1.5f64.to_bits());
        e.key("x.i8", 1).out.push(0xff);
        e.key("x.bool", 7).out.push(1);
        e.key("x.nested", 9).u32(9).len(2);
        e.u32(8).len(2).str("ab").str("");
        e.u32(6).len(1).u32(2.5f32.to_bits());
        let tokens: Vec<String> = (0..3000).map(|i| format!("tok{i}")).collect();
        e.key("tokenizer.ggml.tokens", 9).u32(8).len(tokens.len());
        for t in &tokens {
            e.str(t);
        }
        e.key("tokenizer.chat_template", 8).str("{{ messages }}");
        let mut offset = 0;
        for (name, ne, t, size) in [
            ("a", [64u64, 2], 0u32, 512u64),
            ("b", [256, 1], 12, 144),
            ("c", [32, 3], 8, 102),
        ] {
            e.str(name).u32(2);
            for d in ne {
                if e.wide {
                    e.u64(d);
                } else {
                    e.u32(d as u32);
                }
            }
            e.u32(t).u64(offset);
            offset += size.div_ceil(32) * 32;
        }
        e.out
    }

    #[test]
    fn sample_headers_of_every_version_and_byte_order_scan() {
        for (version, be) in [(1, false), (2, false), (3, false), (3, true)] {
            let data = sample(version, be);
            let opts = Options {
                tensors: true,
                array_values: ArraySelection::All,
            };
            let h = scan_bytes(&data, &opts).unwrap_or_else(|e| panic!("v{version} be={be}: {e}"));
            assert_eq!(
                (h.version, h.big_endian, h.kv_count, h.tensor_count),
                (version, be, 9, 3)
            );
            assert_eq!(h.architecture.as_deref(), Some("llama"));
            assert_eq!(h.chat_template.as_deref(), Some("{{ messages }}"));
            assert_eq!(h.model.context_length, Some(Int::Unsigned(4096)));
            assert_eq!(h.model.vocab_size, Some(Int::Unsigned(3000)));
            assert_eq!(
                h.model.head_count_kv,
                Some(IntOrList::List(vec![
                    Int::Signed(8),
                    Int::Signed(8),
                    Int::Signed(4)
                ]))
            );
            let sizes: Vec<u64> = h.tensors.iter().flatten().map(|t| t.n_bytes).collect();
            assert_eq!(sizes, [512, 144, 102]);
            assert_eq!(h.tensor_data_size, 512 + 160 + 128);
            assert_eq!(h.header_size, (data.len() as u64).div_ceil(32) * 32);
        }
    }

    #[test]
    fn a_file_that_is_not_gguf_is_refused_without_echoing_its_bytes() {
        for data in [&b"root:x:0:0"[..], b"ro", b"GGUx"] {
            let e = scan_bytes(data, &Options::default()).unwrap_err();
            let message = e.to_string();
            assert!(matches!(e.kind, ErrorKind::NotGguf), "{message}");
            assert!(message.contains("does not start with the magic"), "{message}");
            for byte in &data[..2] {
                assert!(!message.contains(&format!("{byte:02x}")), "{message} shows {byte:02x}");
            }
            assert!(!message.contains("root"), "{message}");
        }
    }

    #[test]
    fn every_prefix_asks_for_a_lower_bound_of_the_missing_bytes() {
        for (version, be) in [(1, false), (3, false), (3, true)] {
            let data = sample(version, be);
            for n in 0..data.len() {
                let e = scan_bytes(&data[..n], &Options::default()).err();
                let needed = e.as_ref().and_then(|e| e.bytes_needed(n as u64));
                assert!(
                    matches!(needed, Some(k) if k > 0 && n as u64 + k <= data.len() as u64),
                    "v{version} prefix {n}: {e:?}"
                );
            }
        }
    }

    /// A v3 header: `general.architecture = llama`, then `n` pairs written by `kvs`.
    fn llama_with(n: usize, kvs: impl FnOnce(&mut Enc)) -> Vec<u8> {
        let mut e = Enc::new(3, false);
        e.len(0).len(n + 1);
        e.key("general.architecture", 8).str("llama");
        kvs(&mut e);
        e.out
    }

    fn model_of(data: &[u8]) -> Result<ModelParams> {
        scan_bytes(data, &Options::default()).map(|h| h.model)
    }

    fn signed(values: &[i64]) -> Option<IntOrList> {
        Some(IntOrList::List(
            values.iter().map(|&v| Int::Signed(v)).collect(),
        ))
    }

    #[test]
    fn every_scalar_hyperparameter_comes_typed_from_its_architecture_key() {
        type Getter = fn(&ModelParams) -> Option<Int>;
        let scalars: [(&str, Getter); 12] = [
            ("nextn_predict_layers", |m| m.nextn_predict_layers),
            ("attention.key_length_swa", |m| m.key_length_swa),
            ("attention.value_length_swa", |m| m.value_length_swa),
            ("attention.value_length_mla", |m| m.value_length_mla),
            ("attention.shared_kv_layers", |m| m.shared_kv_layers),
            ("attention.indexer.key_length", |m| m.indexer_key_length),
            ("wkv.head_size", |m| m.wkv_head_size),
            ("token_shift_count", |m| m.token_shift_count),
            ("shortconv.l_cache", |m| m.shortconv_l_cache),
            ("kda.head_dim", |m| m.kda_head_dim),
            ("attention.key_length_mla", |m| m.key_length_mla),
            ("full_attention_interval", |m| m.full_attention_interval),
        ];
        let absent = model_of(&llama_with(0, |_| {})).unwrap_or_else(|e| panic!("{e}"));
        for (i, (suffix, field)) in scalars.iter().enumerate() {
            let value = 100 + i as u32;
            let data = llama_with(2, |e| {
                e.key(&format!("llama.{suffix}"), 4).u32(value);
                // the same key of another architecture is not read
                e.key(&format!("other.{suffix}"), 4).u32(7);
            });
            let model = model_of(&data).unwrap_or_else(|e| panic!("{suffix}: {e}"));
            assert_eq!(field(&model), Some(Int::Unsigned(value.into())), "{suffix}");
            assert_eq!(field(&absent), None, "{suffix}");
        }
    }

    #[test]
    fn per_layer_hyperparameters_are_a_scalar_or_an_array_read_without_being_asked() {
        let data = llama_with(3, |e| {
            e.key("llama.feed_forward_length", 9).u32(5).len(3);
            e.u32(0).u32(4096).u32(0);
            // a bool array of flags reads as 0/1, as llama.cpp's get_arr reads it
            e.key("llama.attention.recurrent_layers", 9).u32(7).len(3);
            e.out.extend([1, 1, 0]);
            e.key("llama.attention.indexer.types", 4).u32(1);
        });
        let h = scan_bytes(&data, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.model.feed_forward_length, signed(&[0, 4096, 0]));
        let flags = [1, 1, 0].map(Int::Unsigned).to_vec();
        assert_eq!(h.model.recurrent_layers, Some(IntOrList::List(flags)));
        assert_eq!(
            h.model.indexer_types,
            Some(IntOrList::Int(Int::Unsigned(1)))
        );
        // read for the fields, not returned among the metadata unless asked for
        let returned = |key: &str| match h.metadata.get(key).map(|kv| &kv.value) {
            Some(Value::Array(a)) => a.values.is_some(),
            _ => true,
        };
        assert!(
            !returned("llama.feed_forward_length") && !returned("llama.attention.recurrent_layers")
        );
    }

    #[test]
    fn absent_hyperparameters_are_none_and_zero_is_not_absent() {
        let model = model_of(&llama_with(1, |e| {
            e.key("llama.attention.sliding_window", 4).u32(0);
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(model.sliding_window, Some(Int::Unsigned(0)));
        let expected = ModelParams {
            sliding_window: Some(Int::Unsigned(0)),
            ..ModelParams::default()
        };
        assert_eq!(model, expected);
        assert!(model.fields().iter().filter(|(_, v)| v.is_some()).count() == 1);
    }

    #[test]
    fn a_hyperparameter_of_the_wrong_type_is_an_error_naming_its_key() {
        type Writer = fn(&mut Enc);
        let cases: [(&str, Writer); 4] = [
            ("llama.attention.key_length_swa", |e| {
                e.key("llama.attention.key_length_swa", 6)
                    .u32(1.5f32.to_bits());
            }),
            ("llama.feed_forward_length", |e| {
                e.key("llama.feed_forward_length", 9).u32(6).len(1).u32(0);
            }),
            ("llama.attention.recurrent_layers", |e| {
                e.key("llama.attention.recurrent_layers", 8).str("yes");
            }),
            ("llama.nextn_predict_layers", |e| {
                e.key("llama.nextn_predict_layers", 7).out.push(1);
            }),
        ];
        for (key, write) in cases {
            let err = model_of(&llama_with(1, write)).err();
            assert!(
                matches!(&err, Some(GgufError { kind: ErrorKind::WrongType { key: k, .. }, .. }) if k == key),
                "{key}: {err:?}"
            );
        }
    }

    #[test]
    fn a_per_layer_array_longer_than_the_bytes_left_is_refused_before_allocating() {
        // 2^29 uint32 values would be 2 GiB: announced by 8 bytes, held by 4
        let data = llama_with(1, |e| {
            e.key("llama.feed_forward_length", 9).u32(4).len(1 << 29);
            e.u32(1);
        });
        let err = model_of(&data).err();
        let needed = err.as_ref().and_then(|e| e.bytes_needed(data.len() as u64));
        assert_eq!(needed, Some((1 << 31) - 4), "{err:?}");
    }

    #[test]
    fn a_per_layer_array_longer_than_any_model_is_an_error_naming_its_key() {
        let with_len = |n: u64| {
            llama_with(1, |e| {
                e.key("llama.attention.head_count", 9)
                    .u32(0)
                    .len(n as usize);
                e.out.extend(std::iter::repeat_n(8, n as usize));
            })
        };
        let longest = model_of(&with_len(MAX_PER_LAYER_LEN)).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(&longest.head_count, Some(IntOrList::List(l)) if l.len() as u64 == MAX_PER_LAYER_LEN)
        );
        let err = model_of(&with_len(MAX_PER_LAYER_LEN + 1)).err();
        assert!(
            matches!(&err, Some(GgufError { kind: ErrorKind::PerLayerTooLong { key, len, .. }, .. })
                if key == "llama.attention.head_count" && *len == MAX_PER_LAYER_LEN + 1),
            "{err:?}"
        );
    }

    #[test]
    fn random_corruption_never_panics() {
        let mut state = 0x853c_49e6_748f_ea9bu64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let opts = Options {
            tensors: true,
            array_values: ArraySelection::All,
        };
        for (version, be) in [(1, false), (3, false), (3, true)] {
            let data = sample(version, be);
            for _ in 0..20_000 {
                let mut bad = data.clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() % bad.len() as u64) as usize;
                    match next() % 3 {
                        0 => bad[at] = next() as u8,
                        1 => bad[at] ^= 1 << (next() % 8),
                        _ => {
                            let v = next().to_le_bytes();
                            let end = (at + 8).min(bad.len());
                            bad[at..end].copy_from_slice(&v[..end - at]);
                        }
                    }
                }
                let cut = if next() % 4 == 0 {
                    (next() % bad.len() as u64) as usize
                } else {
                    bad.len()
                };
                // Ok or Err: what matters is that it returns.
                let _ = scan_bytes(&bad[..cut], &opts);
            }
        }
    }
}
