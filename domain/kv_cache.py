"""KV-cache and recurrent-state bytes, computed the way llama-server allocates them.

Mirrors, for the llama.cpp version we run:
  - ``llama_context::llama_context``: n_ctx padded to 256, per-slot n_ctx_seq,
    n_batch/n_ubatch clamped by the context;
  - ``llama_kv_cache::llama_kv_cache``: one K (and, without MLA, one V) tensor
    per cached layer of ``row_size(type, n_embd_head * n_head_kv) x cells x streams``,
    streams = 1 when unified, else one per slot; V padded to the widest layer
    when flash attention is off (V transposed);
  - ``llama_kv_cache_iswa``: SWA layers get
    ``GGML_PAD(min(cells, window x (unified ? slots : 1) + n_ubatch), 256)`` cells;
  - ``llama_memory_recurrent``: f32 R (conv/shift) and S (SSM/WKV) rows,
    ``max(1, slots) x (1 + n_rs_seq)`` per recurrent layer;
  - ``llama_kv_cache_dsa``: a K-only indexer cache beside the MLA cache.
Which layers slide, recur or cache is decided in ``domain.model_shape``.
"""

from __future__ import annotations

from dataclasses import dataclass

from llamagate.domain.load_options import KvCacheType
from llamagate.domain.model_shape import ModelShape

# ggml type traits: (bytes per block, elements per block)
_BLOCK: dict[KvCacheType, tuple[int, int]] = {
    KvCacheType.F32: (4, 1),
    KvCacheType.F16: (2, 1),
    KvCacheType.BF16: (2, 1),
    KvCacheType.Q8_0: (34, 32),
    KvCacheType.Q5_1: (24, 32),
    KvCacheType.Q5_0: (22, 32),
    KvCacheType.Q4_1: (20, 32),
    KvCacheType.Q4_0: (18, 32),
    KvCacheType.IQ4_NL: (18, 32),
}
_PAD = 256  # llama_context pads n_ctx (and the SWA cache) to 256 cells
_F32 = 4  # recurrent states are always f32


def row_bytes(cache_type: KvCacheType | str, n: int) -> int:
    """``ggml_row_size``: bytes of one row of ``n`` elements."""
    size, block = _BLOCK[KvCacheType(cache_type)]
    if n % block:
        raise ValueError(f"{KvCacheType(cache_type).value} rows must be a multiple of {block} elements, not {n}")
    return size * n // block


def is_quantized(cache_type: KvCacheType | str) -> bool:
    return _BLOCK[KvCacheType(cache_type)][1] > 1


def _pad(n: int, to: int = _PAD) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class KvEstimate:
    """Bytes per part (tensor bytes, as llama.cpp's "size = ..." log lines count them)."""

    k_bytes: int  # the full-attention (non-SWA) cache
    v_bytes: int
    swa_k_bytes: int
    swa_v_bytes: int
    indexer_bytes: int  # DSA lightning-indexer keys
    r_bytes: int  # recurrent conv / token-shift state
    s_bytes: int  # recurrent SSM / WKV state
    n_ctx: int  # the context llama.cpp settles on (padded)
    cells: int  # cells per stream of the full-attention cache (n_ctx_seq)
    swa_cells: int
    streams: int  # 1 when unified, else one per slot
    recurrent_rows: int  # state rows per recurrent layer: max(1, slots) x (1 + n_rs_seq)
    kv_layers: int
    swa_layers: int
    recurrent_layers: int
    exact: bool
    explanation: str

    @property
    def kv_bytes(self) -> int:
        return self.k_bytes + self.v_bytes + self.swa_k_bytes + self.swa_v_bytes + self.indexer_bytes

    @property
    def recurrent_bytes(self) -> int:
        return self.r_bytes + self.s_bytes

    @property
    def total_bytes(self) -> int:
        return self.kv_bytes + self.recurrent_bytes


@dataclass(frozen=True)
class ModelMemory:
    """What a load needs besides compute buffers: weights, vision projector, caches."""

    weights_bytes: int
    kv: KvEstimate
    projector_bytes: int = 0  # the mmproj file's size: it is loaded whole

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.projector_bytes + self.kv.total_bytes


@dataclass(frozen=True)
class ContextCells:
    """What llama_context settles on: n_ctx (padded), cells per slot stream, micro-batch."""

    n_ctx: int
    n_ctx_seq: int
    n_ubatch: int


def context_cells(
    context_length: int, parallel: int, *, unified: bool, n_batch: int = 2048, n_ubatch: int = 512
) -> ContextCells:
    """``llama_context``'s n_ctx / n_ctx_seq / n_ubatch for a requested context."""
    batch = min(context_length, n_batch)  # causal attention: a batch never exceeds the context
    ubatch = min(batch, n_ubatch or batch)
    n_ctx = _pad(context_length)
    if unified:
        return ContextCells(n_ctx, n_ctx, ubatch)
    n_ctx_seq = _pad(n_ctx // parallel)  # then n_ctx is rounded to n_ctx_seq x slots
    if n_ctx_seq == 0:
        raise ValueError(f"a context of {context_length} cannot be split over {parallel} slots")
    return ContextCells(n_ctx_seq * parallel, n_ctx_seq, ubatch)


def kv_cache_bytes(
    shape: ModelShape,
    *,
    context_length: int,
    parallel: int = 1,
    cache_type_k: KvCacheType | str = KvCacheType.F16,
    cache_type_v: KvCacheType | str = KvCacheType.F16,
    unified: bool = False,
    n_batch: int = 2048,
    n_ubatch: int = 512,
    flash_attn: bool = True,
    swa_full: bool = False,
    rollback_tokens: int = 0,
) -> KvEstimate:
    """The caches llama-server allocates for ``shape`` with ``-c context_length
    --parallel parallel`` (0 = the trained context).

    The defaults are llama-server's when it is given ``--parallel`` explicitly
    (as llamagate does): one stream per slot (``--kv-unified`` off), n_batch
    2048, n_ubatch 512, no full-size SWA cache, no recurrent rollback
    snapshots (``rollback_tokens`` is n_rs_seq, set only by MTP-style drafts).
    Raises ValueError where llama.cpp refuses the combination.
    """
    type_k, type_v = KvCacheType(cache_type_k), KvCacheType(cache_type_v)
    _check(shape, type_k, type_v, flash_attn, parallel)
    requested = context_length or shape.context_length
    if requested <= 0:
        raise ValueError("no context length: none requested and the model declares none")
    ctx = context_cells(requested, parallel, unified=unified, n_batch=n_batch, n_ubatch=n_ubatch)
    streams = 1 if unified else parallel
    swa = shape.sliding_window > 0 and any(shape.is_swa(il) for il in range(shape.block_count))
    swa_cells = 0
    if swa:
        swa_cells = ctx.n_ctx_seq if swa_full else _pad(
            min(ctx.n_ctx_seq, shape.sliding_window * (parallel if unified else 1) + ctx.n_ubatch))
    full = [il for il in range(shape.block_count) if shape.has_kv(il) and not (swa and shape.is_swa(il))]
    sliding = [il for il in range(shape.block_count) if shape.has_kv(il) and swa and shape.is_swa(il)]
    v_pad = None if flash_attn else max(_v_width(shape, il) for il in range(shape.block_count))
    k, v = _kv(shape, full, type_k, type_v, v_pad, ctx.n_ctx_seq * streams)
    swa_k, swa_v = _kv(shape, sliding, type_k, type_v, v_pad, swa_cells * streams)
    indexer = _indexer(shape, type_k, ctx.n_ctx_seq * streams)
    rows = max(1, parallel) * (1 + (rollback_tokens if shape.rollback else 0))  # llama_context clamps n_rs_seq
    recurrent = [il for il in range(shape.block_count - shape.nextn_layers) if shape.is_recurrent(il)]
    r = len(recurrent) * _F32 * n_embd_r(shape) * rows
    s = len(recurrent) * _F32 * n_embd_s(shape) * rows
    return KvEstimate(
        k_bytes=k, v_bytes=v, swa_k_bytes=swa_k, swa_v_bytes=swa_v, indexer_bytes=indexer,
        r_bytes=r, s_bytes=s, n_ctx=ctx.n_ctx, cells=ctx.n_ctx_seq if full or sliding else 0, swa_cells=swa_cells,
        streams=streams, recurrent_rows=rows if recurrent else 0, kv_layers=len(full), swa_layers=len(sliding),
        recurrent_layers=len(recurrent), exact=shape.exact,
        explanation=_explain(shape, ctx.n_ctx_seq, swa_cells, streams, full, sliding, recurrent, rows, type_k, type_v),
    )


def _check(shape: ModelShape, type_k: KvCacheType, type_v: KvCacheType, flash_attn: bool, parallel: int) -> None:
    """The refusals of ``llama_init_from_model``."""
    if parallel < 1:
        raise ValueError("parallel must be at least 1")
    if shape.is_mla and type_k != type_v:
        raise ValueError(f"{shape.architecture} (MLA) needs the same K and V cache types")
    if is_quantized(type_v) and not flash_attn:
        raise ValueError("a quantized V cache requires flash attention")
    for il in range(shape.block_count - shape.nextn_layers):
        for kind, cache_type, width in (("K", type_k, shape.head_k(il)), ("V", type_v, shape.head_v(il))):
            block = _BLOCK[cache_type][1]
            if (flash_attn or kind == "K") and width % block:
                raise ValueError(
                    f"{kind} cache type {cache_type.value} needs head sizes in blocks of {block}, not {width}")


def _v_width(shape: ModelShape, il: int) -> int:
    return shape.head_v(il) * shape.heads_kv(il)


def _kv(shape: ModelShape, layers: list[int], type_k: KvCacheType, type_v: KvCacheType,
        v_pad: int | None, rows: int) -> tuple[int, int]:
    """K and V bytes of one ``llama_kv_cache`` over ``layers`` (rows = cells x streams)."""
    k = sum(row_bytes(type_k, shape.head_k(il) * shape.heads_kv(il)) for il in layers) * rows
    if shape.is_mla:  # MLA caches the compressed latent in K alone
        return k, 0
    v = sum(row_bytes(type_v, _v_width(shape, il) if v_pad is None else v_pad) for il in layers) * rows
    return k, v


def _indexer(shape: ModelShape, type_k: KvCacheType, rows: int) -> int:
    """``llama_kv_cache_dsa``'s indexer cache: one K head of the indexer key length."""
    if not shape.indexer_layers or not shape.indexer_key_length:
        return 0
    layers = sum(1 for il, on in enumerate(shape.indexer_layers) if on and shape.has_kv(il))
    return layers * row_bytes(type_k, shape.indexer_key_length) * rows


def n_embd_r(shape: ModelShape) -> int:
    """``llama_hparams::n_embd_r``: the rolling conv / token-shift state per row."""
    if shape.rwkv_head_size:
        return shape.token_shift_count * shape.embedding_length
    if shape.shortconv_l_cache:
        return shape.embedding_length * (shape.shortconv_l_cache - 1)
    if shape.kda_head_dim:
        return 3 * (shape.ssm_conv_kernel - 1 if shape.ssm_conv_kernel > 0 else 3) * shape.heads(0) * shape.kda_head_dim
    conv = shape.ssm_conv_kernel - 1 if shape.ssm_conv_kernel > 0 else 0
    return conv * (shape.ssm_inner_size + 2 * shape.ssm_group_count * shape.ssm_state_size)


def n_embd_s(shape: ModelShape) -> int:
    """``llama_hparams::n_embd_s``: the recurrent state per row."""
    if shape.rwkv_head_size:
        return shape.embedding_length * shape.rwkv_head_size
    if shape.kda_head_dim:
        return shape.kda_head_dim * shape.kda_head_dim * shape.heads(0)
    if shape.linear_attention_head_dim:
        return shape.linear_attention_head_dim ** 2 * shape.heads(0)
    return shape.ssm_state_size * shape.ssm_inner_size


def _explain(shape: ModelShape, cells: int, swa_cells: int, streams: int, full: list[int], sliding: list[int],
             recurrent: list[int], rows: int, type_k: KvCacheType, type_v: KvCacheType) -> str:
    v = "no V (MLA latent in K)" if shape.is_mla else f"V {type_v.value}"
    parts = [f"{shape.architecture}: no KV cache" if not (full or sliding) else
             f"{shape.architecture}: {len(full)} attention layer(s) x {cells} cells x {streams} stream(s), "
             f"K {type_k.value}, {v}"]
    if sliding:
        parts.append(f"{len(sliding)} SWA layer(s) x {swa_cells} cells (window {shape.sliding_window})")
    if shape.indexer_key_length and shape.indexer_layers:
        parts.append(f"indexer keys of {shape.indexer_key_length}")
    if recurrent:
        parts.append(f"{len(recurrent)} recurrent layer(s) x {rows} f32 state row(s)")
    if not shape.exact:
        parts.append(shape.note or "approximate")
    return "; ".join(parts)
