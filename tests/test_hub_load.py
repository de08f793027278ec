"""The rules of loading from the Hub before any weight is fetched (domain/hub_load.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamagate.domain.errors import InsufficientResources, InvalidModel, ModelNotFound
from llamagate.domain.gpus import GpuInfo
from llamagate.domain.hub import HubFile, HubListing
from llamagate.domain.hub_load import (
    FIRST_HEADER_READ,
    MAX_HEADER_BYTES,
    choose_for_disk,
    fallback_note,
    memory_shortfall,
    next_read_end,
    plan_for_disk,
)
from llamagate.domain.planning import Plan

MB = 1_000_000
LISTING = HubListing("org/Model-GGUF", "c0ffee" * 6 + "abcd", (
    HubFile("Model-Q8_0.gguf", 800 * MB, "a" * 64),
    HubFile("Model-Q4_K_M.gguf", 500 * MB, "b" * 64),
    HubFile("Model-Q2_K.gguf", 300 * MB, "c" * 64),
    HubFile("BF16/Model-BF16-00001-of-00002.gguf", 900 * MB, "d" * 64),
    HubFile("BF16/Model-BF16-00002-of-00002.gguf", 700 * MB, "e" * 64),
    HubFile("mmproj-Model-f16.gguf", 50 * MB, "f" * 64),
))


# -- the header's range reads ---------------------------------------------------------


def test_the_first_read_is_one_mib_or_the_whole_small_file():
    assert next_read_end(0, 0, 10 << 30) == FIRST_HEADER_READ
    assert next_read_end(0, 0, 4096) == 4096


@given(have=st.integers(1, MAX_HEADER_BYTES // 2), at_least=st.integers(1, MAX_HEADER_BYTES // 2),
       size=st.integers(1, 1 << 40))
def test_each_read_at_least_doubles_covers_the_ask_and_stays_in_the_file(have, at_least, size):
    end = next_read_end(have, at_least, size)
    assert end <= size and end <= MAX_HEADER_BYTES
    if have < size:
        assert end > have
    assert end >= min(have + at_least, size, MAX_HEADER_BYTES)
    assert end >= min(2 * have, size, MAX_HEADER_BYTES)
    assert end <= max(2 * have, have + at_least)  # never more than needed to double


@given(header=st.integers(FIRST_HEADER_READ // 2 + 1, MAX_HEADER_BYTES), extra=st.integers(0, 1 << 34))
def test_reading_a_header_this_way_fetches_at_most_twice_it(header, extra):
    """The scanner asks for at least one more byte until it holds the header."""
    have, reads = 0, 0
    while have < header:
        have = next_read_end(have, header - have if have else 0, header + extra)
        reads += 1
    assert have <= 2 * header
    assert reads <= max(1, (header // FIRST_HEADER_READ).bit_length() + 1)


def test_a_header_claiming_more_than_the_cap_is_refused():
    with pytest.raises(InvalidModel, match="MiB"):
        next_read_end(1 << 20, MAX_HEADER_BYTES, 1 << 40)


# -- the disk preflight -------------------------------------------------------------


def test_the_variant_asked_for_is_taken_when_it_fits():
    model = choose_for_disk(LISTING, "Q8_0", {}, 10_000 * MB, "/cache")
    assert model.selection.variant == "Q8_0" and not model.fallback_from
    assert model.bytes_to_download == 850 * MB  # the projector comes along
    assert fallback_note(model) == ""


def test_the_smallest_variant_that_fits_is_taken_instead_and_says_so():
    model = choose_for_disk(LISTING, "BF16", {}, 600 * MB, "/cache")
    assert model.selection.variant == "Q2_K"
    assert model.fallback_from == "BF16" and model.requested_variant == "BF16"
    note = fallback_note(model)
    assert "BF16" in note and "Q2_K" in note and "/cache" in note


def test_what_the_cache_holds_is_subtracted():
    cached = {"BF16/Model-BF16-00001-of-00002.gguf": 900 * MB, "mmproj-Model-f16.gguf": 50 * MB}
    model = choose_for_disk(LISTING, "BF16", cached, 700 * MB, "/cache")
    assert model.selection.variant == "BF16"
    assert (model.bytes_to_download, model.bytes_cached) == (700 * MB, 950 * MB)
    assert [f.path for f in model.selection.model_files] == [
        "BF16/Model-BF16-00001-of-00002.gguf", "BF16/Model-BF16-00002-of-00002.gguf"]


def test_no_variant_fitting_is_disk_full_with_the_numbers_and_the_directory():
    with pytest.raises(InsufficientResources) as caught:
        choose_for_disk(LISTING, "Q4_K_M", {}, 100 * MB, "/srv/hf")
    error = caught.value
    assert error.reason == "DISK_FULL" and error.where == "/srv/hf"
    assert (error.needed, error.available) == (550 * MB, 100 * MB)
    assert "/srv/hf" in str(error) and "95.4 MiB free" in str(error)


def test_an_absent_variant_is_not_found_even_when_the_disk_is_small():
    with pytest.raises(ModelNotFound, match="Q5_K_M"):
        choose_for_disk(LISTING, "Q5_K_M", {}, 1, "/cache")


def test_planning_reports_the_variant_asked_for_and_whether_it_fits():
    model = plan_for_disk(LISTING, "Q8_0", {}, 100 * MB, "/cache")
    assert model.selection.variant == "Q8_0" and not model.fits_disk
    assert plan_for_disk(LISTING, "Q8_0", {}, 10_000 * MB, "/cache").fits_disk


@given(free=st.integers(0, 5000 * MB), variant=st.sampled_from(["Q8_0", "Q4_K_M", "Q2_K", "BF16", ""]))
def test_the_choice_always_fits_the_disk(free, variant):
    try:
        model = choose_for_disk(LISTING, variant, {}, free, "/cache")
    except InsufficientResources as error:
        assert error.needed > free
        return
    assert model.bytes_to_download <= free
    if model.fallback_from:  # a fallback only when the variant asked for did not fit
        assert model.fallback_needed > free


# -- memory ---------------------------------------------------------------------------


def _plan(weights: int, kv: int) -> Plan:
    return Plan(4096, (), False, False, weights, kv, (), 4096, ())


def test_a_model_larger_than_all_memory_together_is_refused_with_the_numbers():
    error = memory_shortfall("Big", _plan(30 << 30, 2 << 30), [GpuInfo(0, 8 << 30), GpuInfo(1, 8 << 30)], 8 << 30)
    assert error is not None and error.reason == "MODEL_TOO_LARGE"
    assert (error.needed, error.available) == (32 << 30, 24 << 30)
    assert "nothing was downloaded" in str(error)


def test_a_model_that_fits_across_gpus_and_system_memory_is_not_refused():
    assert memory_shortfall("Big", _plan(20 << 30, 2 << 30), [GpuInfo(0, 8 << 30), GpuInfo(1, 8 << 30)],
                            8 << 30) is None
    assert memory_shortfall("Small", _plan(100 * MB, 10 * MB), [], 1 << 30) is None
