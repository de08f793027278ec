//! What planning needs, typed: the architecture-prefixed hyperparameters.
//!
//! This is the one place that knows which `ARCH.*` key holds which
//! hyperparameter and of what type: callers (the Python planner) read the
//! typed fields, never a raw key.

use super::error::{ErrorKind, GgufError, Result};
use super::header::Metadata;
use super::value::{ArrayValues, Int, Scalar, Value, ValueType};

/// A hyperparameter that is one value for all layers or one per layer.
#[derive(Debug, Clone, PartialEq)]
pub enum IntOrList {
    Int(Int),
    List(Vec<Int>),
}

/// `ARCH.attention.sliding_window_pattern`: a period (every n-th layer is
/// full attention) or one flag per layer (true: sliding window).
#[derive(Debug, Clone, PartialEq)]
pub enum SwaPattern {
    Period(Int),
    Layers(Vec<bool>),
}

/// Hyperparameters read from the `ARCH.*` keys (None when absent: llama.cpp
/// tells an absent key from a zero one, e.g. llama4's `sliding_window`).
/// Each field's key is `ARCH.` + the suffix in [`ModelParams::extract`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelParams {
    pub context_length: Option<Int>,
    pub block_count: Option<Int>,
    /// MTP/NextN blocks appended to the trunk (counted in `block_count`).
    pub nextn_predict_layers: Option<Int>,
    pub head_count: Option<IntOrList>,
    pub head_count_kv: Option<IntOrList>,
    pub embedding_length: Option<Int>,
    pub feed_forward_length: Option<IntOrList>,
    pub key_length: Option<Int>,
    pub value_length: Option<Int>,
    pub key_length_swa: Option<Int>,
    pub value_length_swa: Option<Int>,
    pub sliding_window: Option<Int>,
    pub sliding_window_pattern: Option<SwaPattern>,
    pub full_attention_interval: Option<Int>,
    /// 0/1 flags: which layers are recurrent (bool arrays read as 0/1).
    pub recurrent_layers: Option<IntOrList>,
    /// Trailing layers that reuse an earlier layer's KV cache (gemma4).
    pub shared_kv_layers: Option<Int>,
    pub kv_lora_rank: Option<Int>,
    pub key_length_mla: Option<Int>,
    pub value_length_mla: Option<Int>,
    pub indexer_key_length: Option<Int>,
    /// 0/1 flags: which layers have a DSA indexer (bool arrays read as 0/1).
    pub indexer_types: Option<IntOrList>,
    pub ssm_conv_kernel: Option<Int>,
    pub ssm_inner_size: Option<Int>,
    pub ssm_state_size: Option<Int>,
    pub ssm_group_count: Option<Int>,
    pub wkv_head_size: Option<Int>,
    pub token_shift_count: Option<Int>,
    pub shortconv_l_cache: Option<Int>,
    pub kda_head_dim: Option<Int>,
    pub expert_count: Option<Int>,
    pub expert_used_count: Option<IntOrList>,
    /// `ARCH.vocab_size`, else the length of `tokenizer.ggml.tokens`.
    pub vocab_size: Option<Int>,
    /// `general.file_type` (not architecture-prefixed).
    pub file_type: Option<Int>,
}

/// One field's value, borrowed: for callers that list the fields by name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Field<'a> {
    Int(Int),
    Ints(&'a [Int]),
    Flags(&'a [bool]),
}

impl ModelParams {
    /// Every field by name (the names callers see), in a fixed order.
    pub fn fields(&self) -> [(&'static str, Option<Field<'_>>); 33] {
        let int = |v: Option<Int>| v.map(Field::Int);
        fn per_layer(v: &Option<IntOrList>) -> Option<Field<'_>> {
            match v {
                None => None,
                Some(IntOrList::Int(i)) => Some(Field::Int(*i)),
                Some(IntOrList::List(l)) => Some(Field::Ints(l)),
            }
        }
        let swa = match &self.sliding_window_pattern {
            None => None,
            Some(SwaPattern::Period(i)) => Some(Field::Int(*i)),
            Some(SwaPattern::Layers(l)) => Some(Field::Flags(l)),
        };
        [
            ("context_length", int(self.context_length)),
            ("block_count", int(self.block_count)),
            ("nextn_predict_layers", int(self.nextn_predict_layers)),
            ("head_count", per_layer(&self.head_count)),
            ("head_count_kv", per_layer(&self.head_count_kv)),
            ("embedding_length", int(self.embedding_length)),
            ("feed_forward_length", per_layer(&self.feed_forward_length)),
            ("key_length", int(self.key_length)),
            ("value_length", int(self.value_length)),
            ("key_length_swa", int(self.key_length_swa)),
            ("value_length_swa", int(self.value_length_swa)),
            ("sliding_window", int(self.sliding_window)),
            ("sliding_window_pattern", swa),
            ("full_attention_interval", int(self.full_attention_interval)),
            ("recurrent_layers", per_layer(&self.recurrent_layers)),
            ("shared_kv_layers", int(self.shared_kv_layers)),
            ("kv_lora_rank", int(self.kv_lora_rank)),
            ("key_length_mla", int(self.key_length_mla)),
            ("value_length_mla", int(self.value_length_mla)),
            ("indexer_key_length", int(self.indexer_key_length)),
            ("indexer_types", per_layer(&self.indexer_types)),
            ("ssm_conv_kernel", int(self.ssm_conv_kernel)),
            ("ssm_inner_size", int(self.ssm_inner_size)),
            ("ssm_state_size", int(self.ssm_state_size)),
            ("ssm_group_count", int(self.ssm_group_count)),
            ("wkv_head_size", int(self.wkv_head_size)),
            ("token_shift_count", int(self.token_shift_count)),
            ("shortconv_l_cache", int(self.shortconv_l_cache)),
            ("kda_head_dim", int(self.kda_head_dim)),
            ("expert_count", int(self.expert_count)),
            ("expert_used_count", per_layer(&self.expert_used_count)),
            ("vocab_size", int(self.vocab_size)),
            ("file_type", int(self.file_type)),
        ]
    }
}

/// Keys (by suffix) that llama.cpp accepts as a scalar or a per-layer array:
/// the scanner reads these arrays' values even when not asked to (they are
/// one element per layer, and the fields above carry them), so no caller
/// ever needs a second scan to learn them.
const PER_LAYER_SUFFIXES: [&str; 7] = [
    ".attention.head_count",
    ".attention.head_count_kv",
    ".expert_used_count",
    ".attention.sliding_window_pattern",
    ".feed_forward_length",
    ".attention.recurrent_layers",
    ".attention.indexer.types",
];

/// Most elements a per-layer array may have. A resource guard, not a policy
/// (the planner's own bound is far lower; llama.cpp's LLAMA_MAX_LAYERS is
/// 512): these arrays are read whatever the caller asked for, so a length
/// edited into a multi-GB file must not make the scanner read gigabytes.
pub const MAX_PER_LAYER_LEN: u64 = 1 << 16;

pub(crate) fn needs_values(key: &str, elem: ValueType) -> bool {
    (elem.is_integer() || elem == ValueType::Bool)
        && PER_LAYER_SUFFIXES.iter().any(|s| key.ends_with(s))
}

fn wrong_type(key: &str, offset: u64, value: &Value, expected: &'static str) -> GgufError {
    GgufError::new(
        offset,
        ErrorKind::WrongType {
            key: key.to_owned(),
            found: value.type_name(),
            expected,
        },
    )
}

pub(crate) fn int(md: &Metadata, key: &str) -> Result<Option<Int>> {
    let Some(kv) = md.get(key) else {
        return Ok(None);
    };
    match &kv.value {
        Value::Scalar(s) => s
            .as_int()
            .map(Some)
            .ok_or_else(|| wrong_type(key, kv.offset, &kv.value, "an integer")),
        Value::Array(_) => Err(wrong_type(key, kv.offset, &kv.value, "an integer")),
    }
}

pub(crate) fn string<'a>(md: &'a Metadata, key: &str) -> Result<Option<&'a str>> {
    let Some(kv) = md.get(key) else {
        return Ok(None);
    };
    match &kv.value {
        Value::Scalar(Scalar::String(s)) => Ok(Some(s)),
        _ => Err(wrong_type(key, kv.offset, &kv.value, "a string")),
    }
}

fn int_or_list(md: &Metadata, key: &str) -> Result<Option<IntOrList>> {
    per_layer(
        md,
        key,
        "an integer or an array of integers",
        ArrayValues::to_ints,
    )
}

/// A per-layer array of 0/1 flags, which llama.cpp stores as uint32 but
/// whose `get_arr` also reads a bool array (as 0/1): both are accepted.
fn int_or_flags(md: &Metadata, key: &str) -> Result<Option<IntOrList>> {
    fn ints_or_bools(values: &ArrayValues) -> Option<Vec<Int>> {
        match values {
            ArrayValues::Bool(v) => Some(v.iter().map(|&b| Int::Unsigned(b.into())).collect()),
            other => other.to_ints(),
        }
    }
    let expected = "an integer or an array of integers or bools";
    per_layer(md, key, expected, ints_or_bools)
}

/// A scalar integer, or an array whose elements `elements` accepts. The
/// array's values are always there: `needs_values` has the scanner read them.
fn per_layer(
    md: &Metadata,
    key: &str,
    expected: &'static str,
    elements: fn(&ArrayValues) -> Option<Vec<Int>>,
) -> Result<Option<IntOrList>> {
    let Some(kv) = md.get(key) else {
        return Ok(None);
    };
    match &kv.value {
        Value::Scalar(s) => s.as_int().map(|i| Some(IntOrList::Int(i))),
        Value::Array(a) => a
            .values
            .as_ref()
            .and_then(elements)
            .map(|l| Some(IntOrList::List(l))),
    }
    .ok_or_else(|| wrong_type(key, kv.offset, &kv.value, expected))
}

fn swa_pattern(md: &Metadata, key: &str) -> Result<Option<SwaPattern>> {
    let Some(kv) = md.get(key) else {
        return Ok(None);
    };
    let expected = "an integer or an array of bools or integers";
    match &kv.value {
        Value::Scalar(s) => s.as_int().map(|i| Some(SwaPattern::Period(i))),
        Value::Array(a) => a
            .values
            .as_ref()
            .and_then(|v| v.to_flags())
            .map(|l| Some(SwaPattern::Layers(l))),
    }
    .ok_or_else(|| wrong_type(key, kv.offset, &kv.value, expected))
}

impl ModelParams {
    /// Reads the hyperparameters of architecture `arch` (`None`: only the
    /// architecture-independent ones).
    pub fn extract(md: &Metadata, arch: Option<&str>) -> Result<ModelParams> {
        let mut p = ModelParams {
            file_type: int(md, "general.file_type")?,
            ..ModelParams::default()
        };
        if let Some(a) = arch {
            let k = |suffix: &str| format!("{a}.{suffix}");
            p.context_length = int(md, &k("context_length"))?;
            p.block_count = int(md, &k("block_count"))?;
            p.nextn_predict_layers = int(md, &k("nextn_predict_layers"))?;
            p.head_count = int_or_list(md, &k("attention.head_count"))?;
            p.head_count_kv = int_or_list(md, &k("attention.head_count_kv"))?;
            p.embedding_length = int(md, &k("embedding_length"))?;
            p.feed_forward_length = int_or_list(md, &k("feed_forward_length"))?;
            p.key_length = int(md, &k("attention.key_length"))?;
            p.value_length = int(md, &k("attention.value_length"))?;
            p.key_length_swa = int(md, &k("attention.key_length_swa"))?;
            p.value_length_swa = int(md, &k("attention.value_length_swa"))?;
            p.sliding_window = int(md, &k("attention.sliding_window"))?;
            p.sliding_window_pattern = swa_pattern(md, &k("attention.sliding_window_pattern"))?;
            p.full_attention_interval = int(md, &k("full_attention_interval"))?;
            p.recurrent_layers = int_or_flags(md, &k("attention.recurrent_layers"))?;
            p.shared_kv_layers = int(md, &k("attention.shared_kv_layers"))?;
            p.kv_lora_rank = int(md, &k("attention.kv_lora_rank"))?;
            p.key_length_mla = int(md, &k("attention.key_length_mla"))?;
            p.value_length_mla = int(md, &k("attention.value_length_mla"))?;
            p.indexer_key_length = int(md, &k("attention.indexer.key_length"))?;
            p.indexer_types = int_or_flags(md, &k("attention.indexer.types"))?;
            p.ssm_conv_kernel = int(md, &k("ssm.conv_kernel"))?;
            p.ssm_inner_size = int(md, &k("ssm.inner_size"))?;
            p.ssm_state_size = int(md, &k("ssm.state_size"))?;
            p.ssm_group_count = int(md, &k("ssm.group_count"))?;
            p.wkv_head_size = int(md, &k("wkv.head_size"))?;
            p.token_shift_count = int(md, &k("token_shift_count"))?;
            p.shortconv_l_cache = int(md, &k("shortconv.l_cache"))?;
            p.kda_head_dim = int(md, &k("kda.head_dim"))?;
            p.expert_count = int(md, &k("expert_count"))?;
            p.expert_used_count = int_or_list(md, &k("expert_used_count"))?;
            p.vocab_size = int(md, &k("vocab_size"))?;
        }
        if p.vocab_size.is_none() {
            if let Some(Value::Array(tokens)) = md.get("tokenizer.ggml.tokens").map(|kv| &kv.value)
            {
                p.vocab_size = Some(Int::Unsigned(tokens.len));
            }
        }
        Ok(p)
    }
}
