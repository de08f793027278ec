"""The pure rules behind Generate under pressure (issue 8): restart policy,
batch size for quick cancels, retry hints. Properties, no I/O."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamagate.domain.admission import MAX_RETRY_S, MIN_RETRY_S, blend_duration, retry_after_s
from llamagate.domain.batching import (
    BATCH_STEP,
    CPU_PRIOR_BATCH,
    GPU_PRIOR_BATCH,
    MAX_BATCH,
    MIN_BATCH,
    PromptCost,
    PromptStep,
    batch_size,
    decode_budget_s,
    estimated_speed,
    learned_speed,
    step_speed,
)
from llamagate.domain.errors import InvalidArgument
from llamagate.domain.restart_policy import RestartPolicy, failures_in_a_row, restart_delay

speeds = st.floats(min_value=1e-3, max_value=1e7, allow_nan=False)
budgets = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)
policies = st.builds(
    lambda n, b, extra, stable: RestartPolicy(max_restarts=n, backoff_s=b, max_backoff_s=b + extra,
                                              stable_after_s=stable),
    st.integers(0, 50), st.floats(0, 60), st.floats(0, 600), st.floats(0, 3600),
)

# --- restart policy ----------------------------------------------------------


@given(policies, st.integers(1, 10_000))
def test_a_restart_waits_within_the_caps_and_never_past_max_restarts(policy, failures):
    delay = restart_delay(policy, failures)
    if failures > policy.max_restarts:
        assert delay is None
    else:
        assert delay is not None and policy.backoff_s <= delay <= policy.max_backoff_s


@given(policies, st.integers(1, 49))
def test_the_backoff_never_shrinks_as_failures_follow_each_other(policy, failures):
    now, then = restart_delay(policy, failures), restart_delay(policy, failures + 1)
    if then is not None:
        assert now is not None and then >= now


@given(policies, st.integers(0, 100), st.floats(0, 1e6))
def test_a_stable_run_resets_the_count_and_a_short_one_adds_to_it(policy, previous, served):
    count = failures_in_a_row(policy, previous, served)
    assert count == (1 if served >= policy.stable_after_s else previous + 1)


def test_restarts_off_never_restart():
    assert restart_delay(RestartPolicy(enabled=False), 1) is None


@pytest.mark.parametrize("bad", [{"max_restarts": -1}, {"backoff_s": -1.0}, {"backoff_s": math.nan},
                                 {"backoff_s": 5.0, "max_backoff_s": 1.0}, {"stable_after_s": math.inf}])
def test_a_nonsensical_policy_is_refused(bad):
    with pytest.raises(InvalidArgument):
        RestartPolicy(**bad)


# --- batch size ------------------------------------------------------------------


@given(st.one_of(st.none(), speeds, st.just(math.nan), st.just(-1.0)), budgets, st.booleans())
def test_the_batch_is_a_bounded_multiple_of_the_step(speed, budget, on_gpu):
    size = batch_size(speed, budget, on_gpu=on_gpu)
    assert MIN_BATCH <= size <= MAX_BATCH and size % BATCH_STEP == 0


@given(speeds, st.floats(0.01, 100.0))
def test_one_decode_of_the_batch_fits_the_budget_unless_the_floor_forbids(speed, budget):
    size = batch_size(speed, budget, on_gpu=False)
    assert size / speed <= budget * (1 + 1e-9) or size == MIN_BATCH


@given(speeds, speeds, st.floats(0.01, 10.0))
def test_a_faster_machine_never_gets_a_smaller_batch(slow, fast, budget):
    slow, fast = min(slow, fast), max(slow, fast)
    assert batch_size(slow, budget, on_gpu=False) <= batch_size(fast, budget, on_gpu=False)


def test_before_any_measurement_the_prior_of_the_device():
    assert batch_size(None, 0.4, on_gpu=False) == CPU_PRIOR_BATCH
    assert batch_size(None, 0.4, on_gpu=True) == GPU_PRIOR_BATCH


@given(st.floats(0.0, 1e4, allow_nan=False))
def test_two_decodes_of_the_budget_fit_the_cancel_bound(bound):
    assert 2 * decode_budget_s(bound) <= bound


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.floats(0, 1e7), st.floats(0, 1e7))
def test_a_step_speed_is_tokens_over_time_or_none(t0, t1, ms0, ms1):
    speed = step_speed(PromptStep(t0, ms0), PromptStep(t1, ms1))
    if t1 > t0 and ms1 > ms0:
        assert speed == pytest.approx((t1 - t0) * 1000 / (ms1 - ms0))
    else:
        assert speed is None


@given(st.one_of(st.none(), speeds), speeds, st.integers(0, 10**6), st.integers(1, 10**6))
def test_a_measurement_early_in_the_context_never_raises_the_speed(known, measured, position, slot):
    prior = 160.0
    learned = learned_speed(known, measured, position=position, slot_context=slot, prior=prior)
    early = position * 2 < slot
    ceiling = known if known is not None else prior
    if early:
        assert learned is None or learned <= ceiling * (1 + 1e-9)
    else:
        assert learned is not None and min(known or measured, measured) <= learned <= max(known or measured, measured)


def smollm2_cost(file_type: int | None = 3) -> PromptCost:
    return PromptCost(weights_bytes=98_362_432, file_type=file_type, layers=30, attention_width=9 * 64)


def test_the_estimate_for_smollm2_on_two_threads_is_below_what_this_cpu_measured():
    # Measured here (2-core AMD EPYC): 170-200 prompt tokens/s around 4,000 tokens in.
    speed = estimated_speed(smollm2_cost(), 4096, threads=2)
    assert speed is not None and 100 < speed < 170


@given(st.integers(0, 1 << 20), st.integers(0, 1 << 20), st.integers(1, 512))
def test_a_fuller_context_or_fewer_threads_never_estimate_faster(a, b, threads):
    near, far = sorted((a, b))
    cost = smollm2_cost()
    assert estimated_speed(cost, far, threads) <= estimated_speed(cost, near, threads)
    assert estimated_speed(cost, near, threads) <= estimated_speed(cost, near, threads + 1)


def test_a_mixture_of_experts_costs_what_its_active_experts_cost():
    dense = PromptCost(8 << 30, 15, 32, 4096)
    sparse = PromptCost(8 << 30, 15, 32, 4096, active_fraction=2 / 8)
    assert sparse.flops_per_token(0) == pytest.approx(dense.flops_per_token(0) / 4)


# --- retry hints -------------------------------------------------------------------


@given(st.floats(allow_nan=True), st.integers(-5, 10**6), st.integers(-5, 10**4))
def test_a_retry_hint_is_always_within_its_bounds(mean, waiting, slots):
    assert MIN_RETRY_S <= retry_after_s(mean, waiting, slots) <= MAX_RETRY_S


@given(st.floats(0.001, 1e3), st.integers(0, 1000), st.integers(1, 64))
def test_a_longer_queue_never_gets_a_shorter_hint(mean, waiting, slots):
    assert retry_after_s(mean, waiting + 1, slots) >= retry_after_s(mean, waiting, slots)


@given(st.floats(0, 1e4), st.floats(allow_nan=True, allow_infinity=True))
def test_the_running_mean_stays_between_the_old_mean_and_the_sample(mean, sample):
    after = blend_duration(mean, sample)
    if not math.isfinite(sample) or sample < 0:
        assert after == mean
    elif mean <= 0:
        assert after == sample
    else:
        assert min(mean, sample) <= after <= max(mean, sample)
