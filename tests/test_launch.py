"""The llama-server command line (SPEC §8, §15)."""

from hypothesis import given
from hypothesis import strategies as st

from llamagate.domain.launch import LaunchSpec, server_arguments
from llamagate.domain.model import KvCacheType, Speculative


def flag_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_baseline_flags_for_a_plain_load():
    args = server_arguments(LaunchSpec(model_path="/m.gguf", port=4321, context_length=0, parallel=2))

    assert flag_value(args, "-m") == "/m.gguf"
    assert flag_value(args, "--port") == "4321"
    assert flag_value(args, "--host") == "127.0.0.1"
    assert flag_value(args, "-c") == "0"
    assert flag_value(args, "--parallel") == "2"
    assert flag_value(args, "--flash-attn") == "on"
    assert flag_value(args, "--threads") == "-1"
    assert flag_value(args, "--fit") == "on"
    assert {"--no-context-shift", "--jinja"} <= set(args)
    assert "--chat-template-kwargs" not in args and "--mmproj" not in args


def test_planned_gpus_offload_every_layer_instead_of_fitting():
    args = server_arguments(LaunchSpec("/m.gguf", 1, 4096, offload_all=True))
    assert flag_value(args, "-ngl") == "-1" and "--fit" not in args


def test_reasoning_default_and_template_file_are_passed():
    spec = LaunchSpec("/m.gguf", 1, 0, template_kwargs={"enable_thinking": False}, chat_template_file="/t.jinja")
    args = server_arguments(spec)
    assert flag_value(args, "--chat-template-kwargs") == '{"enable_thinking": false}'
    assert flag_value(args, "--chat-template-file") == "/t.jinja"


def test_ngram_mod_uses_the_spec_values():
    args = server_arguments(LaunchSpec("/m.gguf", 1, 0, speculative=Speculative.NGRAM_MOD))
    assert flag_value(args, "--spec-type") == "ngram-mod"
    assert flag_value(args, "--spec-ngram-mod-n-match") == "24"
    assert (flag_value(args, "--spec-ngram-mod-n-min"), flag_value(args, "--spec-ngram-mod-n-max")) == ("48", "64")


@given(
    cache=st.sampled_from(KvCacheType),
    speculative=st.sampled_from(Speculative),
    mmproj=st.sampled_from(["", "/proj.gguf"]),
    threads=st.integers(0, 64),
)
def test_cache_type_applies_to_k_and_v_and_vision_never_speculates(cache, speculative, mmproj, threads):
    spec = LaunchSpec("/m.gguf", 1, 0, cache_type=cache, speculative=speculative, mmproj_path=mmproj or None,
                      threads=threads)
    args = server_arguments(spec)

    assert flag_value(args, "--cache-type-k") == flag_value(args, "--cache-type-v") == cache.value
    assert int(flag_value(args, "--threads")) == (threads or -1)
    speculating = "--spec-type" in args or "--spec-default" in args
    assert speculating == (not mmproj and speculative is not Speculative.OFF)
