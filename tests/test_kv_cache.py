"""The KV-cache estimate's laws (hypothesis) and llama.cpp's rules on worked examples."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamagate.domain.gpus import MIB
from llamagate.domain.hyperparameters import Hyperparameters
from llamagate.domain.kv_cache import (
    ModelMemory,
    context_cells,
    is_quantized,
    kv_cache_bytes,
    row_bytes,
)
from llamagate.domain.load_options import KvCacheType
from llamagate.domain.model_shape import (
    ModelShape,
    shape_from_hyperparameters,
    swa_pattern,
)

QUANTIZED = [t for t in KvCacheType if is_quantized(t)]


@st.composite
def shapes(draw) -> ModelShape:
    """Any mix of full, sliding, MLA and recurrent layers llama.cpp can build."""
    n = draw(st.integers(1, 8))
    heads = draw(st.integers(1, 8))
    mla = draw(st.booleans())
    recurrent = draw(st.none() | st.lists(st.booleans(), min_size=n, max_size=n).map(tuple))
    return ModelShape(
        architecture="synthetic",
        block_count=n,
        embedding_length=heads * 64,
        head_count=heads,
        head_count_kv=1 if mla else draw(st.sampled_from([h for h in range(1, heads + 1) if heads % h == 0])),
        key_length=576 if mla else draw(st.sampled_from([32, 64, 128, 256])),
        value_length=512 if mla else draw(st.sampled_from([32, 64, 128, 256])),
        key_length_mla=192 if mla else 0,
        value_length_mla=128 if mla else 0,
        sliding_window=draw(st.sampled_from([0, 32, 128, 1024, 4096])),
        swa_layers=draw(st.lists(st.booleans(), min_size=n, max_size=n).map(tuple)),
        recurrent_layers=recurrent,
        ssm_conv_kernel=4 if recurrent else 0,
        ssm_inner_size=draw(st.sampled_from([256, 1024])) if recurrent else 0,
        ssm_state_size=128 if recurrent else 0,
        ssm_group_count=draw(st.integers(0, 8)) if recurrent else 0,
    )


contexts = st.integers(1, 65536)
slots = st.integers(1, 16)
cache_types = st.sampled_from(list(KvCacheType))


@given(shapes(), contexts, contexts, slots, st.booleans(), cache_types)
def test_kv_bytes_never_shrink_as_the_context_grows(shape, a, b, parallel, unified, cache_type):
    small, large = sorted((a, b))
    kw = dict(parallel=parallel, unified=unified, cache_type_k=cache_type, cache_type_v=cache_type)
    assert kv_cache_bytes(shape, context_length=small, **kw).total_bytes <= kv_cache_bytes(
        shape, context_length=large, **kw).total_bytes


@given(shapes(), st.integers(1, 16384), slots, slots, cache_types)
def test_kv_bytes_never_shrink_with_more_slots_of_the_same_context_each(shape, per_slot, a, b, cache_type):
    few, many = sorted((a, b))
    kw = dict(cache_type_k=cache_type, cache_type_v=cache_type)
    assert kv_cache_bytes(shape, context_length=per_slot * few, parallel=few, **kw).total_bytes <= kv_cache_bytes(
        shape, context_length=per_slot * many, parallel=many, **kw).total_bytes


@given(shapes(), contexts, slots, slots)
def test_a_unified_cache_never_shrinks_with_more_slots(shape, context, a, b):
    few, many = sorted((a, b))
    assert kv_cache_bytes(shape, context_length=context, parallel=few, unified=True).total_bytes <= kv_cache_bytes(
        shape, context_length=context, parallel=many, unified=True).total_bytes


def test_per_slot_caches_of_one_total_context_are_not_monotone_in_slots_because_llama_cpp_pads_each_slot():
    """-c 1024: 3 slots get 512 cells each (341 padded to 256s), 4 slots 256 each."""
    shape = ModelShape("llama", block_count=1, embedding_length=64, head_count=1)
    three, four = (kv_cache_bytes(shape, context_length=1024, parallel=p) for p in (3, 4))
    assert (three.cells * three.streams, four.cells * four.streams) == (1536, 1024)


@given(shapes(), contexts, slots, st.booleans(), st.sampled_from(QUANTIZED))
def test_a_quantized_cache_is_never_larger_than_f16(shape, context, parallel, unified, quantized):
    kw = dict(context_length=context, parallel=parallel, unified=unified)
    f16 = kv_cache_bytes(shape, **kw)
    q = kv_cache_bytes(shape, cache_type_k=quantized, cache_type_v=quantized, **kw)
    assert q.kv_bytes <= f16.kv_bytes
    assert q.recurrent_bytes == f16.recurrent_bytes  # recurrent state is always f32


@given(shapes(), contexts, slots)
def test_the_swa_cache_never_has_more_cells_than_the_full_one_and_recurrent_state_ignores_the_context(
        shape, context, parallel):
    est = kv_cache_bytes(shape, context_length=context, parallel=parallel)
    assert est.swa_cells <= context_cells(context, parallel, unified=False).n_ctx_seq
    longer = kv_cache_bytes(shape, context_length=context * 2, parallel=parallel)
    assert longer.recurrent_bytes == est.recurrent_bytes


@pytest.mark.parametrize(("cache_type", "bytes_per_32"), [
    ("f32", 128), ("f16", 64), ("bf16", 64), ("q8_0", 34), ("q5_1", 24), ("q5_0", 22), ("q4_1", 20),
    ("q4_0", 18), ("iq4_nl", 18)])
def test_each_cache_type_costs_its_true_ggml_row_size(cache_type, bytes_per_32):
    assert row_bytes(cache_type, 4096) == bytes_per_32 * 128


def test_llama_cpp_pads_the_context_to_256_and_splits_it_per_slot():
    assert context_cells(3000, 1, unified=False).n_ctx_seq == 3072
    assert context_cells(3000, 3, unified=False).n_ctx_seq == 1024
    assert context_cells(3000, 3, unified=True).n_ctx_seq == 3072
    assert context_cells(100, 1, unified=False).n_ubatch == 100  # the batch never exceeds the context


def test_full_attention_with_a_per_layer_kv_head_array():
    shape = ModelShape("llama", block_count=3, embedding_length=512, head_count=8, head_count_kv=(8, 2, 0),
                       key_length=64, value_length=64)
    est = kv_cache_bytes(shape, context_length=1024)
    assert est.k_bytes == est.v_bytes == (8 + 2 + 0) * 64 * 2 * 1024


def test_gemma_3_keeps_every_sixth_layer_global_and_the_rest_in_a_window_sized_cache():
    # Gemma-3 27B: 62 layers, 16 KV heads of 128, window 1024, no pattern key in the file
    hp = _hp(block_count=62, head_count=32, head_count_kv=16, embedding_length=5376,
             key_length=128, value_length=128, sliding_window=1024)
    shape = shape_from_hyperparameters(hp, "gemma3")
    assert shape.swa_layers[:6] == (True,) * 5 + (False,)
    est = kv_cache_bytes(shape, context_length=32768, parallel=2)
    row = 16 * 128 * 2
    assert (est.kv_layers, est.swa_layers, est.cells, est.swa_cells) == (10, 52, 16384, 1536)  # 1024 + 512 -> 1536
    assert est.k_bytes == 10 * row * 16384 * 2 and est.swa_k_bytes == 52 * row * 1536 * 2


def test_gpt_oss_alternates_sliding_and_full_layers():
    hp = _hp(block_count=24, head_count=64, head_count_kv=8, embedding_length=2880,
             key_length=64, value_length=64, sliding_window=128)
    est = kv_cache_bytes(shape_from_hyperparameters(hp, "gpt-oss"), context_length=131072)
    assert (est.kv_layers, est.swa_layers, est.swa_cells) == (12, 12, 768)  # 128 + 512 padded to 256s
    assert est.total_bytes == 12 * 8 * 64 * 2 * 2 * (131072 + 768)


def test_mla_caches_only_the_576_wide_latent_and_leaves_out_the_nextn_layer():
    # DeepSeek-V3: 61 trunk layers + 1 NextN block, kv_lora_rank 512 + rope 64
    hp = _hp(block_count=62, head_count=128, head_count_kv=1, embedding_length=7168,
             key_length=576, value_length=512, key_length_mla=192, value_length_mla=128,
             nextn_predict_layers=1, kv_lora_rank=512)
    est = kv_cache_bytes(shape_from_hyperparameters(hp, "deepseek2"), context_length=163840)
    assert (est.v_bytes, est.kv_layers) == (0, 61)
    assert est.k_bytes == 61 * 576 * 2 * 163840


def test_glm_5_2_without_indexer_types_indexes_the_layers_of_llama_cpp_default_table():
    hp = _hp(block_count=6, head_count=64, head_count_kv=1, embedding_length=6144,
             key_length=576, value_length=512, key_length_mla=256, value_length_mla=256,
             context_length=1048576, indexer_key_length=128)
    shape = shape_from_hyperparameters(hp, "glm-dsa")
    assert shape.indexer_layers == (True, True, True, False, False, False)
    est = kv_cache_bytes(shape, context_length=4096)
    assert est.indexer_bytes == 3 * 128 * 2 * 4096


def test_mla_refuses_different_k_and_v_types_like_llama_cpp():
    hp = _hp(block_count=2, head_count=1, head_count_kv=1, embedding_length=128,
             key_length=576, value_length=512, key_length_mla=192, value_length_mla=128)
    with pytest.raises(ValueError, match="same K and V"):
        kv_cache_bytes(shape_from_hyperparameters(hp, "deepseek2"), context_length=4096, cache_type_k="q8_0",
                       cache_type_v="f16")


def test_qwen3_next_caches_every_fourth_layer_and_keeps_delta_net_state_per_slot():
    hp = _hp(block_count=48, head_count=16, head_count_kv=2, embedding_length=2048,
             key_length=256, value_length=256, full_attention_interval=4, ssm_conv_kernel=4,
             ssm_inner_size=4096, ssm_state_size=128, ssm_group_count=16)
    est = kv_cache_bytes(shape_from_hyperparameters(hp, "qwen3next"), context_length=8192, parallel=4)
    assert (est.kv_layers, est.recurrent_layers, est.recurrent_rows) == (12, 36, 4)
    assert est.r_bytes == 36 * 4 * 3 * (4096 + 2 * 16 * 128) * 4
    assert est.s_bytes == 36 * 4 * 128 * 4096 * 4


def test_rollback_snapshots_multiply_recurrent_state_only_where_llama_cpp_supports_them():
    fields = dict(block_count=4, head_count=16, head_count_kv=[0, 0, 0, 2], embedding_length=2048, key_length=256,
                  value_length=256, full_attention_interval=4, ssm_conv_kernel=4, ssm_inner_size=4096,
                  ssm_state_size=128, ssm_group_count=16)
    for arch, factor in (("qwen35", 4), ("jamba", 1)):  # Qwen3.5 keeps n_rs_seq snapshots, Jamba is clamped to 0
        shape = shape_from_hyperparameters(_hp(**fields), arch)
        plain, drafted = (kv_cache_bytes(shape, context_length=4096, rollback_tokens=n) for n in (0, 3))
        assert drafted.recurrent_bytes == factor * plain.recurrent_bytes > 0
        assert drafted.kv_bytes == plain.kv_bytes


def test_nemotron_h_gives_the_mlp_only_layers_neither_cache():
    hp = _hp(block_count=4, head_count=8, head_count_kv=[0, 8, 0, 0], embedding_length=1024,
             key_length=128, value_length=128, ssm_conv_kernel=4, ssm_inner_size=2048,
             ssm_state_size=128, ssm_group_count=8, feed_forward_length=[0, 0, 4096, 0])
    shape = shape_from_hyperparameters(hp, "nemotron_h")
    assert shape.kv_layers == (False, True, False, False)
    assert shape.recurrent_layers == (True, False, False, True)


def test_a_listed_recurrent_layer_array_overrides_the_full_attention_interval():
    hp = _hp(block_count=4, head_count=16, head_count_kv=2, embedding_length=2048, full_attention_interval=4,
             recurrent_layers=[1, 0, 1, 0])
    shape = shape_from_hyperparameters(hp, "qwen35")
    assert shape.recurrent_layers == (True, False, True, False)
    assert shape.kv_layers == (False, True, False, True)


def test_llama4_without_a_window_key_slides_but_with_a_zero_window_does_not():
    """llama.cpp tells an absent attention.sliding_window from 0: absence is 8192, 0 turns SWA off."""
    base = dict(block_count=8, head_count=8, head_count_kv=2, embedding_length=1024)
    absent = shape_from_hyperparameters(_hp(**base), "llama4")
    zero = shape_from_hyperparameters(_hp(**base, sliding_window=0), "llama4")
    assert (absent.sliding_window, absent.swa_layers[:4]) == (8192, (True, True, True, False))
    assert (zero.sliding_window, zero.swa_layers) == (0, None)


def test_a_header_without_block_count_or_embedding_length_has_no_shape():
    with pytest.raises(ValueError, match="no block_count/embedding_length"):
        shape_from_hyperparameters(_hp(head_count=8, embedding_length=1024), "llama")


def test_without_key_lengths_the_head_size_falls_back_to_embedding_over_heads():
    shape = shape_from_hyperparameters(_hp(block_count=2, head_count=8, head_count_kv=2, embedding_length=1024),
                                       "llama")
    assert shape.head_k(0) == shape.head_v(1) == 128


def test_swa_pattern_mirrors_llama_cpp_set_swa_pattern():
    assert swa_pattern(6, 3) == (True, True, False, True, True, False)
    assert swa_pattern(4, 2, dense_first=True) == (False, True, False, True)
    assert swa_pattern(2, 0) == (True, True)


def test_a_quantized_v_cache_without_flash_attention_is_refused():
    shape = ModelShape("llama", block_count=1, embedding_length=128, head_count=1)
    with pytest.raises(ValueError, match="flash attention"):
        kv_cache_bytes(shape, context_length=256, cache_type_v="q8_0", flash_attn=False)


def test_a_vision_projector_is_counted_whole_on_top_of_weights_and_caches():
    kv = kv_cache_bytes(ModelShape("llama", block_count=1, embedding_length=64, head_count=1), context_length=256)
    memory = ModelMemory(weights_bytes=100 * MIB, kv=kv, projector_bytes=600 * MIB)
    assert memory.total_bytes == 700 * MIB + kv.total_bytes == 700 * MIB + 64 * 2 * 2 * 256


def _hp(**fields) -> Hyperparameters:
    """Hyperparameters as the inspector builds them from the scanner (lists become tuples)."""
    return Hyperparameters(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
