"""A model's GGUF hyperparameters, typed, and the bounds they must keep.

The Rust scanner is their one reader (``ModelParams`` in
rust_ext/src/gguf/model.rs): it knows which ``ARCH.*`` key holds which field
and of what type, and reads every per-layer array. ``Hyperparameters`` carries
its fields by the same names; ``None`` is an absent key, which llama.cpp
tells from 0 (an absent ``llama4.attention.sliding_window`` is not a 0 one).

``check_bounds`` is defect 16's guard: one 4-byte edit of a header
(``block_count`` = 16,777,246, or 2^31-1) used to keep the planner's
per-layer loops running past any deadline, or grow a per-layer tuple until
the kernel killed the service. Every field is checked against a bound that
no real model comes near, before any per-layer work.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from llamagate.domain.errors import InvalidModel

PerLayer = int | tuple[int, ...]  # one value for every layer, or one per layer


@dataclass(frozen=True)
class Hyperparameters:
    """The scanner's ``"model"`` dict, typed. Each field is the key
    ``ARCH.<key>`` of ``GGUF_KEYS`` (e.g. ``indexer_types`` is
    ``ARCH.attention.indexer.types``); ``None`` when the file lacks it."""

    context_length: int | None = None
    block_count: int | None = None  # every block, appended NextN/MTP blocks included
    nextn_predict_layers: int | None = None
    head_count: PerLayer | None = None
    head_count_kv: PerLayer | None = None
    embedding_length: int | None = None
    feed_forward_length: PerLayer | None = None
    key_length: int | None = None
    value_length: int | None = None
    key_length_swa: int | None = None
    value_length_swa: int | None = None
    sliding_window: int | None = None
    sliding_window_pattern: int | tuple[bool, ...] | None = None  # a period, or True = sliding per layer
    full_attention_interval: int | None = None
    recurrent_layers: PerLayer | None = None  # 0/1 per layer
    shared_kv_layers: int | None = None
    kv_lora_rank: int | None = None
    key_length_mla: int | None = None
    value_length_mla: int | None = None
    indexer_key_length: int | None = None
    indexer_types: PerLayer | None = None  # 0/1 per layer
    ssm_conv_kernel: int | None = None
    ssm_inner_size: int | None = None
    ssm_state_size: int | None = None
    ssm_group_count: int | None = None
    wkv_head_size: int | None = None
    token_shift_count: int | None = None
    shortconv_l_cache: int | None = None
    kda_head_dim: int | None = None
    expert_count: int | None = None
    expert_used_count: PerLayer | None = None
    vocab_size: int | None = None  # ARCH.vocab_size, else the tokenizer's token count
    file_type: int | None = None  # general.file_type


# -- bounds --------------------------------------------------------------------------------------
#
# Far above every real model, far below what would make a per-layer loop or
# tuple hurt. llama.cpp itself refuses more than 512 layers and 1024 experts
# today (LLAMA_MAX_LAYERS, LLAMA_MAX_EXPERTS); we allow 8x and 64x that, so a
# newer engine that raises its limits is never held back by ours. The largest
# real values are orders of magnitude below the others: 128 heads
# (DeepSeek-V3), an FFN of 53,248 (Llama-3.1-405B), a 262,144-token vocabulary
# (Gemma 3), a trained context of 10M tokens (Llama 4 Scout).
MAX_LAYERS = 4096
MAX_HEADS = 16384
MAX_WIDTH = 1 << 20  # embedding, head, FFN, latent, state and conv widths
MAX_EXPERTS = 65536
MAX_CONTEXT = 1 << 27  # tokens: trained context and sliding window
MAX_VOCAB = 1 << 24
MAX_UINT32 = (1 << 32) - 1  # flags and ids that size nothing: only what llama.cpp can read


@dataclass(frozen=True)
class _Bound:
    key: str  # after "ARCH."
    most: int
    unit: str = ""
    least: int = 0


_LAYERS, _HEADS, _WIDTH = (MAX_LAYERS, "layers"), (MAX_HEADS, "heads"), (MAX_WIDTH, "elements")
_BOUNDS: dict[str, _Bound] = {
    "context_length": _Bound("context_length", MAX_CONTEXT, "tokens"),
    "block_count": _Bound("block_count", *_LAYERS),
    "nextn_predict_layers": _Bound("nextn_predict_layers", *_LAYERS),
    "head_count": _Bound("attention.head_count", *_HEADS),
    "head_count_kv": _Bound("attention.head_count_kv", *_HEADS),
    "embedding_length": _Bound("embedding_length", *_WIDTH),
    "feed_forward_length": _Bound("feed_forward_length", *_WIDTH),
    "key_length": _Bound("attention.key_length", *_WIDTH),
    "value_length": _Bound("attention.value_length", *_WIDTH),
    "key_length_swa": _Bound("attention.key_length_swa", *_WIDTH),
    "value_length_swa": _Bound("attention.value_length_swa", *_WIDTH),
    "sliding_window": _Bound("attention.sliding_window", MAX_CONTEXT, "tokens"),
    "sliding_window_pattern": _Bound("attention.sliding_window_pattern", *_LAYERS),
    # a modulus in llama.cpp and here: 0 would divide by zero
    "full_attention_interval": _Bound("full_attention_interval", *_LAYERS, least=1),
    "recurrent_layers": _Bound("attention.recurrent_layers", MAX_UINT32),
    "shared_kv_layers": _Bound("attention.shared_kv_layers", *_LAYERS),
    "kv_lora_rank": _Bound("attention.kv_lora_rank", *_WIDTH),
    "key_length_mla": _Bound("attention.key_length_mla", *_WIDTH),
    "value_length_mla": _Bound("attention.value_length_mla", *_WIDTH),
    "indexer_key_length": _Bound("attention.indexer.key_length", *_WIDTH),
    "indexer_types": _Bound("attention.indexer.types", MAX_UINT32),
    "ssm_conv_kernel": _Bound("ssm.conv_kernel", *_WIDTH),
    "ssm_inner_size": _Bound("ssm.inner_size", *_WIDTH),
    "ssm_state_size": _Bound("ssm.state_size", *_WIDTH),
    "ssm_group_count": _Bound("ssm.group_count", *_HEADS),
    "wkv_head_size": _Bound("wkv.head_size", *_WIDTH),
    "token_shift_count": _Bound("token_shift_count", *_WIDTH),
    "shortconv_l_cache": _Bound("shortconv.l_cache", *_WIDTH),
    "kda_head_dim": _Bound("kda.head_dim", *_WIDTH),
    "expert_count": _Bound("expert_count", MAX_EXPERTS, "experts"),
    "expert_used_count": _Bound("expert_used_count", MAX_EXPERTS, "experts"),
    "vocab_size": _Bound("vocab_size", MAX_VOCAB, "tokens"),
    "file_type": _Bound("general.file_type", MAX_UINT32),
}

# The GGUF key of each field, after "ARCH." (general.file_type excepted).
GGUF_KEYS: dict[str, str] = {name: bound.key for name, bound in _BOUNDS.items()}


def gguf_key(field: str, architecture: str) -> str:
    """The full key a field is read from: ``gguf_key("head_count", "llama")``
    is ``llama.attention.head_count``."""
    key = GGUF_KEYS[field]
    return key if key.startswith("general.") else f"{architecture}.{key}"


def check_bounds(hp: Hyperparameters, architecture: str) -> None:
    """Raise InvalidModel, naming the GGUF key and its value, for the first
    hyperparameter out of its bounds. Costs at most one step per element of
    the per-layer arrays the file holds; builds nothing per layer."""
    for f in fields(hp):
        value = getattr(hp, f.name)
        if value is None:
            continue
        bound, key = _BOUNDS[f.name], gguf_key(f.name, architecture)
        if isinstance(value, tuple):
            _check_per_layer(key, value, bound)
        else:
            _check(key, value, bound)
    _check_nextn(hp, architecture)


def _check(key: str, value: int, bound: _Bound) -> None:
    if value > bound.most:
        raise InvalidModel(f"{key} = {value} is out of range: at most {bound.most} {bound.unit}".rstrip())
    if value < bound.least:
        raise InvalidModel(f"{key} = {value} is out of range: at least {bound.least}")


def _check_per_layer(key: str, values: tuple[int, ...], bound: _Bound) -> None:
    if len(values) > MAX_LAYERS:
        raise InvalidModel(f"{key} has {len(values)} values (one per layer), out of range: at most {MAX_LAYERS} layers")
    for il, value in enumerate(values):
        _check(f"{key}[{il}]", value, bound)


def _check_nextn(hp: Hyperparameters, architecture: str) -> None:
    """llama.cpp asserts the NextN/MTP blocks are among the blocks."""
    nextn, blocks = hp.nextn_predict_layers, hp.block_count
    if nextn is not None and blocks is not None and nextn > blocks:
        raise InvalidModel(f"{architecture}.nextn_predict_layers = {nextn} is out of range: "
                           f"at most {architecture}.block_count = {blocks}")
