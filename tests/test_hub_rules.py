"""Hub sources: names, variants, shard sets, projectors, disk fallback (SPEC §7, issue 11)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamagate.domain.errors import InvalidArgument, InvalidModel, ModelNotFound
from llamagate.domain.hub import (
    HubFile,
    HubListing,
    HubSource,
    Selection,
    fitting_fallback,
    matches,
    parse_reference,
    projector,
    select,
    shard_sets,
    to_download,
    variants,
)
from llamagate.domain.shards import shard_names

GB = 10**9


def listing(*files: tuple[str, int], repo: str = "unsloth/Qwen3-4B-GGUF") -> HubListing:
    return HubListing(repo=repo, commit="0" * 40, files=tuple(HubFile(p, s) for p, s in files))


def paths(selection: Selection) -> list[str]:
    return [f.path for f in selection.model_files]


QWEN = listing(
    ("README.md", 5_000),
    (".gitattributes", 2_000),
    ("Qwen3-4B-BF16.gguf", 8 * GB),
    ("Qwen3-4B-F16.gguf", 8 * GB + 1),
    ("Qwen3-4B-Q4_K_M.gguf", 2 * GB + 500),
    ("Qwen3-4B-Q4_K_S.gguf", 2 * GB + 400),
    ("Qwen3-4B-UD-Q4_K_XL.gguf", 2 * GB + 600),
    ("Qwen3-4B-UD-Q4_K_M.gguf", 2 * GB + 550),
    ("Qwen3-4B-Q8_0.gguf", 4 * GB),
)


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("repo", ["unsloth/Qwen3-4B-GGUF", "bartowski/Llama-3.2-1B-Instruct-GGUF", "a/b", "Org_1/x.y"])
def test_hub_repo_ids_are_accepted(repo):
    assert HubSource(repo).repo == repo


@pytest.mark.parametrize(
    "repo",
    ["", "Qwen3-4B-GGUF", "a/b/c", "-a/b", "a/b.", "a--b/c", "a/b..c", "a/b.git", "a/b c", "ä/b", "a/" + "x" * 97],
)
def test_malformed_repo_ids_name_the_field(repo):
    with pytest.raises(InvalidArgument) as caught:
        HubSource(repo)
    assert caught.value.field == "hub.repo"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"variant": "Q4 K M"}, "hub.variant"),
        ({"variant": "Q4_K_M/../x"}, "hub.variant"),
        ({"variant": "-Q4"}, "hub.variant"),
        ({"revision": "main branch"}, "hub.revision"),
        ({"revision": "a/../b"}, "hub.revision"),
        ({"token": "hf_abc\nX-Evil: 1"}, "hub.token"),
    ],
)
def test_malformed_variant_revision_and_token_name_their_field(kwargs, field):
    with pytest.raises(InvalidArgument) as caught:
        HubSource("owner/repo", **kwargs)
    assert caught.value.field == field


def test_the_token_never_appears_in_a_repr_or_an_error():
    assert "hf_secret" not in repr(HubSource("owner/repo", token="hf_secret"))
    with pytest.raises(InvalidArgument) as caught:
        HubSource("owner/repo", token="hf_secret with space")
    assert "hf_secret" not in str(caught.value)


def test_good_revisions_and_variants_are_kept():
    source = HubSource("o/r", variant="UD-Q4_K_XL", revision="refs/pr/1", token="hf_x")
    assert (source.variant, source.revision, source.token) == ("UD-Q4_K_XL", "refs/pr/1", "hf_x")
    assert HubSource("o/r", revision="a" * 40).revision == "a" * 40


@pytest.mark.parametrize(
    ("text", "repo", "variant"),
    [
        ("unsloth/Qwen3-4B-GGUF:Q4_K_M", "unsloth/Qwen3-4B-GGUF", "Q4_K_M"),
        ("unsloth/Qwen3-4B-GGUF", "unsloth/Qwen3-4B-GGUF", ""),
        ("hf.co/unsloth/Qwen3-4B-GGUF:UD-Q4_K_XL", "unsloth/Qwen3-4B-GGUF", "UD-Q4_K_XL"),
        ("https://huggingface.co/unsloth/Qwen3-4B-GGUF", "unsloth/Qwen3-4B-GGUF", ""),
    ],
)
def test_references_parse_as_the_command_line_writes_them(text, repo, variant):
    source = parse_reference(text)
    assert (source.repo, source.variant) == (repo, variant)
    assert parse_reference(source.reference) == source


@pytest.mark.parametrize("text", ["owner/repo:", "models/x.gguf:Q4:K", "./model.gguf", "model.gguf", "a/b/c.gguf"])
def test_what_is_no_reference_is_a_clear_error_on_the_given_field(text):
    with pytest.raises(InvalidArgument) as caught:
        parse_reference(text, field="model")
    assert caught.value.field == "model" and repr(text) in str(caught.value)


# ---------------------------------------------------------------- variant matching


def test_f16_never_takes_bf16():
    assert not matches("F16", "Qwen3-4B-BF16.gguf")
    assert matches("F16", "Qwen3-4B-F16.gguf") and matches("bf16", "Qwen3-4B-BF16.gguf")
    assert paths(select(QWEN, "F16")) == ["Qwen3-4B-F16.gguf"]
    assert paths(select(QWEN, "BF16")) == ["Qwen3-4B-BF16.gguf"]
    only_bf16 = listing(("m-BF16.gguf", 10))
    with pytest.raises(ModelNotFound, match="BF16"):
        select(only_bf16, "F16")


def test_a_shorter_quant_name_does_not_take_a_longer_one():
    assert not matches("Q4_K", "Qwen3-4B-Q4_K_M.gguf")
    assert not matches("Q4_0", "m-Q4_0_4_4.gguf")
    assert matches("q4_0", "model_q4_0.gguf")  # an underscore on the left still separates


def test_variants_match_ignoring_case_and_the_named_one_wins_over_ud():
    assert paths(select(QWEN, "q4_k_m")) == ["Qwen3-4B-Q4_K_M.gguf"]
    assert paths(select(QWEN, "UD-Q4_K_M")) == ["Qwen3-4B-UD-Q4_K_M.gguf"]
    assert paths(select(QWEN, "ud-q4_k_xl")) == ["Qwen3-4B-UD-Q4_K_XL.gguf"]
    # no plain Q4_K_XL: the UD- file holds it as a whole token
    chosen = select(QWEN, "Q4_K_XL")
    assert paths(chosen) == ["Qwen3-4B-UD-Q4_K_XL.gguf"] and chosen.variant == "UD-Q4_K_XL"


def test_every_variant_is_listed_once_with_its_size_smallest_first():
    offers = {v.name: v.total_bytes for v in variants(QWEN.files)}
    assert offers == {
        "Q4_K_S": 2 * GB + 400,
        "Q4_K_M": 2 * GB + 500,
        "UD-Q4_K_M": 2 * GB + 550,
        "UD-Q4_K_XL": 2 * GB + 600,
        "Q8_0": 4 * GB,
        "BF16": 8 * GB,
        "F16": 8 * GB + 1,
    }
    assert [v.total_bytes for v in variants(QWEN.files)] == sorted(offers.values())


def test_an_unknown_variant_lists_the_ones_there_are():
    with pytest.raises(ModelNotFound) as caught:
        select(QWEN, "Q3_K_M")
    message = str(caught.value)
    assert "unsloth/Qwen3-4B-GGUF" in message and "'Q3_K_M'" in message
    for name in ("Q4_K_S (2.00 GB)", "UD-Q4_K_XL", "Q8_0 (4.00 GB)", "BF16", "F16"):
        assert name in message


def test_without_a_variant_q4_k_m_else_the_first_file():
    assert select(QWEN).variant == "Q4_K_M"
    assert select(listing(("m-Q8_0.gguf", 8), ("m-F16.gguf", 16))).variant == "F16"  # first in path order
    assert paths(select(listing(("SmolLM2-135M-Instruct.Q4_1.gguf", 9)))) == ["SmolLM2-135M-Instruct.Q4_1.gguf"]


def test_a_file_naming_no_quantization_is_its_own_variant():
    one = listing(("ggml-model.gguf", 100))
    assert [v.name for v in variants(one.files)] == ["ggml-model"]
    assert paths(select(one, "ggml-model")) == ["ggml-model.gguf"]


def test_a_repo_without_gguf_is_an_invalid_model():
    with pytest.raises(InvalidModel, match="has no GGUF file"):
        select(listing(("README.md", 1), ("model.safetensors", 10), ("config.json", 1)))
    with pytest.raises(InvalidModel, match="has no GGUF file"):
        select(listing(("mmproj-F16.gguf", 1)))  # a projector alone is no model


# ---------------------------------------------------------------- shards

SPLIT = listing(
    ("Q4_K_M/Qwen3-235B-A22B-Q4_K_M-00003-of-00003.gguf", 30),
    ("Q4_K_M/Qwen3-235B-A22B-Q4_K_M-00001-of-00003.gguf", 10),
    ("BF16/Qwen3-235B-A22B-BF16-00002-of-00002.gguf", 200),
    ("Q4_K_M/Qwen3-235B-A22B-Q4_K_M-00002-of-00003.gguf", 20),
    ("BF16/Qwen3-235B-A22B-BF16-00001-of-00002.gguf", 100),
    ("UD-Q2_K_XL/Qwen3-235B-A22B-UD-Q2_K_XL-00001-of-00002.gguf", 5),
    repo="unsloth/Qwen3-235B-A22B-GGUF",
)


def test_shards_in_subfolders_come_complete_and_in_order():
    chosen = select(SPLIT, "Q4_K_M")
    assert paths(chosen) == [f"Q4_K_M/Qwen3-235B-A22B-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert chosen.total_bytes == 60 and chosen.mmproj is None
    assert select(SPLIT, "bf16").total_bytes == 300


def test_a_missing_shard_is_an_error_naming_it():
    with pytest.raises(ModelNotFound) as caught:
        select(SPLIT, "UD-Q2_K_XL")
    assert "UD-Q2_K_XL/Qwen3-235B-A22B-UD-Q2_K_XL-00002-of-00002.gguf" in str(caught.value)
    incomplete = next(v for v in variants(SPLIT.files) if v.name == "UD-Q2_K_XL")
    assert not incomplete.complete


# ---------------------------------------------------------------- projectors

VISION = listing(
    ("gemma-3-4b-it-Q4_K_M.gguf", 2500),
    ("gemma-3-4b-it-F16.gguf", 8000),
    ("mmproj-BF16.gguf", 800),
    ("mmproj-F32.gguf", 1600),
    ("mmproj-F16.gguf", 801),
    repo="unsloth/gemma-3-4b-it-GGUF",
)


def test_the_projector_is_the_exact_f16_one_and_never_a_variant():
    chosen = select(VISION, "F16")
    assert paths(chosen) == ["gemma-3-4b-it-F16.gguf"]
    assert chosen.mmproj == HubFile("mmproj-F16.gguf", 801)
    assert chosen.total_bytes == 8801 and chosen.files[-1] == chosen.mmproj
    assert {v.name for v in variants(VISION.files)} == {"Q4_K_M", "F16"}


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["mmproj-model-bf16.gguf", "mmproj-model-f16.gguf"], "mmproj-model-f16.gguf"),
        (["mmproj-F32.gguf", "mmproj-BF16.gguf"], "mmproj-BF16.gguf"),
        (["mmproj-Q8_0.gguf", "mmproj-F32.gguf"], "mmproj-F32.gguf"),
        (["mmproj-Q8_0.gguf", "mmproj-Q4_0.gguf"], "mmproj-Q4_0.gguf"),
        (["model-F16.gguf"], None),
    ],
)
def test_projector_preference_f16_then_bf16_then_f32_then_first(names, expected):
    found = projector([HubFile(n, 1) for n in names])
    assert (found.path if found else None) == expected


# ---------------------------------------------------------------- disk


def test_to_download_subtracts_what_the_cache_holds():
    chosen = select(SPLIT, "Q4_K_M")
    cached = {chosen.model_files[0].path: 10, chosen.model_files[1].path: 5, "elsewhere.gguf": 999}
    assert to_download(chosen, cached) == 45
    assert to_download(chosen, {chosen.model_files[2].path: 10**12}) == 30  # never below zero per file


def test_the_wanted_variant_when_it_fits_else_the_smallest_that_does():
    assert fitting_fallback(QWEN, "F16", 9 * GB, {}).variant == "F16"
    assert fitting_fallback(QWEN, "F16", 5 * GB, {}).variant == "Q4_K_S"
    assert fitting_fallback(QWEN, "F16", GB, {}) is None
    # the cache can make a bigger variant fit
    assert fitting_fallback(QWEN, "F16", GB, {"Qwen3-4B-F16.gguf": 8 * GB}).variant == "F16"


def test_the_cache_can_make_a_bigger_fallback_the_smallest_that_fits():
    cached = {"Qwen3-4B-Q8_0.gguf": 4 * GB - 10}
    assert fitting_fallback(QWEN, "F16", GB, cached).variant == "Q8_0"  # Q4_K_S would need 2 GB


def test_a_complete_set_wins_over_an_incomplete_one_of_the_same_name():
    repo = listing(("A/m-Q4_K_M-00001-of-00002.gguf", 1), ("B/m-Q4_K_M.gguf", 2), ("m-F16.gguf", 9))
    assert paths(select(repo, "Q4_K_M")) == ["B/m-Q4_K_M.gguf"]
    assert [(v.name, v.complete) for v in variants(repo.files)] == [("Q4_K_M", True), ("F16", True)]


def test_the_fallback_keeps_the_projector_and_skips_incomplete_sets():
    assert fitting_fallback(VISION, "F16", 4000, {}) == Selection(
        "Q4_K_M", (VISION.files[0],), HubFile("mmproj-F16.gguf", 801)
    )
    assert fitting_fallback(VISION, "F16", 2600, {}) is None  # Q4_K_M fits, its projector does not
    assert fitting_fallback(SPLIT, "BF16", 50, {}) is None  # UD-Q2_K_XL is smaller, but lacks a shard


def test_a_shard_number_past_its_count_is_a_file_of_its_own():
    odd = listing(("m-Q8_0-00004-of-00003.gguf", 4), ("m-Q4_0-00001-of-00001.gguf", 1))
    assert paths(select(odd, "Q8_0")) == ["m-Q8_0-00004-of-00003.gguf"]
    assert paths(select(odd, "Q4_0")) == ["m-Q4_0-00001-of-00001.gguf"]


def test_the_fallback_does_not_excuse_an_absent_variant():
    with pytest.raises(ModelNotFound):
        fitting_fallback(QWEN, "Q3_K_M", 100 * GB, {})


# ---------------------------------------------------------------- laws


def spec_whole_token(variant: str, name: str) -> bool:
    """SPEC §7's definition, written independently: an occurrence not preceded
    or followed by a letter or digit."""
    v, n = variant.lower(), name.lower()
    return any(
        n.startswith(v, i)
        and (i == 0 or not n[i - 1].isalnum())
        and (i + len(v) == len(n) or not n[i + len(v)].isalnum())
        for i in range(len(n))
    )


def stricter_whole_token(variant: str, name: str) -> bool:
    """The rule as documented in `matches`: SPEC's, and on the right an
    underscore followed by a letter or digit continues the token."""
    v, n = variant.lower(), name.lower()
    for i in range(len(n)):
        after = n[i + len(v) : i + len(v) + 2]
        continues = bool(after) and (after[0].isalnum() or (after[0] == "_" and after[1:].isalnum()))
        if n.startswith(v, i) and (i == 0 or not n[i - 1].isalnum()) and not continues:
            return True
    return False


token_variants = st.sampled_from(["F16", "BF16", "Q4_K", "Q4_K_M", "UD-Q4_K_XL", "Q4_0", "IQ4_XS", "q8_0", "K_M"])
FRAGMENTS = ["F16", "bf16", "Q4_K", "q4_k_m", "_M", "_0", "_4", "UD-", "Q4_K_XL", "IQ4_XS", "Q8_0", "Q4_0", "b", "x"]
name_text = st.lists(st.sampled_from([*FRAGMENTS, "4", "-", ".", "/", "_", "Qwen3", ".gguf"]), max_size=8).map("".join)


@given(variant=token_variants, name=name_text)
def test_a_variant_matches_only_as_a_whole_token(variant, name):
    if matches(variant, name):
        assert spec_whole_token(variant, name)
    assert matches(variant, name) == stricter_whole_token(variant, name)


@given(variant=token_variants, left=name_text, right=name_text, sep=st.sampled_from("-./"), end=st.sampled_from(".-"))
def test_a_variant_between_separators_always_matches(variant, left, right, sep, end):
    assert matches(variant, f"{left}{sep}{variant.lower()}{end}{right}")


quants = st.sampled_from(["Q4_K_M", "Q4_K_S", "UD-Q4_K_XL", "Q8_0", "F16", "BF16", "IQ2_XXS", "Q2_K"])


@st.composite
def split_repos(draw):
    """Models, each a folder or not, split or not, now and then a shard dropped, in any order."""
    files = []
    for quant in draw(st.lists(quants, min_size=1, max_size=5, unique=True)):
        count = draw(st.integers(1, 5))
        folder = draw(st.sampled_from(["", f"{quant}/"]))
        names = shard_names(f"Model-{quant}-00001-of-{count:05d}.gguf") if count > 1 else [f"Model-{quant}.gguf"]
        dropped = (
            draw(st.sets(st.integers(0, len(names) - 1), max_size=len(names) - 1)) if draw(st.booleans()) else set()
        )
        files += [HubFile(folder + n, draw(st.integers(0, 10**10))) for i, n in enumerate(names) if i not in dropped]
    files.append(HubFile("README.md", 10))
    if draw(st.booleans()):
        files.append(HubFile("mmproj-F16.gguf", draw(st.integers(0, 10**9))))
    return listing(*((f.path, f.size) for f in draw(st.permutations(files))))


@given(repo=split_repos())
def test_every_shard_set_is_whole_and_ordered_or_names_what_is_missing(repo):
    sets = shard_sets(repo.files)
    gguf = sorted(f.path for f in repo.files if f.path.endswith(".gguf") and "mmproj" not in f.path)
    assert sorted(f.path for s in sets for f in s.files) == gguf  # each file in exactly one set
    for found in sets:
        folder = found.files[0].path.rpartition("/")[0]
        expected = [f"{folder}/{n}" if folder else n for n in shard_names(found.files[0].path.rpartition("/")[2])]
        assert sorted([f.path for f in found.files] + list(found.missing)) == expected
        assert [f.path for f in found.files] == [p for p in expected if p not in found.missing]
    for offer in variants(repo.files):
        if offer.complete:
            chosen = select(repo, offer.name)
            assert list(chosen.model_files) == list(offer.files)
            assert all(spec_whole_token(offer.name, f.path) for f in chosen.model_files)
        else:
            with pytest.raises(ModelNotFound) as caught:
                select(repo, offer.name)
            assert offer.missing[0] in str(caught.value)


@given(repo=split_repos(), data=st.data())
def test_the_fallback_fits_and_is_the_smallest_that_does(repo, data):
    complete = [v for v in variants(repo.files) if v.complete]
    if not complete:
        return
    wanted = data.draw(st.sampled_from(complete)).name
    held = st.sampled_from(repo.files).flatmap(lambda f: st.tuples(st.just(f.path), st.integers(0, f.size)))
    cached = dict(data.draw(st.lists(held, max_size=len(repo.files))))

    def need(name: str) -> int:
        return to_download(select(repo, name), cached)

    # free space at the edge of a variant needing less than the wanted one exercises the fallback
    others = [v for v in complete if need(v.name) < need(wanted)] or complete
    edge = st.sampled_from(others).flatmap(lambda v: st.integers(need(v.name) - 1, need(v.name)))
    free = data.draw(st.one_of(edge, st.integers(0, sum(f.size for f in repo.files))).filter(lambda n: n >= 0))

    chosen = fitting_fallback(repo, wanted, free, cached)

    fitting = [v for v in complete if need(v.name) <= free]
    if chosen is None:
        assert not fitting
        return
    assert to_download(chosen, cached) <= free
    if need(wanted) <= free:
        assert chosen.variant == wanted
    else:
        assert sum(f.size for f in chosen.model_files) == min(v.total_bytes for v in fitting)
