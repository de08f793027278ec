//! What planning needs, typed: the architecture-prefixed hyperparameters.

use super::error::{ErrorKind, GgufError, Result};
use super::header::Metadata;
use super::value::{Int, Scalar, Value, ValueType};

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

/// Hyperparameters read from the `ARCH.*` keys (None when absent).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelParams {
    pub context_length: Option<Int>,
    pub block_count: Option<Int>,
    pub head_count: Option<IntOrList>,
    pub head_count_kv: Option<IntOrList>,
    pub embedding_length: Option<Int>,
    pub key_length: Option<Int>,
    pub value_length: Option<Int>,
    pub sliding_window: Option<Int>,
    pub sliding_window_pattern: Option<SwaPattern>,
    pub full_attention_interval: Option<Int>,
    pub kv_lora_rank: Option<Int>,
    pub key_length_mla: Option<Int>,
    pub ssm_conv_kernel: Option<Int>,
    pub ssm_inner_size: Option<Int>,
    pub ssm_state_size: Option<Int>,
    pub ssm_group_count: Option<Int>,
    pub expert_count: Option<Int>,
    pub expert_used_count: Option<IntOrList>,
    /// `ARCH.vocab_size`, else the length of `tokenizer.ggml.tokens`.
    pub vocab_size: Option<Int>,
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
    pub fn fields(&self) -> [(&'static str, Option<Field<'_>>); 20] {
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
            ("head_count", per_layer(&self.head_count)),
            ("head_count_kv", per_layer(&self.head_count_kv)),
            ("embedding_length", int(self.embedding_length)),
            ("key_length", int(self.key_length)),
            ("value_length", int(self.value_length)),
            ("sliding_window", int(self.sliding_window)),
            ("sliding_window_pattern", swa),
            ("full_attention_interval", int(self.full_attention_interval)),
            ("kv_lora_rank", int(self.kv_lora_rank)),
            ("key_length_mla", int(self.key_length_mla)),
            ("ssm_conv_kernel", int(self.ssm_conv_kernel)),
            ("ssm_inner_size", int(self.ssm_inner_size)),
            ("ssm_state_size", int(self.ssm_state_size)),
            ("ssm_group_count", int(self.ssm_group_count)),
            ("expert_count", int(self.expert_count)),
            ("expert_used_count", per_layer(&self.expert_used_count)),
            ("vocab_size", int(self.vocab_size)),
            ("file_type", int(self.file_type)),
        ]
    }
}

/// Keys (by suffix) that llama.cpp accepts as a scalar or a per-layer array:
/// the scanner reads these arrays' values even when not asked to (they are
/// one element per layer).
const PER_LAYER_SUFFIXES: [&str; 4] = [
    ".attention.head_count",
    ".attention.head_count_kv",
    ".expert_used_count",
    ".attention.sliding_window_pattern",
];

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
    let Some(kv) = md.get(key) else {
        return Ok(None);
    };
    let expected = "an integer or an array of integers";
    match &kv.value {
        Value::Scalar(s) => s.as_int().map(|i| Some(IntOrList::Int(i))),
        Value::Array(a) => a
            .values
            .as_ref()
            .and_then(|v| v.to_ints())
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
            p.head_count = int_or_list(md, &k("attention.head_count"))?;
            p.head_count_kv = int_or_list(md, &k("attention.head_count_kv"))?;
            p.embedding_length = int(md, &k("embedding_length"))?;
            p.key_length = int(md, &k("attention.key_length"))?;
            p.value_length = int(md, &k("attention.value_length"))?;
            p.sliding_window = int(md, &k("attention.sliding_window"))?;
            p.sliding_window_pattern = swa_pattern(md, &k("attention.sliding_window_pattern"))?;
            p.full_attention_interval = int(md, &k("full_attention_interval"))?;
            p.kv_lora_rank = int(md, &k("attention.kv_lora_rank"))?;
            p.key_length_mla = int(md, &k("attention.key_length_mla"))?;
            p.ssm_conv_kernel = int(md, &k("ssm.conv_kernel"))?;
            p.ssm_inner_size = int(md, &k("ssm.inner_size"))?;
            p.ssm_state_size = int(md, &k("ssm.state_size"))?;
            p.ssm_group_count = int(md, &k("ssm.group_count"))?;
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
