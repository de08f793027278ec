from hypothesis import given
from hypothesis import strategies as st

from llamagate.domain.shards import model_id, shard_names

names = st.from_regex(r"[A-Za-z0-9_.]{1,20}", fullmatch=True)


@given(prefix=names, count=st.integers(1, 40), data=st.data())
def test_any_shard_names_all_siblings_in_order(prefix, count, data):
    no = data.draw(st.integers(1, count))
    name = f"{prefix}-{no:05d}-of-{count:05d}.gguf"

    siblings = shard_names(name)

    assert len(siblings) == count and name in siblings
    assert siblings == sorted(siblings)
    assert all(shard_names(s) == siblings for s in siblings)
    assert {model_id(s) for s in siblings} == {prefix}


@given(name=names)
def test_a_single_file_is_its_own_only_shard(name):
    assert shard_names(name + ".gguf") == [name + ".gguf"]
    assert model_id(name + ".gguf") == name


def test_real_looking_names():
    assert model_id("SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct.Q4_1"
    assert shard_names("Qwen3-235B-Q4_K_M-00002-of-00003.gguf")[0] == "Qwen3-235B-Q4_K_M-00001-of-00003.gguf"
