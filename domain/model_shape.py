"""The shape facts a KV-cache estimate needs, resolved as llama.cpp resolves them.

``shape_from_hyperparameters`` turns the scanner's typed ``Hyperparameters``
(bounds checked first, see ``domain.hyperparameters``) into a
``ModelShape`` whose per-layer facts (which layers slide, which are
recurrent, which hold a KV cache) are already decided by the rules of
``llama_model_base::load_hparams`` and each architecture's
``load_arch_hparams`` (llama.cpp src/models/*.cpp) and
``llama_model::create_memory`` (src/llama-model.cpp). The estimator in
``domain.kv_cache`` then needs no architecture knowledge.
"""

from __future__ import annotations

from dataclasses import dataclass

from llamagate.domain.hyperparameters import Hyperparameters, PerLayer, check_bounds

Layers = tuple[bool, ...]


@dataclass(frozen=True)
class ModelShape:
    """Per-model facts; ``None``/0 fields take llama.cpp's defaults.

    ``block_count`` counts every block, appended MTP/NextN blocks included
    (llama.cpp's ``n_layer_all``); the trunk is ``block_count - nextn_layers``.
    """

    architecture: str
    block_count: int
    embedding_length: int
    head_count: int | tuple[int, ...]
    head_count_kv: int | tuple[int, ...] | None = None  # None: = head_count
    key_length: int | None = None  # None: embedding_length / head_count[0]
    value_length: int | None = None
    key_length_swa: int | None = None  # None: = key_length
    value_length_swa: int | None = None
    sliding_window: int = 0
    swa_layers: Layers | None = None  # True = sliding-window layer
    key_length_mla: int = 0  # MLA when both MLA lengths are set (hparams.is_mla)
    value_length_mla: int = 0
    kv_lora_rank: int = 0
    nextn_layers: int = 0
    kv_layers: Layers | None = None  # None: every non-recurrent layer
    recurrent_layers: Layers | None = None  # None: none
    ssm_conv_kernel: int = 0
    ssm_inner_size: int = 0
    ssm_state_size: int = 0
    ssm_group_count: int = 0
    rwkv_head_size: int = 0
    token_shift_count: int = 2
    shortconv_l_cache: int = 0
    kda_head_dim: int = 0
    linear_attention_head_dim: int = 0
    rollback: bool = False  # llm_arch_supports_rs_rollback: keeps n_rs_seq state snapshots
    indexer_key_length: int = 0  # DSA lightning-indexer key cache (DeepSeek-V3.2)
    indexer_layers: Layers | None = None
    context_length: int = 0  # the trained context (n_ctx_train)
    exact: bool = True  # False: llama.cpp builds a memory for it that we only approximate
    note: str = ""

    def heads(self, il: int) -> int:
        return _at(self.head_count, il)

    def heads_kv(self, il: int) -> int:
        return self.heads(il) if self.head_count_kv is None else _at(self.head_count_kv, il)

    def is_swa(self, il: int) -> bool:
        return bool(self.swa_layers and il < len(self.swa_layers) and self.swa_layers[il])

    def is_recurrent(self, il: int) -> bool:
        return bool(self.recurrent_layers and il < len(self.recurrent_layers) and self.recurrent_layers[il])

    def has_kv(self, il: int) -> bool:
        if self.kv_layers is None:
            return not self.is_recurrent(il)
        return il < len(self.kv_layers) and self.kv_layers[il]

    @property
    def is_mla(self) -> bool:
        return self.key_length_mla > 0 and self.value_length_mla > 0

    def head_k(self, il: int) -> int:
        """``hparams.n_embd_head_k(il)``: the SWA length on SWA layers."""
        full = self._default_head() if self.key_length is None else self.key_length
        swa = full if self.key_length_swa is None else self.key_length_swa
        return swa if self.is_swa(il) else full

    def head_v(self, il: int) -> int:
        full = self._default_head() if self.value_length is None else self.value_length
        swa = full if self.value_length_swa is None else self.value_length_swa
        return swa if self.is_swa(il) else full

    def _default_head(self) -> int:
        # the legacy fallback of load_hparams: n_embd / n_head(0), 0 without heads
        return self.embedding_length // self.heads(0) if self.heads(0) > 0 else 0


def _at(value: int | tuple[int, ...], il: int) -> int:
    if isinstance(value, int):
        return value
    return value[il] if il < len(value) else 0


def swa_pattern(n_layer: int, period: int, *, dense_first: bool = False) -> Layers:
    """``llama_hparams::set_swa_pattern``: every ``period``-th layer is full attention
    (the last of each period, or the first with ``dense_first``); 0 = all SWA."""
    if dense_first:
        return tuple(period == 0 or il % period != 0 for il in range(n_layer))
    return tuple(period == 0 or il % period < period - 1 for il in range(n_layer))


# -- from the hyperparameters ---------------------------------------------------------------------


def shape_from_hyperparameters(hp: Hyperparameters, architecture: str) -> ModelShape:
    """A ``ModelShape`` from the scanner's hyperparameters (see module doc).

    Raises InvalidModel for a value out of its bounds, checked before any
    per-layer work; ValueError when the essentials are missing (no estimate)."""
    check_bounds(hp, architecture)
    arch = architecture
    if not hp.block_count or not hp.embedding_length:
        raise ValueError(f"{arch or 'unknown'}: the header has no block_count/embedding_length")
    n_all = hp.block_count
    nextn = _int(hp.nextn_predict_layers)
    heads = _ints(hp.head_count, n_all)
    heads_kv = _ints(hp.head_count_kv, n_all) if hp.head_count_kv is not None else heads
    recurrent = _recurrent_layers(hp, arch, n_all - nextn, n_all, heads_kv)
    swa_layers, window = _swa(hp, arch, n_all - nextn, n_all, recurrent)
    key_length, value_length = _head_lengths(hp, arch, hp.embedding_length, heads[0])
    mla = arch in _READS_MLA
    indexer = _indexer_layers(hp, arch, n_all - nextn, n_all)
    exact = arch not in _UNMODELLED
    return ModelShape(
        architecture=arch,
        block_count=n_all,
        embedding_length=hp.embedding_length,
        head_count=heads,
        head_count_kv=heads_kv,
        key_length=key_length,
        value_length=value_length,
        key_length_swa=_int(hp.key_length_swa, key_length),
        value_length_swa=_int(hp.value_length_swa, value_length),
        sliding_window=window,
        swa_layers=swa_layers,
        key_length_mla=_int(hp.key_length_mla) if mla else 0,
        value_length_mla=_int(hp.value_length_mla) if mla else 0,
        kv_lora_rank=_int(hp.kv_lora_rank),
        nextn_layers=nextn,
        kv_layers=_kv_layers(hp, arch, n_all - nextn, n_all, recurrent, nextn),
        recurrent_layers=recurrent,
        **_recurrent_dims(hp, arch, key_length),
        rollback=arch in _ROLLBACK,
        indexer_key_length=_int(hp.indexer_key_length) if indexer else 0,
        indexer_layers=indexer,
        context_length=_int(hp.context_length),
        exact=exact,
        note="" if exact else f"{arch}: llama.cpp builds a special memory for it; estimated as plain KV",
    )


def _int(value: int | None, default: int = 0) -> int:
    """An optional key: its value, else the default llama.cpp starts from."""
    return default if value is None else value


def _ints(value: PerLayer | None, n: int) -> tuple[int, ...]:
    """``get_key_or_arr``: a scalar fills every layer, an array is read as is
    (padded with 0 to ``n``); absent is 0 everywhere."""
    if value is None:
        return (0,) * n
    if isinstance(value, int):
        return (value,) * n
    return tuple(value) + (0,) * max(0, n - len(value))


def _per_layer(value: PerLayer | None, n: int) -> tuple[int, ...] | None:
    """``_ints``, but ``None`` when the key is absent (the arch has its own default)."""
    return None if value is None else _ints(value, n)


def _head_lengths(hp: Hyperparameters, arch: str, n_embd: int, heads0: int) -> tuple[int, int]:
    # load_hparams reads the key/value lengths only when layer 0 has heads;
    # plamo2 reads them again unconditionally
    if heads0 == 0 and arch != "plamo2":
        return 0, 0
    default = n_embd // heads0 if heads0 else 0
    return _int(hp.key_length, default), _int(hp.value_length, default)


# -- sliding-window attention (each arch's load_arch_hparams) ------------------------------------

# arch: (default period, dense_first, when, window override)
#   when "always": SWA regardless of the window key; "window": only with a window > 0
#   period None: only the file's per-layer pattern array (ml.get_arr, no fallback)
_SWA: dict[str, tuple[int | None, bool, str, int | None]] = {
    "gemma2": (2, False, "always", None),
    "gemma3": (6, False, "window", None),
    "gemma3n": (5, False, "always", None),
    "gemma4": (None, False, "always", None),
    "cohere2": (4, False, "always", None),
    "cohere2moe": (4, True, "always", None),
    "afmoe": (4, False, "window", None),
    "exaone-moe": (4, False, "always", None),
    "llama4": (4, False, "llama4", 8192),
    "mellum": (4, False, "window", None),
    "olmo2": (4, False, "window", None),
    "gpt-oss": (2, False, "always", None),
    "plamo3": (8, False, "window", None),
    "smallthinker": (4, True, "window", 4096),
    "laguna": (4, True, "window", None),
    "muse-glimmer": (4, False, "always", None),
    "mimo2": (None, False, "always", None),
    "maple": (None, False, "always", None),
    "spark2_5": (None, False, "always", None),
    "step35": (None, False, "always", None),
    "granite_swa": (None, False, "always", None),
    "dots3note": (None, False, "always", None),
}


def _swa(hp: Hyperparameters, arch: str, n_layer: int, n_all: int,
         recurrent: Layers | None) -> tuple[Layers | None, int]:
    window = _int(hp.sliding_window)
    if arch == "lfm2" and window > 0:  # every attention layer slides
        return tuple(not (recurrent and recurrent[il]) for il in range(n_all)), window
    if arch == "exaone4":  # only the 64-layer (32B) model slides
        return (_pattern(hp, 4, False, n_layer, n_all), window or 4096) if n_layer == 64 else (None, 0)
    rule = _SWA.get(arch)
    if rule is None:
        return None, 0
    period, dense_first, when, forced = rule
    if when == "window" and window <= 0:
        return None, 0
    if when == "llama4" and hp.sliding_window is not None and window == 0:
        return None, 0
    if forced is not None:
        window = forced
    elif window <= 0:  # a default some arches set before reading the (optional) key
        window = {"gemma2": 4096, "exaone-moe": 128}.get(arch, 0)
    return _pattern(hp, period, dense_first, n_layer, n_all), window


def _pattern(hp: Hyperparameters, period: int | None, dense_first: bool, n_layer: int, n_all: int) -> Layers:
    """``load_swa_pattern``: the file's array, else its period, else the arch's."""
    pattern = hp.sliding_window_pattern
    if isinstance(pattern, tuple):
        return tuple(bool(v) for v in pattern[:n_all]) + (False,) * max(0, n_all - len(pattern))
    if period is None:
        return (False,) * n_all
    if isinstance(pattern, int):
        period = pattern
    return swa_pattern(n_layer, period, dense_first=dense_first) + (False,) * (n_all - n_layer)


# -- recurrent layers -----------------------------------------------------------------------------

_RECURRENT = {"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"}  # llm_arch_is_recurrent
_KDA = {"kimi-linear", "kimi-k3", "bailingmoe3"}  # MLA attention + Kimi delta attention
_RECURRENT_BY_ZERO_KV_HEADS = {"jamba", "granitehybrid", "plamo2", "lfm2", "lfm2moe"} | _KDA
_RECURRENT_BY_INTERVAL = {"qwen3next": 4, "qwen35": 4, "qwen35moe": 4, "minimax-01": 8}
_NEMOTRON_H = {"nemotron_h", "nemotron_h_moe"}
_ROLLBACK = {"kimi-k3", "qwen35", "qwen35moe", "qwen4exp", "deepseek4", "glm5-next", "nemotron_h", "nemotron_h_moe",
             "lfm2", "lfm2moe", "bailingmoe3"}
_READS_SSM_GROUPS = {"mamba2", "falcon-h1", "granitehybrid", "plamo2", "qwen3next", "qwen35", "qwen35moe"} | _NEMOTRON_H
_READS_SSM = _READS_SSM_GROUPS | {"mamba", "jamba"}
_READS_MLA = {"deepseek2", "mistral4", "deepseek32", "glm-dsa", "kimi-linear", "dots3note", "bailingmoe3",
              "glm5-next", "hy_v4", "kimi-k3"}
# create_memory gives these no memory at all (encoders, diffusion models)
_NO_MEMORY = {"bert", "modern-bert", "nomic-bert", "nomic-bert-moe", "neo-bert", "jina-bert-v2", "jina-bert-v3",
              "eurobert", "clef", "gemma-embedding", "wavtokenizer-dec", "dream", "llada", "llada-moe", "rnd1"}
# special memories (llama-kv-cache-dsv4/msa, hybrid-idx, ...) we only approximate
_UNMODELLED = {"deepseek4", "minimax-m3", "glm5-next", "hy_v4", "dots3note", "qwen4exp", "gemma4-assistant",
               "dflash", "eagle3", "graniteswitch"}


def _recurrent_layers(hp: Hyperparameters, arch: str, n_layer: int, n_all: int,
                      heads_kv: tuple[int, ...]) -> Layers | None:
    trunk = [il < n_layer for il in range(n_all)]
    if arch in _RECURRENT or arch == "falcon-h1":
        return tuple(trunk)
    if arch in _RECURRENT_BY_ZERO_KV_HEADS:
        return tuple(t and heads_kv[il] == 0 for il, t in enumerate(trunk))
    if arch in _NEMOTRON_H:
        n_ff = _ints(hp.feed_forward_length, n_all)
        return tuple(t and heads_kv[il] == 0 and n_ff[il] == 0 for il, t in enumerate(trunk))
    if arch in _RECURRENT_BY_INTERVAL:
        listed = _per_layer(hp.recurrent_layers, n_all)
        if listed is not None:
            return tuple(bool(v) for v in listed[:n_all])
        interval = _int(hp.full_attention_interval, _RECURRENT_BY_INTERVAL[arch])
        return tuple(t and (il + 1) % interval != 0 for il, t in enumerate(trunk))
    return None


def _kv_layers(hp: Hyperparameters, arch: str, n_layer: int, n_all: int, recurrent: Layers | None,
               nextn: int) -> Layers:
    """Which layers ``create_memory`` gives an attention KV cache."""
    rec = recurrent or (False,) * n_all
    if arch in _RECURRENT or arch in _NO_MEMORY:
        return (False,) * n_all
    if arch == "falcon-h1":  # attention and SSM side by side in every layer
        return (True,) * n_all
    if arch in _NEMOTRON_H:  # the MLP-only layers have neither
        n_ff = _ints(hp.feed_forward_length, n_all)
        return tuple(not rec[il] and n_ff[il] == 0 for il in range(n_all))
    if arch in _RECURRENT_BY_INTERVAL:
        return tuple(il < n_layer and not rec[il] for il in range(n_all))
    if arch in _RECURRENT_BY_ZERO_KV_HEADS:
        return tuple(not rec[il] for il in range(n_all))
    kv_from_start = n_all
    if arch == "gemma3n":  # hparams.n_layer_kv_from_start: later layers reuse layer 18/19's cache
        kv_from_start = 20
    elif arch == "gemma4":
        kv_from_start = n_all - _int(hp.shared_kv_layers)
    # the trunk's cache leaves out the NextN/MTP blocks
    end = n_layer if nextn > 0 and n_layer > 0 else n_all
    return tuple(il < min(kv_from_start, end) for il in range(n_all))


def _indexer_layers(hp: Hyperparameters, arch: str, n_layer: int, n_all: int) -> Layers | None:
    """The DSA indexer key cache: every trunk layer (DeepSeek-V3.2), or GLM-DSA's listed ones."""
    if arch == "deepseek32":
        return tuple(il < n_layer for il in range(n_all))
    if arch == "glm-dsa":
        listed = _per_layer(hp.indexer_types, n_all) or _glm_dsa_default_indexers(hp, n_all)
        return tuple(il < n_layer and bool(listed[il]) for il in range(n_all))
    return None


def _glm_dsa_default_indexers(hp: Hyperparameters, n_all: int) -> tuple[int, ...]:
    """GLM-5/5.1 files (trained context < 1M) index every layer; GLM-5.2's
    GLM_5_2_DEFAULT_INDEXER_TYPES indexes layers 0, 1, then every 4th up to 81."""
    if _int(hp.context_length) < 1048576:
        return (1,) * n_all
    return tuple(int(il < 2 or (il < 82 and (il - 2) % 4 == 0)) for il in range(n_all))


def _recurrent_dims(hp: Hyperparameters, arch: str, key_length: int) -> dict[str, int]:
    """The state dimensions each arch reads (an unread key stays 0 in llama.cpp)."""
    dims: dict[str, int] = {}
    if arch in _READS_SSM:
        dims.update(
            ssm_conv_kernel=_int(hp.ssm_conv_kernel),
            ssm_inner_size=_int(hp.ssm_inner_size),
            ssm_state_size=_int(hp.ssm_state_size),
        )
    if arch in _READS_SSM_GROUPS:
        dims["ssm_group_count"] = _int(hp.ssm_group_count)
    if arch.startswith(("rwkv", "arwkv")):
        dims.update(rwkv_head_size=_int(hp.wkv_head_size), token_shift_count=_int(hp.token_shift_count, 2))
    if arch in ("lfm2", "lfm2moe"):
        dims["shortconv_l_cache"] = _int(hp.shortconv_l_cache)
    if arch in _KDA:
        dims.update(ssm_conv_kernel=_int(hp.ssm_conv_kernel), kda_head_dim=_int(hp.kda_head_dim))
    if arch == "minimax-01":  # n_embd_head_la = n_embd_head_k_full
        dims["linear_attention_head_dim"] = key_length
    return dims
