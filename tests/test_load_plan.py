"""plan_load: the model's shape meets the memory there is."""

import pytest

from llamagate.domain.errors import InvalidArgument
from llamagate.domain.gpus import MIB, GpuInfo
from llamagate.domain.load_plan import check_plannable, plan_load
from llamagate.domain.model import KvCacheType, LoadOptions, ModelFacts
from llamagate.domain.model_shape import ModelShape

SHAPE = ModelShape(architecture="llama", block_count=4, embedding_length=320, head_count=8, head_count_kv=2,
                   context_length=4096)  # head size 40: not a whole q8_0 block
FACTS = ModelFacts("/m.gguf", "llama", 4096, None, 50 * MIB, shape=SHAPE)


def test_options_no_plan_can_satisfy_are_refused_up_front():
    check_plannable(FACTS, LoadOptions())
    with pytest.raises(InvalidArgument, match="q8_0"):
        check_plannable(FACTS, LoadOptions(cache_type=KvCacheType.Q8_0))


def test_a_model_without_a_shape_is_loaded_unfitted_with_fit_on():
    facts = ModelFacts("/m.gguf", "mystery", 0, None, 50 * MIB, shape_error="no block_count")
    result = plan_load(facts, LoadOptions(), [GpuInfo(0, 8000 * MIB)], 0)
    assert result.kv is None and not result.plan.offload_all and result.plan.context_length == 4096
    assert "no block_count" in result.plan.reasons[0]


def test_the_vision_projector_counts_as_weights():
    with_projector = plan_load(FACTS, LoadOptions(), [], 16 << 30, projector_bytes=7 * MIB)
    assert with_projector.plan.weights_bytes == 57 * MIB
    assert with_projector.kv.total_bytes == with_projector.plan.kv_bytes
