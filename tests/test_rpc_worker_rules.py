"""RPC workers' pure rules: addresses, the operator's allowlist, planning over workers, the flags."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from llamagate.adapters.llama_argv import server_arguments
from llamagate.domain.errors import InvalidArgument, PermissionDenied, WorkerUnavailable, WorkerUnusable
from llamagate.domain.gpus import GpuInfo
from llamagate.domain.launch import LaunchSpec, check_load_options
from llamagate.domain.load_options import LoadOptions
from llamagate.domain.model_config import service_config
from llamagate.domain.placement import HOST, footprint
from llamagate.domain.planning import budget, make_plan
from llamagate.domain.rpc_workers import (
    MAX_WORKERS,
    WorkerDevice,
    WorkerReport,
    WorkerState,
    check_addresses,
    check_allowed,
    load_blocker,
    parse_address,
    parse_allowlist,
)

MIB = 1 << 20
GIB = 1 << 30


def kv(context: int) -> int:
    return context * 64 * 1024  # 64 KiB a token


def worker(address: str, *devices: tuple[int, int], state: WorkerState = WorkerState.READY) -> WorkerReport:
    return WorkerReport(address, state, tuple(WorkerDevice(i, f, t) for i, (f, t) in enumerate(devices)), "7.0.0")


# ---------------------------------------------------------------- addresses

hosts = st.one_of(
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True).filter(
        lambda h: not h.endswith("-")),
)
ports = st.integers(1, 65535)


@given(hosts, ports)
def test_a_well_formed_address_reads_back_as_itself(host, port):
    address = parse_address(f" {host.upper()}:{port} ")
    assert address == f"{host}:{port}" and parse_address(address) == address


@pytest.mark.parametrize("text, says", [
    ("10.0.0.2", "host:port"), (":50052", "host:port"), ("10.0.0.2:", "port"), ("10.0.0.2:0", "port"),
    ("10.0.0.2:65536", "port"), ("[::1]:50052", "IPv6"), ("fe80::1:50052", "IPv6"), ("a b:1", "host name"),
    ("-x:1", "host name"), ("10.0.0.2:５", "port"),
])
def test_a_malformed_address_is_invalid_and_says_why(text, says):
    with pytest.raises(InvalidArgument) as caught:
        parse_address(text)
    assert says in str(caught.value)


def test_a_load_names_each_worker_once_well_formed_and_at_most_sixteen():
    check_addresses(["10.0.0.2:50052", "host-b:50052"])
    with pytest.raises(InvalidArgument) as caught:
        check_load_options(LoadOptions(rpc_workers=("10.0.0.2:50052", "10.0.0.2:x")))
    assert caught.value.field == "options.rpc_workers[1]"
    with pytest.raises(InvalidArgument, match="twice"):
        check_addresses(["A:1", "a:1"])
    with pytest.raises(InvalidArgument, match=str(MAX_WORKERS)):
        check_addresses([f"h:{p}" for p in range(1, MAX_WORKERS + 2)])


def test_only_workers_the_operator_lists_may_be_named():
    allowed = parse_allowlist(" 10.0.0.2:50052, worker-b:50052 ,")
    assert allowed == {"10.0.0.2:50052", "worker-b:50052"}
    check_allowed(["WORKER-B:50052"], allowed)
    with pytest.raises(PermissionDenied, match=r"rpc_workers\[1\]: 10.0.0.3:50052 is not one"):
        check_allowed(["10.0.0.2:50052", "10.0.0.3:50052"], allowed)
    with pytest.raises(PermissionDenied, match="LLAMAGATE_RPC_WORKERS is empty"):
        check_allowed(["10.0.0.2:50052"], frozenset())
    with pytest.raises(ValueError, match="LLAMAGATE_RPC_WORKERS"):
        parse_allowlist("10.0.0.2")


def test_a_worker_that_cannot_serve_a_load_names_itself_and_says_whether_to_retry():
    down = load_blocker(worker("10.0.0.2:1", state=WorkerState.UNREACHABLE))
    assert isinstance(down, WorkerUnavailable) and down.metadata == {"worker": "10.0.0.2:1"}
    assert isinstance(load_blocker(worker("h:1", state=WorkerState.BUSY)), WorkerUnavailable)
    assert isinstance(load_blocker(worker("h:1", state=WorkerState.INCOMPATIBLE)), WorkerUnusable)
    held = load_blocker(worker("h:1", (GIB, GIB), state=WorkerState.HELD), held_by_other="chat")
    assert isinstance(held, WorkerUnusable) and "serves model chat" in str(held)
    assert load_blocker(worker("h:1", (GIB, GIB), state=WorkerState.HELD)) is None
    assert isinstance(load_blocker(worker("h:1")), WorkerUnusable)  # no devices


# ---------------------------------------------------------------- planning over workers

devices = st.lists(st.tuples(st.integers(0, 64 * GIB), st.integers(0, 64 * GIB)).map(sorted), min_size=1,
                   max_size=4)


@given(st.lists(devices, min_size=1, max_size=3), st.integers(0, 4 * GIB), st.sampled_from([0, 2048, 8192]))
def test_over_workers_a_plan_that_fits_holds_in_their_budget_split_in_proportion(workers, weights, requested):
    reports = [worker(f"10.0.0.{i}:50052", *[(free, total) for free, total in ds]) for i, ds in enumerate(workers)]
    plan = make_plan([], 0, weights, kv, requested, 8192, reports)
    free = [d.free_bytes for r in reports for d in r.devices]

    assert len(plan.workers) == len(free)
    if not plan.fits:
        assert not plan.offload_all and all(s.weights_bytes == 0 for s in plan.workers)
        return
    assert plan.offload_all and plan.gpus == ()  # no GPU here: every layer on the workers
    assert weights + kv(plan.context_length) <= budget(free)
    assert weights - len(free) <= sum(s.weights_bytes for s in plan.workers) <= weights
    by_free = sorted(plan.workers, key=lambda s: s.free_bytes)
    assert [s.weights_bytes for s in by_free] == sorted(s.weights_bytes for s in by_free)


@given(devices, st.integers(1, 16 * GIB), st.integers(0, 4 * GIB))
def test_more_memory_on_a_worker_never_means_a_smaller_context(ds, more, weights):
    before = make_plan([], 0, weights, kv, 0, 32768, [worker("w:1", *ds)])
    grown = [(free + more, total + more) for free, total in ds]
    after = make_plan([], 0, weights, kv, 0, 32768, [worker("w:1", *grown)])
    assert after.context_length >= before.context_length and after.fits >= before.fits


@given(devices, st.sampled_from([WorkerState.BUSY, WorkerState.UNREACHABLE, WorkerState.INCOMPATIBLE]))
def test_a_worker_that_did_not_answer_counts_nothing(ds, state):
    ready = worker("w:1", *ds)
    alone = make_plan([], 0, GIB, kv, 0, 8192, [ready])
    beside = make_plan([], 0, GIB, kv, 0, 8192, [ready, worker("w:2", state=state)])
    assert (beside.context_length, beside.fits) == (alone.context_length, alone.fits)
    assert any(f"w:2 is {state.value}" in reason and "would fail" in reason for reason in beside.reasons)


def test_local_gpus_and_workers_are_one_pool_and_the_gpus_are_pinned():
    gpus = [GpuInfo(1, 4 * GIB), GpuInfo(0, 4 * GIB)]
    plan = make_plan(gpus, 0, 10 * GIB, kv, 0, 8192, [worker("w:1", (8 * GIB, 24 * GIB))])
    assert plan.fits and plan.offload_all and plan.gpus == (0, 1)
    assert all(abs(s.weights_bytes - 10 * GIB // 4) <= 1 for s in plan.shares)  # 4 of 16 GiB free each
    assert abs(plan.workers[0].weights_bytes - 10 * GIB // 2) <= 1  # 8 of 16 GiB
    assert make_plan(gpus, 0, 10 * GIB, kv, 0, 8192, []).fits is False  # the GPUs alone would not do


def test_a_cpu_workers_figure_is_flagged_as_its_ram():
    plan = make_plan([], 0, GIB, kv, 0, 8192, [worker("w:1", (16 * GIB, 16 * GIB)), worker("w:2", (GIB, 8 * GIB))])
    assert [s.memory_is_ram for s in plan.workers] == [True, False]
    assert any("RAM, not its free memory" in r and "w:1" in r for r in plan.reasons)
    assert any("a CPU worker's figure is its RAM" in r for r in plan.reasons)


def test_a_model_on_workers_holds_none_of_this_machines_memory():
    on_workers = make_plan([], 8 * GIB, GIB, kv, 0, 8192, [worker("w:1", (8 * GIB, 8 * GIB))])
    assert footprint(on_workers, 256 * MIB) == {HOST: 256 * MIB}
    too_big = make_plan([], 8 * GIB, 64 * GIB, kv, 0, 8192, [worker("w:1", (GIB, GIB))])
    assert footprint(too_big)[HOST] == too_big.weights_bytes + too_big.kv_bytes  # --fit on: some stays here


# ---------------------------------------------------------------- the flags and the config file

def test_llama_server_gets_the_workers_and_every_layer_when_the_plan_holds():
    spec = LaunchSpec(model_path="/m.gguf", context_length=4096, offload_all=True,
                      rpc_workers=("127.0.0.1:50052", "127.0.0.1:50053"))
    args = server_arguments(spec, port=1, template_file=None)
    at = args.index("--rpc")
    assert args[at + 1] == "127.0.0.1:50052,127.0.0.1:50053"
    assert args[args.index("-ngl") + 1] == "all" and args[args.index("--fit") + 1] == "off"
    assert "--rpc" not in server_arguments(LaunchSpec(model_path="/m.gguf", context_length=0), port=1,
                                           template_file=None)


def test_the_config_file_names_a_models_workers():
    config = service_config({"models": [{"id": "big", "path": "/m.gguf",
                                         "rpc_workers": ["10.0.0.2:50052", "10.0.0.3:50052"]}]}, origin="x.toml")
    assert config.models[0].options.rpc_workers == ("10.0.0.2:50052", "10.0.0.3:50052")
    with pytest.raises(InvalidArgument, match=r"x.toml: models\[0\].rpc_workers\[1\]: must be a string"):
        service_config({"models": [{"id": "big", "path": "/m.gguf", "rpc_workers": ["h:1", 2]}]}, origin="x.toml")
    with pytest.raises(InvalidArgument, match=r"models\[0\].rpc_workers: 'h' is not host:port"):
        service_config({"models": [{"id": "big", "path": "/m.gguf", "rpc_workers": ["h"]}]}, origin="x.toml")


@given(st.integers(1, 64 * GIB))
def test_a_ready_worker_with_free_below_total_is_not_ram(free):
    assume(free < 64 * GIB)
    assert not WorkerDevice(0, free, 64 * GIB).memory_is_ram and WorkerDevice(0, free, free).memory_is_ram
