"""plan_load: the model's shape meets the memory there is."""

import pytest

from llamagate.domain.errors import InvalidArgument, InvalidModel
from llamagate.domain.gpus import MIB, GpuInfo
from llamagate.domain.hyperparameters import Hyperparameters
from llamagate.domain.load_options import KvCacheType, LoadOptions
from llamagate.domain.load_plan import check_plannable, plan_load
from llamagate.domain.model_facts import ModelFacts

HYPERPARAMETERS = Hyperparameters(block_count=4, embedding_length=320, head_count=8, head_count_kv=2,
                                  context_length=4096)  # head size 40: not a whole q8_0 block
FACTS = ModelFacts("/m.gguf", "llama", 4096, None, 50 * MIB, hyperparameters=HYPERPARAMETERS)


def test_options_no_plan_can_satisfy_are_refused_up_front():
    check_plannable(FACTS, LoadOptions())
    with pytest.raises(InvalidArgument, match="q8_0"):
        check_plannable(FACTS, LoadOptions(cache_type=KvCacheType.Q8_0))


def test_a_model_without_a_shape_is_loaded_unfitted_with_fit_on():
    facts = ModelFacts("/m.gguf", "mystery", 0, None, 50 * MIB, hyperparameters=Hyperparameters(head_count=8))
    result = plan_load(facts, LoadOptions(), [GpuInfo(0, 8000 * MIB)], 0)
    assert result.kv is None and not result.plan.offload_all and result.plan.context_length == 4096
    assert "no block_count" in result.plan.reasons[0]
    check_plannable(facts, LoadOptions(cache_type=KvCacheType.Q8_0))  # nothing to check against


def test_the_plan_estimates_the_kv_cache_from_the_hyperparameters():
    result = plan_load(FACTS, LoadOptions(context_length=1024), [], 16 << 30)
    assert result.kv.total_bytes == 4 * 2 * (2 * 40) * 2 * 1024  # layers x K,V x kv heads x head size x f16 x cells


@pytest.mark.parametrize("plan", [
    lambda facts: plan_load(facts, LoadOptions(), [GpuInfo(0, 8000 * MIB)], 0),
    lambda facts: check_plannable(facts, LoadOptions()),
])
def test_hyperparameters_out_of_bounds_refuse_the_model_rather_than_going_unestimated(plan):
    """Defect 16: out of bounds is InvalidModel, even where a missing essential would be "no estimate"."""
    hostile = Hyperparameters(block_count=16_777_246, head_count=8)  # and no embedding_length
    facts = ModelFacts("/m.gguf", "llama", 4096, None, 50 * MIB, hyperparameters=hostile)
    with pytest.raises(InvalidModel, match="llama.block_count = 16777246"):
        plan(facts)


def test_the_vision_projector_counts_as_weights():
    with_projector = plan_load(FACTS, LoadOptions(), [], 16 << 30, projector_bytes=7 * MIB)
    assert with_projector.plan.weights_bytes == 57 * MIB
    assert with_projector.kv.total_bytes == with_projector.plan.kv_bytes
