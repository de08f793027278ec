"""Placement and eviction laws (domain/placement.py), with the real planner as the judge."""

from __future__ import annotations

from fakes import model_facts
from hypothesis import given
from hypothesis import strategies as st

from llamagate.domain.gpus import MIB, GpuInfo
from llamagate.domain.load_options import LoadOptions
from llamagate.domain.load_plan import plan_load
from llamagate.domain.placement import (
    HOST,
    Footprint,
    Resident,
    describe_evictions,
    evictions,
    footprint,
    gpu,
    total,
    with_freed,
)
from llamagate.domain.planning import GpuShare, Plan

GIB = 1 << 30
DEVICES = [HOST, gpu(0), gpu(1)]

residents_strategy = st.lists(
    st.builds(
        Resident,
        id=st.text("abcdefgh", min_size=1, max_size=4),
        held=st.dictionaries(st.sampled_from(DEVICES), st.integers(0, 8 * GIB), min_size=1),
        last_used=st.floats(0, 1000, allow_nan=False),
        in_flight=st.integers(0, 2),
        pinned=st.booleans(),
    ),
    max_size=8,
    unique_by=lambda r: r.id,
)
need_strategy = st.dictionaries(st.sampled_from(DEVICES), st.integers(0, 24 * GIB), min_size=1)
free_strategy = st.dictionaries(st.sampled_from(DEVICES), st.integers(0, 8 * GIB))


def fits_rule(need: Footprint, free: Footprint):
    """A load needing ``need`` fits when each device has that much free (monotonic, as the planner is)."""
    def fits(freed: Footprint) -> bool:
        return all(free.get(d, 0) + freed.get(d, 0) >= n for d, n in need.items())
    return fits


@given(residents_strategy, need_strategy, free_strategy)
def test_eviction_frees_enough_never_more_than_needed_and_never_a_busy_or_pinned_model(residents, need, free):
    fits = fits_rule(need, free)
    chosen = evictions(residents, fits)
    if chosen is None:  # only when even every idle, unpinned model together would not do
        assert not fits(total(r.held for r in residents if r.evictable))
        return
    assert all(r.evictable for r in chosen)
    assert len({r.id for r in chosen}) == len(chosen)
    assert fits(total(r.held for r in chosen))
    for spared in chosen:  # each one evicted was needed
        assert not fits(total(r.held for r in chosen if r is not spared))
    if fits({}):
        assert chosen == ()


@given(residents_strategy)
def test_the_least_recently_used_idle_model_goes_first(residents):
    idle = sorted((r for r in residents if r.evictable), key=lambda r: (r.last_used, r.id))
    if not idle:
        return
    oldest = idle[0]
    need = {d: n for d, n in oldest.held.items() if n > 0} or {HOST: 0}

    def fits(freed: Footprint) -> bool:  # exactly the oldest one's memory is needed
        return all(freed.get(d, 0) >= n for d, n in need.items()) and any(freed.values()) or not any(need.values())

    chosen = evictions(residents, fits)
    if any(need.values()):
        assert chosen is not None and chosen[0] == oldest and len(chosen) == 1


def test_footprint_is_each_gpu_share_or_system_memory_plus_the_prompt_cache():
    share = GpuShare(0, 10 * GIB, 9 * GIB, 4 * GIB, 1 * GIB, 512 * MIB)
    on_gpu = Plan(4096, (0,), True, True, 4 * GIB, 1 * GIB, (share,), 4096, ())
    assert footprint(on_gpu, 256 * MIB) == {gpu(0): 4 * GIB + 1 * GIB + 512 * MIB, HOST: 256 * MIB}
    on_cpu = Plan(4096, (), False, True, 2 * GIB, 1 * GIB, (), 4096, ())
    assert footprint(on_cpu, 256 * MIB) == {HOST: 3 * GIB + 256 * MIB}


def test_evicting_with_simulated_gpus_lets_the_planner_place_the_model():
    """Three 8 GiB GPUs-worth of models on two GPUs: the planner, told what an
    eviction frees, decides; only the needed model goes."""
    facts = model_facts("/m/big.gguf", size=6 * GIB, context=4096)
    gpus = [GpuInfo(0, 1 * GIB), GpuInfo(1, 2 * GIB)]
    residents = [
        Resident("old", {gpu(0): 7 * GIB}, last_used=1.0),
        Resident("busy", {gpu(1): 6 * GIB}, last_used=0.5, in_flight=1),
        Resident("pinned", {gpu(1): 6 * GIB}, last_used=0.1, pinned=True),
        Resident("recent", {gpu(0): 1 * GIB}, last_used=9.0),
    ]

    def fits(freed: Footprint) -> bool:
        after, host = with_freed(gpus, 0, freed)
        return plan_load(facts, LoadOptions(), after, host, simulated=True).plan.fits

    chosen = evictions(residents, fits)
    assert chosen is not None and [r.id for r in chosen] == ["old"]
    assert "old" in describe_evictions(chosen)
    too_big = model_facts("/m/huge.gguf", size=40 * GIB, context=4096)
    assert evictions(residents, lambda freed: plan_load(too_big, LoadOptions(), *with_freed(gpus, 0, freed),
                                                        simulated=True).plan.fits) is None
