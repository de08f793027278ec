"""Models declared in a TOML file (issue 12): domain/model_config.py's rules and
adapters/config_file.py's reading; every error names the file, the table and the key."""

from __future__ import annotations

import os
import re
import shutil
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamagate.adapters.config_file import MAX_CONFIG_BYTES, read_service_config
from llamagate.domain import model_config
from llamagate.domain.errors import InvalidArgument
from llamagate.domain.hub import HubSource
from llamagate.domain.load_options import KvCacheType, LoadOptions, ModelMode, Pooling, Speculative
from llamagate.domain.model_config import (
    MAX_DURATION_S,
    MAX_SIZE,
    ModelSpec,
    ServiceConfig,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
    service_config,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "llamagate.example.toml"
GIB = 1024**3


def write(tmp_path: Path, text: str, name: str = "llamagate.toml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def refused(tmp_path: Path, text: str) -> str:
    """The message reading ``text`` as a config file fails with; it must start with the file's path."""
    path = write(tmp_path, text)
    with pytest.raises(InvalidArgument) as caught:
        read_service_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    return message[len(path) + 2:]


# ---------------------------------------------------------------- the example and a full round trip


def test_the_example_file_is_valid_and_means_what_its_comments_say(tmp_path):
    # From a copy elsewhere: its relative paths follow the file, not the working directory.
    copy = tmp_path / "etc" / "llamagate.toml"
    copy.parent.mkdir()
    shutil.copy(EXAMPLE, copy)
    config = read_service_config(str(copy))
    models = {m.id: m for m in config.models}
    assert list(models) == ["chat", "coder", "vision", "embed", "rerank", "big"]
    assert config.host_memory_bytes == 12 * GIB and config.default_model == "chat"

    chat = models["chat"]
    assert chat.source == HubSource("unsloth/Qwen3-4B-GGUF", "Q4_K_M", revision="main")
    assert chat.options == LoadOptions(context_length=8192, parallel=2, cache_type=KvCacheType.Q8_0)
    assert (chat.pinned, chat.load_at_start, chat.on_demand, chat.idle_ttl_s) == (True, True, True, 0)

    coder = models["coder"]
    assert coder.source == str(tmp_path / "etc" / "models" / "coder-Q4_K_M.gguf")
    assert (coder.options.threads, coder.options.batch_size, coder.idle_ttl_s) == (4, 512, 5400)
    assert coder.options.chat_template.startswith("{%- for message in messages %}")

    vision = models["vision"]
    assert vision.options.mmproj_path == "/srv/models/mmproj-gemma-3-4b-it-f16.gguf"
    assert (vision.on_demand, vision.idle_ttl_s) == (False, 600)

    embed = models["embed"]
    assert (embed.options.mode, embed.options.pooling, embed.idle_ttl_s) == (ModelMode.EMBEDDING, Pooling.MEAN, 600)
    assert models["rerank"].source == HubSource("gpustack/bge-reranker-v2-m3-GGUF")
    assert models["rerank"].options.mode is ModelMode.RERANK
    assert models["big"].options.rpc_workers == ("10.0.0.2:50052", "10.0.0.3:50052")


def test_every_key_a_model_takes_is_shown_in_the_example():
    text = EXAMPLE.read_text()
    for key in ("id", "path", "hub", "revision", "context_length", "parallel", "cache_type", "threads",
                "chat_template", "speculative", "mmproj", "batch_size", "mode", "pooling", "pinned",
                "idle_ttl", "on_demand", "load_at_start", "host_memory", "default_model", "rpc_workers"):
        assert f"\n{key} = " in text, key


def test_a_full_file_round_trips_into_the_spec(tmp_path):
    path = write(tmp_path, """
        host_memory = 2_000_000_000
        default_model = "b"

        [[models]]
        id = "a"
        path = "sub/a.gguf"
        mmproj = "sub/mmproj-a-f16.gguf"
        context_length = 4096
        parallel = 3
        cache_type = "Q4_0"
        threads = 2
        speculative = "ngram-mod"
        batch_size = 64
        idle_ttl = 90.5
        on_demand = false

        [[models]]
        id = "b"
        hub = "hf.co/owner/repo:IQ2_XXS"
        pinned = true
        idle_ttl = 0
        load_at_start = true
    """)
    expected = ServiceConfig(
        models=(
            ModelSpec(
                id="a",
                source=str(tmp_path / "sub" / "a.gguf"),
                options=LoadOptions(context_length=4096, parallel=3, cache_type=KvCacheType.Q4_0, threads=2,
                                    speculative=Speculative.NGRAM_MOD, batch_size=64,
                                    mmproj_path=str(tmp_path / "sub" / "mmproj-a-f16.gguf")),
                idle_ttl_s=90.5,
                on_demand=False,
            ),
            ModelSpec(id="b", source=HubSource("owner/repo", "IQ2_XXS"), pinned=True, load_at_start=True),
        ),
        host_memory_bytes=2_000_000_000,
        default_model="b",
    )
    assert read_service_config(path) == expected


def test_relative_paths_start_at_the_files_directory_even_from_a_relative_config_path(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", '[[models]]\nid = "a"\npath = "m.gguf"\n')
    monkeypatch.chdir(tmp_path)
    (spec,) = read_service_config("conf/llamagate.toml").models
    assert spec.source == str(tmp_path / "conf" / "m.gguf")


def test_home_is_expanded_and_absolute_paths_are_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(tmp_path, """
        [[models]]
        id = "a"
        path = "~/models/a.gguf"
        mmproj = "/abs/p.gguf"
    """)
    (spec,) = read_service_config(path).models
    assert spec.source == os.path.join(str(tmp_path / "home"), "models/a.gguf")
    assert spec.options.mmproj_path == "/abs/p.gguf"


def test_an_empty_file_declares_no_model_and_the_defaults(tmp_path):
    assert read_service_config(write(tmp_path, "")) == ServiceConfig(models=())


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b'default_model = ""\n')
    assert read_service_config(str(path)).default_model == ""


def test_units_and_choices_ignore_case_where_that_is_safe(tmp_path):
    config = read_service_config(write(tmp_path, """
        host_memory = "1.5gb"
        [[models]]
        id = "a"
        path = "a.gguf"
        mode = "Embedding"
        pooling = "CLS"
    """))
    assert config.host_memory_bytes == 1_500_000_000
    assert config.models[0].options.pooling is Pooling.CLS


def test_pinned_with_an_idle_ttl_of_zero_is_no_contradiction(tmp_path):
    config = read_service_config(write(tmp_path, '[[models]]\nid = "a"\npath = "a"\npinned = true\nidle_ttl = "0s"\n'))
    assert config.models[0].pinned and config.models[0].idle_ttl_s == 0


# ---------------------------------------------------------------- the file's errors


def test_a_missing_file_is_named(tmp_path):
    path = str(tmp_path / "nope.toml")
    with pytest.raises(InvalidArgument, match=r"nope\.toml: no such config file"):
        read_service_config(path)


def test_a_directory_is_not_a_config_file(tmp_path):
    with pytest.raises(InvalidArgument, match=f"^{tmp_path}: is a directory"):
        read_service_config(str(tmp_path))


def test_an_unreadable_path_says_why(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgument, match="file/x.toml: cannot read the config file: Not a directory"):
        read_service_config(str(tmp_path / "file" / "x.toml"))


def test_a_huge_file_is_refused_without_reading_it_all(tmp_path):
    path = tmp_path / "big.toml"
    path.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(InvalidArgument, match="larger than 1024 KiB"):
        read_service_config(str(path))


def test_a_file_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('default_model = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(InvalidArgument, match="not UTF-8 text"):
        read_service_config(str(path))


def test_a_syntax_error_says_the_line_and_column(tmp_path):
    message = refused(tmp_path, '[[models]]\nid = "a"\npath = "a.gguf\n')
    assert message.startswith("line 3, column 15: TOML syntax error: "), message


def test_a_syntax_error_at_the_end_still_names_the_file(tmp_path):
    assert refused(tmp_path, "host_memory =").startswith("TOML syntax error: ")


# ---------------------------------------------------------------- the document's errors: table and key named

MODEL = '[[models]]\nid = "a"\npath = "a.gguf"\n'


@pytest.mark.parametrize(
    ("text", "start", "says"),
    [
        # unknown keys: named, the likely one suggested, the known ones listed
        (MODEL + "contxt_length = 1\n", "models[0].contxt_length: unknown key", "did you mean 'context_length'?"),
        (MODEL + "size = 1\n", "models[0].size: unknown key", "the keys of [[models]] are id, path, hub,"),
        ("host_memmory = 1\n", "host_memmory: unknown key", "did you mean 'host_memory'?"),
        (MODEL + "[models.options]\nparallel = 2\n", "models[0].options: unknown key", "parallel"),
        # Hub tokens
        (MODEL + 'token = "hf_x"\n', "models[0].token: Hub tokens are never read from the config file", "HF_TOKEN"),
        ('token = "hf_x"\n', "token: Hub tokens are never read", "HF_TOKEN"),
        # types
        (MODEL + 'context_length = "8192"\n', "models[0].context_length: must be an integer", "a string ('8192')"),
        (MODEL + "parallel = 2.0\n", "models[0].parallel: must be an integer", "a float (2.0)"),
        (MODEL + "parallel = true\n", "models[0].parallel: must be an integer", "a boolean (True)"),
        (MODEL + "pinned = 1\n", "models[0].pinned: must be a boolean", "an integer (1)"),
        (MODEL + "on_demand = \"yes\"\n", "models[0].on_demand: must be a boolean", "'yes'"),
        ('[[models]]\nid = 7\npath = "a"\n', "models[0].id: must be a string", "an integer (7)"),
        ('[[models]]\nid = "a"\npath = ["a"]\n', "models[0].path: must be a string", "an array"),
        (MODEL + "chat_template = 1979-05-27\n", "models[0].chat_template: must be a string", "a date or time"),
        ("default_model = 1\n" + MODEL, "default_model: must be a string", "an integer"),
        ("[models]\nid = \"a\"\n", "models: must be an array of tables", "[[models]] (two brackets)"),
        ("models = [1, 2]\n", "models: must be an array of tables", "[[models]]"),
        # choices
        (MODEL + 'cache_type = "q8"\n', "models[0].cache_type: 'q8' is not one of", "f32, f16, bf16, q8_0"),
        (MODEL + 'mode = "embed"\n', "models[0].mode: 'embed' is not one of", "chat, embedding, rerank"),
        (MODEL + 'speculative = "on"\n', "models[0].speculative: 'on' is not one of", "ngram-simple"),
        # ids
        ('[[models]]\npath = "a"\n', "models[0].id: every model needs an id", ""),
        ('[[models]]\nid = ""\npath = "a"\n', "models[0].id: '' is not a model id", "1-64"),
        ('[[models]]\nid = "-a"\npath = "a"\n', "models[0].id: '-a' is not a model id", "starting with a letter"),
        ('[[models]]\nid = "a b"\npath = "a"\n', "models[0].id: 'a b' is not a model id", ""),
        (f'[[models]]\nid = "{"x" * 65}"\npath = "a"\n', "models[0].id: ", "1-64"),
        (MODEL + MODEL, "models[1].id: 'a' is already the id of models[0]", "ids must differ"),
        (MODEL + '[[models]]\nid = "A"\npath = "b"\n', "models[1].id: 'A' is already the id of models[0] ('a')",
         "ignoring case"),
        # sources
        ('[[models]]\nid = "a"\n', "models[0]: needs path =", "hub = \"owner/name:VARIANT\""),
        (MODEL + 'hub = "o/r"\n', "models[0]: both path and hub are set", "one of them"),
        ('[[models]]\nid = "a"\npath = ""\n', "models[0].path: is empty", ""),
        (MODEL + 'mmproj = ""\n', "models[0].mmproj: is empty", "leave the key out"),
        (MODEL + 'revision = "main"\n', "models[0].revision: applies to hub models only", ""),
        ('[[models]]\nid = "a"\nhub = "justaname"\n', "models[0].hub: 'justaname' is not a Hub repo id", "owner/name"),
        ('[[models]]\nid = "a"\nhub = "o/r:"\n', "models[0].hub: 'o/r:' has nothing after ':'", ""),
        ('[[models]]\nid = "a"\nhub = "o/r:Q4 K"\n', "models[0].hub: 'Q4 K' is not a variant name", ""),
        ('[[models]]\nid = "a"\nhub = "o/r"\nrevision = "../x"\n', "models[0].revision: '../x' is not a revision",
         ""),
        # numbers out of range: the shared load rules (check_load_options), attributed to their key
        (MODEL + "parallel = 0\n", "models[0].parallel: parallel must be at least 1", ""),
        (MODEL + "context_length = -1\n", "models[0].context_length: ", "0 (automatic) or positive"),
        (MODEL + "threads = -2\n", "models[0].threads: ", "got -2"),
        (MODEL + "batch_size = 4096\n", "models[0].batch_size: ", "1..2048"),
        # sizes and durations
        ('host_memory = "12G"\n', "host_memory: '12G' is not a size", "GiB"),
        ("host_memory = -1\n", "host_memory: -1 is negative", ""),
        ("host_memory = 1.5e9\n", "host_memory: a size is an integer of bytes", "a float"),
        ('host_memory = "-1GiB"\n', "host_memory: '-1GiB' is not a size", ""),
        ('host_memory = "9000PiB"\n', "host_memory: '9000PiB' is larger than the largest size", "8 EiB"),
        (MODEL + 'idle_ttl = "10M"\n', "models[0].idle_ttl: '10M' is not a duration", "lowercase"),
        (MODEL + 'idle_ttl = "30m1h"\n', "models[0].idle_ttl: '30m1h' is not a duration", "in that order"),
        (MODEL + 'idle_ttl = "90"\n', "models[0].idle_ttl: '90' is not a duration", "a number of seconds"),
        (MODEL + "idle_ttl = -5\n", "models[0].idle_ttl: a duration must be 0 (never)", "-5.0"),
        (MODEL + "idle_ttl = nan\n", "models[0].idle_ttl: a duration must be 0 (never)", "nan"),
        (MODEL + "idle_ttl = inf\n", "models[0].idle_ttl: ", "8760h"),
        (MODEL + "idle_ttl = true\n", "models[0].idle_ttl: a duration is a number of seconds", "a boolean"),
        # contradictions
        (MODEL + 'pinned = true\nidle_ttl = "10m"\n', "models[0].idle_ttl: 10m contradicts pinned = true",
         "never unloaded"),
        (MODEL + 'pooling = "mean"\n', "models[0].pooling: ", "mode embedding"),
        (MODEL + 'mode = "rerank"\npooling = "mean"\n', "models[0].pooling: ", "a rerank model"),
        ('default_model = "b"\n' + MODEL, "default_model: 'b' names no declared model", "the ids are a"),
        ('default_model = "A"\n' + MODEL, "default_model: 'A' names no declared model", "did you mean 'a'?"),
        ('default_model = "a"\n', "default_model: 'a' names no declared model", "no model is declared"),
    ],
)
def test_each_error_names_the_file_the_table_and_the_key(tmp_path, text, start, says):
    message = refused(tmp_path, text)
    assert message.startswith(start), message
    assert says in message, message


def test_an_error_in_a_later_model_counts_its_table(tmp_path):
    message = refused(tmp_path, MODEL + '[[models]]\nid = "b"\npath = "b"\n[[models]]\nid = "c"\nhub = "o/r"\nparalel = 2\n')
    assert message.startswith("models[2].paralel: unknown key (did you mean 'parallel'?)")


def test_a_rule_across_options_is_reported_for_the_table(monkeypatch):
    # check_load_options is shared with the Load RPC and may gain rules over
    # several options: one that no single key breaks names the model's table.
    def across(options):
        if options.parallel > 1 and options.threads == 1:
            raise InvalidArgument("parallel slots need more than one thread")

    monkeypatch.setattr(model_config, "check_load_options", across)
    with pytest.raises(InvalidArgument, match=r"^f: models\[0\]: parallel slots need more than one thread$"):
        service_config({"models": [{"id": "a", "path": "a", "parallel": 2, "threads": 1}]}, origin="f")


def test_service_config_alone_starts_its_errors_with_the_origin():
    with pytest.raises(InvalidArgument, match=r"^from the CLI: models\[0\]\.id: "):
        service_config({"models": [{"path": "x"}]}, origin="from the CLI")
    with pytest.raises(InvalidArgument, match=r"^models\[0\]\.id: "):
        service_config({"models": [{"path": "x"}]}, origin="")


def test_paths_stay_as_written_until_the_reader_resolves_them():
    config = service_config({"models": [{"id": "a", "path": "rel/a.gguf"}]}, origin="x")
    assert config.models[0].source == "rel/a.gguf"


# ---------------------------------------------------------------- the dataclasses guard themselves


def test_a_model_spec_made_in_code_meets_the_same_rules():
    # The lead builds specs from the command line too: the rules do not depend on the file.
    with pytest.raises(InvalidArgument, match="^id: "):
        ModelSpec(id="", source="a.gguf")
    with pytest.raises(InvalidArgument, match="^path: "):
        ModelSpec(id="a", source="")
    with pytest.raises(InvalidArgument, match="^parallel: "):
        ModelSpec(id="a", source="a.gguf", options=LoadOptions(parallel=0))
    with pytest.raises(InvalidArgument, match="^batch_size: "):
        ModelSpec(id="a", source="a.gguf", options=LoadOptions(batch_size=9999, parallel=2))
    with pytest.raises(InvalidArgument, match="^idle_ttl: .*contradicts pinned"):
        ModelSpec(id="a", source="a.gguf", pinned=True, idle_ttl_s=1)
    with pytest.raises(InvalidArgument, match="^idle_ttl: "):
        ModelSpec(id="a", source="a.gguf", idle_ttl_s=float("inf"))
    with pytest.raises(InvalidArgument, match="^host_memory: "):
        ServiceConfig(models=(), host_memory_bytes=-1)
    assert ModelSpec(id="a.b_c-9", source=HubSource("o/r")).on_demand


# ---------------------------------------------------------------- sizes

UNITS = ["B", "kB", "MB", "GB", "TB", "PB", "KiB", "MiB", "GiB", "TiB", "PiB"]
FACTORS = dict(zip(UNITS, [1, 10**3, 10**6, 10**9, 10**12, 10**15, 2**10, 2**20, 2**30, 2**40, 2**50], strict=True))


@pytest.mark.parametrize(("text", "size"), [
    ("512MiB", 512 * 2**20), ("12GiB", 12 * GIB), ("1.5GB", 1_500_000_000), ("1.5 gb", 1_500_000_000),
    ("0B", 0), ("7b", 7), ("1kb", 1000), ("1KB", 1000), ("1kib", 1024), ("0.5KiB", 512), ("1.0009kB", 1000),
])
def test_sizes_read_as_written(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "12", "12G", "GiB", "1,5GB", "1.GB", "-1GiB", "1e9B", "12 GiBs", "0x10B",
                                 "\u0663GiB"])
def test_malformed_sizes_are_refused(bad):
    with pytest.raises(InvalidArgument, match="is not a size"):
        parse_size(bad)


@given(st.integers(0, MAX_SIZE))
def test_format_size_round_trips_exactly(size):
    assert parse_size(format_size(size)) == size


@given(st.integers(1, MAX_SIZE))
def test_format_size_picks_the_largest_unit_that_is_exact(size):
    text = format_size(size)
    amount, unit = int(re.match(r"\d+", text)[0]), text.lstrip("0123456789")
    assert amount * FACTORS[unit] == size
    assert all(size % f or size // f >= amount for f in FACTORS.values())


@given(st.decimals(0, 1000, places=3), st.decimals(0, 1000, places=3), st.sampled_from(UNITS))
def test_sizes_grow_with_the_number(a, b, unit):
    low, high = sorted((a, b))
    assert parse_size(f"{low}{unit}") <= parse_size(f"{high}{unit}")


@given(st.integers(0, 1000), st.sampled_from(["k", "M", "G", "T", "P"]))
def test_a_binary_unit_is_never_smaller_than_its_decimal_namesake(amount, prefix):
    binary = parse_size(f"{amount}{prefix.upper()}iB")
    assert binary >= parse_size(f"{amount}{prefix}B")
    assert binary == amount * FACTORS[f"{prefix.upper()}iB"]


@given(st.one_of(st.integers(), st.decimals(0, 10**20, places=2).map(lambda d: f"{d}PiB")))
def test_a_size_read_is_always_within_bounds(value):
    try:
        size = parse_size(value)
    except InvalidArgument:
        return
    assert 0 <= size <= MAX_SIZE


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400), ("1h 30m 15s", 5415), ("1.5h", 5400),
    ("0.25s", 0.25), ("0s", 0), ("2m0.5s", 120.5),
])
def test_durations_read_as_written(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("value", [90, 90.0, 0])
def test_numbers_are_seconds(value):
    assert parse_duration(value) == value


@pytest.mark.parametrize("bad", ["", "90", "1d", "10M", "1H", "30m1h", "1h1h", "-1s", "s", "1 h", "1e3s",
                                 "\u0663s"])
def test_malformed_durations_are_refused(bad):
    with pytest.raises(InvalidArgument, match="is not a duration"):
        parse_duration(bad)


@given(st.floats(0, MAX_DURATION_S))
def test_format_duration_round_trips_exactly(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(0, 8759), st.integers(0, 59), st.integers(0, 59))
def test_a_duration_is_the_sum_of_its_parts(h, m, s):
    assert parse_duration(f"{h}h{m}m{s}s") == 3600 * h + 60 * m + s
    assert format_duration(3600 * h + 60 * m + s) == "".join(
        f"{n}{u}" for n, u in ((h, "h"), (m, "m"), (s, "s")) if n) or "0s"


@given(st.integers(0, 500), st.integers(0, 500), st.sampled_from(["h", "m", "s"]))
def test_durations_grow_with_each_part(a, b, unit):
    low, high = sorted((a, b))
    assert parse_duration(f"{low}{unit}") <= parse_duration(f"{high}{unit}")
    assert parse_duration(f"1h{low}m") <= parse_duration(f"1h{high}m")


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**12), 10**12)))
def test_a_duration_read_is_always_within_bounds(value):
    try:
        seconds = parse_duration(value)
    except InvalidArgument:
        return
    assert 0 <= seconds <= MAX_DURATION_S
