"""The llama-server command line for a LaunchSpec (SPEC §8, §15)."""

from __future__ import annotations

import os
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamagate.adapters.engine_discovery import child_environment, find_llama_server
from llamagate.adapters.llama_argv import server_arguments
from llamagate.domain.launch import LaunchSpec
from llamagate.domain.load_options import KvCacheType, Speculative


def flag_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def argv(spec: LaunchSpec, *, port: int = 4321, template_file: str | None = None) -> list[str]:
    return server_arguments(spec, port=port, template_file=template_file)


def test_baseline_flags_for_a_plain_load():
    args = argv(LaunchSpec(model_path="/m.gguf", context_length=0, parallel=2))

    assert flag_value(args, "-m") == "/m.gguf"
    assert flag_value(args, "--port") == "4321"
    assert flag_value(args, "--host") == "127.0.0.1"
    assert flag_value(args, "-c") == "0"
    assert flag_value(args, "--parallel") == "2"
    assert flag_value(args, "--flash-attn") == "on"
    assert flag_value(args, "--threads") == "-1"
    assert flag_value(args, "--fit") == "on"
    assert {"--no-context-shift", "--jinja", "--no-webui"} <= set(args)
    assert "-ngl" not in args and "--chat-template-kwargs" not in args and "--mmproj" not in args
    assert "--chat-template-file" not in args


def test_the_api_key_is_never_on_the_command_line():
    args = argv(LaunchSpec("/m.gguf", 0))
    assert "--api-key" not in args and "--api-key-file" not in args


def test_planned_gpus_hold_every_layer_and_are_not_refitted():
    # In this llama.cpp "-ngl -1" means "auto" (and --fit, on by default,
    # would rework it): every layer is spelled "all".
    args = argv(LaunchSpec("/m.gguf", 4096, offload_all=True, gpus=(0, 1)))
    assert flag_value(args, "-ngl") == "all" and flag_value(args, "--fit") == "off"


def test_the_template_file_and_the_reasoning_default_are_passed():
    spec = LaunchSpec("/m.gguf", 0, chat_template="{{ x }}", template_kwargs={"enable_thinking": False})
    args = argv(spec, template_file="/tmp/t.jinja")
    assert flag_value(args, "--chat-template-kwargs") == '{"enable_thinking": false}'
    assert flag_value(args, "--chat-template-file") == "/tmp/t.jinja"
    assert "{{ x }}" not in args  # the text travels in the file, never in argv
    # Without --jinja first, llama-server accepts only the templates it knows by name.
    assert args.index("--jinja") < args.index("--chat-template-file")


def test_a_vision_projector_is_passed():
    args = argv(LaunchSpec("/m.gguf", 0, mmproj_path="/proj.gguf"))
    assert flag_value(args, "--mmproj") == "/proj.gguf"


def test_ngram_mod_uses_the_spec_values_under_llama_cpps_new_names():
    args = argv(LaunchSpec("/m.gguf", 0, speculative=Speculative.NGRAM_MOD))
    assert flag_value(args, "--spec-type") == "ngram-mod"
    assert flag_value(args, "--spec-ngram-mod-n-match") == "24"
    assert (flag_value(args, "--spec-ngram-mod-n-min"), flag_value(args, "--spec-ngram-mod-n-max")) == ("48", "64")


@pytest.mark.parametrize(
    ("speculative", "expected"),
    [
        (Speculative.OFF, []),
        (Speculative.DEFAULT, ["--spec-default"]),
        (Speculative.NGRAM_SIMPLE, ["--spec-type", "ngram-simple"]),
    ],
)
def test_each_speculative_mode_has_its_flags(speculative, expected):
    plain = argv(LaunchSpec("/m.gguf", 0))
    args = argv(LaunchSpec("/m.gguf", 0, speculative=speculative))
    assert args[: len(plain)] == plain and args[len(plain) :] == expected


@given(
    cache=st.sampled_from(KvCacheType),
    speculative=st.sampled_from(Speculative),
    mmproj=st.sampled_from(["", "/proj.gguf"]),
    threads=st.integers(0, 64),
)
def test_cache_type_applies_to_k_and_v_and_vision_never_speculates(cache, speculative, mmproj, threads):
    spec = LaunchSpec("/m.gguf", 0, cache_type=cache, speculative=speculative, mmproj_path=mmproj, threads=threads)
    args = argv(spec)

    assert flag_value(args, "--cache-type-k") == flag_value(args, "--cache-type-v") == cache.value
    assert int(flag_value(args, "--threads")) == (threads or -1)
    speculating = "--spec-type" in args or "--spec-default" in args
    assert speculating == (not mmproj and speculative is not Speculative.OFF)


# --- against the real binary ------------------------------------------------


def _everything(offload_all: bool, speculative: Speculative, cache: KvCacheType) -> LaunchSpec:
    return LaunchSpec(
        "/m.gguf", 4096, parallel=2, threads=3, cache_type=cache, offload_all=offload_all, gpus=(0,),
        chat_template="x", template_kwargs={"reasoning_effort": "high"}, speculative=speculative,
    )  # fmt: skip


@pytest.mark.engine
@pytest.mark.parametrize("offload_all", [False, True])
@pytest.mark.parametrize("speculative", list(Speculative))
def test_the_built_llama_server_accepts_every_argument(offload_all, speculative, cache_dir, tmp_path):
    template = tmp_path / "t.jinja"  # read while the arguments are parsed
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    for cache in (KvCacheType.F16, KvCacheType.Q8_0, KvCacheType.IQ4_NL):
        assert_accepted(argv(_everything(offload_all, speculative, cache), template_file=str(template)), cache_dir)


@pytest.mark.engine
def test_the_built_llama_server_accepts_a_vision_projector_flag(cache_dir):
    assert_accepted(argv(LaunchSpec("/m.gguf", 0, mmproj_path="/proj.gguf")), cache_dir)


def assert_accepted(args: list[str], cache_dir) -> None:
    # llama-server validates every flag and value before it acts on --help:
    # an unknown or renamed flag, or a value out of range, exits non-zero.
    binary = find_llama_server({"PATH": ""}, cache_dir)
    result = subprocess.run(
        [str(binary), *args, "--help"], env=child_environment(binary, os.environ), capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{args}:\n{result.stderr[-2000:]}"
