"""Context fitting and GPU selection (SPEC §5, §6): laws and the policies."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from llamagate.domain.gpus import MIB, GpuInfo
from llamagate.domain.planning import (
    CONTEXT_STEP,
    budget,
    ceiling_context,
    context_floor,
    fit_context,
    make_plan,
    plan_automatic,
    plan_explicit,
    select_gpus,
)

GIB = 1 << 30


def linear_kv(bytes_per_token: int):
    return lambda context: context * bytes_per_token


kv_rates = st.integers(1_000, 400_000)  # bytes per token: tiny models to 70B-class f16
contexts = st.integers(1, 262_144)
sizes = st.integers(0, 200 * GIB)
gpu_lists = st.lists(st.integers(0, 96 * 1024), max_size=6).map(
    lambda mib: [GpuInfo(i, m * MIB) for i, m in enumerate(mib)])


@given(budget_bytes=sizes, weights=sizes, rate=kv_rates, requested=contexts)
def test_a_fitted_context_never_exceeds_the_request_and_fits_when_it_says_so(budget_bytes, weights, rate, requested):
    kv = linear_kv(rate)
    context, fits = fit_context(budget_bytes, weights, kv, requested)

    assert context <= requested
    assert context >= context_floor(requested) or context == requested
    if fits:
        assert weights + kv(context) <= budget_bytes
        assert context == requested or context % CONTEXT_STEP == 0 or context == context_floor(requested)


@given(small=sizes, extra=sizes, weights=sizes, rate=kv_rates, requested=contexts)
def test_more_memory_never_means_less_context(small, extra, weights, rate, requested):
    kv = linear_kv(rate)
    context_small, fits_small = fit_context(small, weights, kv, requested)
    context_big, fits_big = fit_context(small + extra, weights, kv, requested)
    assert fits_big >= fits_small
    if fits_small:
        assert context_big >= context_small


@given(gpus=gpu_lists, need=sizes)
def test_selection_never_claims_a_fit_the_budgets_do_not_cover(gpus, need):
    chosen = select_gpus(gpus, need)
    if chosen:
        assert budget([g.free_bytes for g in chosen]) >= need
        assert len({g.index for g in chosen}) == len(chosen)
    else:
        assert budget([g.free_bytes for g in gpus]) < need or not gpus


@given(gpus=gpu_lists, weights=sizes, rate=kv_rates, context=contexts)
def test_an_explicit_context_is_always_honoured(gpus, weights, rate, context):
    plan = plan_explicit(gpus, weights, linear_kv(rate), context)
    assert plan.context_length == context
    if plan.fits:
        assert budget([g.free_bytes for g in gpus if g.index in plan.gpus]) >= weights + plan.kv_bytes
        assert plan.offload_all and sum(s.weights_bytes for s in plan.shares) <= weights
    else:
        assert plan.gpus == () and not plan.offload_all


@given(gpus=gpu_lists, weights=sizes, rate=kv_rates, native=contexts)
def test_automatic_context_prefers_fewer_gpus_and_fits_what_it_claims(gpus, weights, rate, native):
    kv = linear_kv(rate)
    plan = plan_automatic(gpus, weights, kv, native)
    if plan.fits:
        assert budget([g.free_bytes for g in gpus if g.index in plan.gpus]) >= weights + kv(plan.context_length)
        fewer = sorted(gpus, key=lambda g: -g.free_bytes)[: len(plan.gpus) - 1]
        assert not fit_context(budget([g.free_bytes for g in fewer]), weights, kv, native)[1] or not fewer
    else:
        assert plan.context_length == context_floor(native) and not plan.offload_all
    assert plan.context_length <= ceiling_context(gpus, weights, kv, native) or not plan.fits


def test_prefers_one_gpu_with_less_context_over_two_with_native():
    gpus = [GpuInfo(0, 24 * GIB), GpuInfo(1, 24 * GIB)]
    plan = plan_automatic(gpus, 16 * GIB, linear_kv(128 * 1024), 131072)
    assert plan.gpus == (0,) and plan.fits
    assert 4096 <= plan.context_length < 131072 and plan.context_length % 256 == 0
    assert any("fewest GPUs" in r for r in plan.reasons)
    ceiling = ceiling_context(gpus, 16 * GIB, linear_kv(128 * 1024), 131072)
    assert ceiling > plan.context_length  # two GPUs would hold more


def test_explicit_context_spreads_over_as_many_gpus_as_it_needs():
    gpus = [GpuInfo(0, 24 * GIB), GpuInfo(1, 20 * GIB), GpuInfo(2, 8 * GIB)]
    plan = plan_explicit(gpus, 30 * GIB, linear_kv(64 * 1024), 65536)  # 34 GiB needed
    assert plan.gpus == (0, 1) and plan.fits and plan.offload_all
    assert [s.index for s in plan.shares] == [0, 1]
    assert all(s.reserve_bytes == s.free_bytes - s.budget_bytes for s in plan.shares)


def test_nothing_fits_falls_back_to_fit_on():
    plan = make_plan([GpuInfo(0, 8 * GIB)], 0, 40 * GIB, linear_kv(1024), 0, 32768)
    assert (plan.context_length, plan.gpus, plan.offload_all, plan.fits) == (4096, (), False, False)
    assert plan.ceiling_context == 4096


def test_without_gpus_the_plan_runs_on_the_cpu_in_system_memory():
    plan = make_plan([], 16 * GIB, 100 * MIB, linear_kv(30_000), 0, 8192)
    assert (plan.context_length, plan.gpus, plan.fits) == (8192, (), True)
    assert any("CPU" in r for r in plan.reasons)
    tight = make_plan([], 1 * GIB, 100 * MIB, linear_kv(150_000), 0, 8192)
    assert tight.fits and tight.context_length < 8192


@given(requested=contexts, rate=kv_rates)
def test_floor_is_returned_when_not_even_it_fits(requested, rate):
    assume(requested > 1)
    context, fits = fit_context(10 * GIB + 1, 10 * GIB, linear_kv(rate), requested)
    assert not fits and context == context_floor(requested)


@given(gpus=gpu_lists, weights=sizes, rate=kv_rates, native=st.integers(257, 262_144))
def test_defect_15_an_automatic_context_is_the_native_one_or_a_multiple_of_256_never_below_the_floor(
        gpus, weights, rate, native):
    """What the README says: the native context when it fits (unrounded), else
    the largest multiple of 256 that fits, never below min(4096, native)."""
    plan = make_plan(gpus, 16 * GIB, weights, linear_kv(rate), 0, native)
    context = plan.context_length
    assert context == native or context % CONTEXT_STEP == 0 or context == context_floor(native)
    assert context_floor(native) <= context <= native
    if plan.fits and context != native:
        assert weights + linear_kv(rate)(context + CONTEXT_STEP) > budget(
            [g.free_bytes for g in gpus if g.index in plan.gpus] or [16 * GIB])


def test_defect_15_a_native_context_that_fits_is_kept_even_when_not_a_multiple_of_256():
    plan = make_plan([], 16 * GIB, 100 * MIB, linear_kv(1000), 0, 5000)
    assert (plan.context_length, plan.fits) == (5000, True)
