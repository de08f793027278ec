"""Models from the Hub, end to end: the real service, the real huggingface_hub
client and the real llama-server, against the local Hub of tests/hub_server.py
(issue 11). Counting happens at the endpoint."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import grpc
import pytest
from conftest import RunningService
from e2e import ask, assert_code, error_details, wait_until
from fakes import FakeMemory
from hub_server import (
    ACCESS_TOKEN,
    GATED_REPO,
    NO_GGUF_REPO,
    OTHER_TOKEN,
    PRIVATE_REPO,
    PROJECTOR_BF16,
    PROJECTOR_F16,
    SINGLE_REPO,
    SMOLLM2_Q4_1,
    SMOLLM2_Q8_0,
    SPLIT_REPO,
    SPLIT_SHARDS,
    TINY_REPO,
    VARIANTS_REPO,
    VISION_REPO,
    content,
    sha256,
)

from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc

SMOLLM2_HEADER = 1_785_664  # bytes before SmolLM2's tensor data


class Disk:
    """The filesystem port with a chosen amount of free space."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.asked: list[str] = []

    def free_bytes(self, directory: str) -> int:
        self.asked.append(directory)
        return self.free


@pytest.fixture
def running(hf_cache, llama_cpp_tree):
    """A service whose huggingface_hub talks to the local Hub, with an empty cache."""
    services: list[RunningService] = []

    def start(**parts) -> tuple[RunningService, pb_grpc.LlamaGateServiceStub]:
        service = RunningService(**parts)
        services.append(service)
        return service, pb_grpc.LlamaGateServiceStub(grpc.insecure_channel(service.address))

    yield start
    for service in services:
        service.close()


def hub_load(stub, repo: str, variant: str = "", timeout: float = 300, model: str = "",
             **source) -> list[pb.LoadModelResponse]:
    request = pb.LoadModelRequest(hub=pb.HubSource(repo=repo, variant=variant, **source), model=model)
    return list(stub.LoadModel(request, timeout=timeout))


def hub_plan(stub, repo: str, variant: str = "", **source) -> pb.PlanModelResponse:
    return stub.PlanModel(pb.PlanModelRequest(hub=pb.HubSource(repo=repo, variant=variant, **source)), timeout=60)


def phases(events) -> list[int]:
    return [e.phase for e in events]


def answer(stub) -> str:
    events = list(stub.Generate(ask("Say hello.", max_tokens=8, temperature=0), timeout=60))
    assert events[-1].WhichOneof("event") == "done"
    return "".join(e.content_delta for e in events)


# -- plan before download ---------------------------------------------------------------


def test_plan_reads_only_the_header_by_range_and_equals_the_plan_after_download(running, hub):
    _, stub = running(memory=FakeMemory(host_free=8 << 30))  # the same memory for both plans
    planned = hub_plan(stub, SINGLE_REPO)
    requests = hub.requests_for(SINGLE_REPO, SMOLLM2_Q4_1)
    bodies = hub.body_requests(SINGLE_REPO, SMOLLM2_Q4_1)
    assert requests and all(r.range is not None for r in requests)  # nothing but range reads of the file
    assert 1 <= len(bodies) <= 3
    assert SMOLLM2_HEADER <= hub.bytes_served(SINGLE_REPO, SMOLLM2_Q4_1) <= 2 * SMOLLM2_HEADER
    assert planned.hub.variant == "Q4_1" and planned.hub.bytes_to_download == hub.size(SINGLE_REPO, SMOLLM2_Q4_1)
    assert planned.hub.commit == hub.commit(SINGLE_REPO) and planned.hub.fits_disk

    events = hub_load(stub, SINGLE_REPO)
    local = events[-1].model.path
    assert sha256(local) == hub.sha256(SINGLE_REPO, SMOLLM2_Q4_1)
    after = stub.PlanModel(pb.PlanModelRequest(path=local), timeout=60)
    assert after.plan == planned.plan
    seen = len(hub.requests_for(SINGLE_REPO, SMOLLM2_Q4_1))
    again = hub_plan(stub, SINGLE_REPO)  # now from the cache: no request for the file at all
    assert again.plan == planned.plan and again.hub.bytes_to_download == 0
    assert len(hub.requests_for(SINGLE_REPO, SMOLLM2_Q4_1)) == seen


def test_a_model_too_big_for_the_memory_fails_before_any_weight_is_fetched(running, hub):
    _, stub = running(memory=FakeMemory(host_free=20 << 20))
    with pytest.raises(grpc.RpcError) as caught:
        hub_load(stub, SINGLE_REPO)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_details(caught.value)["ErrorInfo"]
    assert info.reason == "MODEL_TOO_LARGE" and int(info.metadata["available_bytes"]) == 20 << 20
    assert all(r.range is not None for r in hub.requests_for(SINGLE_REPO, SMOLLM2_Q4_1))
    assert hub.bytes_served(SINGLE_REPO, SMOLLM2_Q4_1) <= 2 * SMOLLM2_HEADER
    assert stub.GetStatus(pb.GetStatusRequest()).model.state == pb.MODEL_STATE_EMPTY


# -- load and generate ------------------------------------------------------------------


def test_a_hub_model_downloads_with_progress_loads_and_generates(running, hub, hf_cache):
    _, stub = running()
    events = hub_load(stub, SINGLE_REPO)
    size = hub.size(SINGLE_REPO, SMOLLM2_Q4_1)
    resolved = [e for e in events if e.phase == pb.LOAD_PHASE_RESOLVING and e.HasField("hub")]
    assert resolved and resolved[0].hub.files[0].path == SMOLLM2_Q4_1
    downloading = [e for e in events if e.phase == pb.LOAD_PHASE_DOWNLOADING]
    assert downloading and downloading[-1].download.bytes_done == size == downloading[-1].download.bytes_total
    assert [e.download.bytes_done for e in downloading] == sorted(e.download.bytes_done for e in downloading)
    assert downloading[-1].download.file == SMOLLM2_Q4_1 and not downloading[-1].download.from_cache
    assert phases(events).index(pb.LOAD_PHASE_DOWNLOADING) < phases(events).index(pb.LOAD_PHASE_STARTING)
    ready = events[-1].model
    assert ready.state == pb.MODEL_STATE_READY and ready.id == "SmolLM2-135M-Instruct-Q4_1"
    assert Path(ready.path).is_relative_to(hf_cache)
    assert answer(stub)

    hub.reset()  # loaded again: everything from the cache, no body at all
    events = hub_load(stub, SINGLE_REPO)
    assert not hub.body_requests(SINGLE_REPO, SMOLLM2_Q4_1)
    assert [e.download.from_cache for e in events if e.phase == pb.LOAD_PHASE_DOWNLOADING] == [True]


def test_a_split_model_downloads_every_shard_and_loads(running, hub):
    _, stub = running()
    events = hub_load(stub, SPLIT_REPO, "Q4_1")
    files = [f.path for f in next(e.hub for e in events if e.HasField("hub")).files]
    assert files == list(SPLIT_SHARDS)
    ready = events[-1].model
    assert ready.path.endswith(SPLIT_SHARDS[0].rsplit("/", 1)[1]) and ready.id == "SmolLM2-135M-Instruct-Q4_1"
    for shard in SPLIT_SHARDS:
        local = Path(ready.path).parent / shard.rsplit("/", 1)[1]
        assert sha256(local) == hub.sha256(SPLIT_REPO, shard)
    assert {e.download.file for e in events if e.phase == pb.LOAD_PHASE_DOWNLOADING} == set(SPLIT_SHARDS)


def test_a_vision_model_brings_its_f16_projector_not_the_bf16_one(running, hub):
    _, stub = running()
    events = hub_load(stub, VISION_REPO)
    assert [f.path for f in next(e.hub for e in events if e.HasField("hub")).files] == [SMOLLM2_Q4_1, PROJECTOR_F16]
    assert events[-1].model.capabilities.vision
    assert hub.body_requests(VISION_REPO, PROJECTOR_F16) and not hub.requests_for(VISION_REPO, PROJECTOR_BF16)


@pytest.mark.parametrize(("variant", "file"), [
    ("F16", "Tiny-F16.gguf"), ("BF16", "Tiny-BF16.gguf"), ("bf16", "Tiny-BF16.gguf"), ("Q4_K_M", "Tiny-Q4_K_M.gguf"),
    ("UD-Q4_K_XL", "Tiny-UD-Q4_K_XL.gguf"), ("", "Tiny-Q4_K_M.gguf"),
])
def test_a_variant_is_a_whole_token_of_the_file_name(running, hub, variant, file):
    _, stub = running()
    planned = hub_plan(stub, TINY_REPO, variant)
    assert [f.path for f in planned.hub.files] == [file]
    assert planned.plan.weights_bytes == hub.size(TINY_REPO, file)


# -- the disk ---------------------------------------------------------------------------


def test_a_disk_too_small_for_the_variant_takes_the_smallest_that_fits_and_says_so(running, hub):
    q4, q8 = hub.size(VARIANTS_REPO, SMOLLM2_Q4_1), hub.size(VARIANTS_REPO, SMOLLM2_Q8_0)
    disk = Disk(free=(q4 + q8) // 2)
    _, stub = running(disk=disk)
    planned = hub_plan(stub, VARIANTS_REPO, "Q8_0")
    assert planned.hub.variant == "Q8_0" and not planned.hub.fits_disk
    events = hub_load(stub, VARIANTS_REPO, "Q8_0")
    resolved = next(e for e in events if e.HasField("hub"))
    assert (resolved.hub.variant, resolved.hub.requested_variant) == ("Q4_1", "Q8_0")
    assert "Q8_0" in resolved.message and "Q4_1" in resolved.message and "smallest variant that fits" in resolved.message
    assert events[-1].model.id == "SmolLM2-135M-Instruct-Q4_1"
    assert all(r.range for r in hub.body_requests(VARIANTS_REPO, SMOLLM2_Q8_0))  # PlanModel's header reads only
    assert disk.asked and all(Path(d).name == "hub" for d in disk.asked)  # the Hub cache's directory


def test_no_variant_fitting_the_disk_is_resource_exhausted_and_fetches_nothing(running, hub, hf_cache):
    _, stub = running(disk=Disk(free=1 << 20))
    with pytest.raises(grpc.RpcError) as caught:
        hub_load(stub, VARIANTS_REPO, "Q8_0")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_details(caught.value)["ErrorInfo"]
    assert info.reason == "DISK_FULL" and info.metadata["available_bytes"] == str(1 << 20)
    assert info.metadata["where"] == str(hf_cache) and str(hf_cache) in caught.value.details()
    assert int(info.metadata["needed_bytes"]) == hub.size(VARIANTS_REPO, SMOLLM2_Q8_0)
    assert not hub.body_requests(VARIANTS_REPO)


# -- cancellation and resume ------------------------------------------------------------


def _download_until(hub, events, filename: str, held_at: int):
    """Read the stream until the endpoint holds the body of ``filename`` at ``held_at`` bytes."""
    hub.hold(filename, held_at)
    for event in events:
        if event.phase == pb.LOAD_PHASE_DOWNLOADING or hub.held.is_set():
            break
    assert wait_until(hub.held.is_set, timeout=60)


def test_a_cancelled_download_stops_and_the_next_load_resumes_it(running, hub, hf_cache):
    _, stub = running()
    size = hub.size(SINGLE_REPO, SMOLLM2_Q4_1)
    held_at = 24 << 20
    call = stub.LoadModel(pb.LoadModelRequest(hub=pb.HubSource(repo=SINGLE_REPO)), timeout=300)
    _download_until(hub, call, SMOLLM2_Q4_1, held_at)
    call.cancel()
    downloads = [r for r in hub.body_requests(SINGLE_REPO, SMOLLM2_Q4_1) if r.range in (None, "bytes=0-")]
    assert downloads, [r.range for r in hub.body_requests(SINGLE_REPO, SMOLLM2_Q4_1)]
    first = downloads[-1]
    assert wait_until(first.finished.is_set, timeout=10) and first.aborted  # the service hung up
    assert wait_until(lambda: stub.GetStatus(pb.GetStatusRequest()).model.state == pb.MODEL_STATE_EMPTY)

    hub.reset()
    events = hub_load(stub, SINGLE_REPO)
    assert events[-1].model.state == pb.MODEL_STATE_READY
    (resumed,) = [r for r in hub.body_requests(SINGLE_REPO, SMOLLM2_Q4_1) if r.range and r.range.endswith("-")]
    start = int(resumed.range.removeprefix("bytes=").removesuffix("-"))
    # what the service had read off the socket when cancelled (a prefix of the held part) is not fetched again
    assert 0 < start <= first.body_bytes == held_at and resumed.body_bytes == size - start < size
    assert sha256(events[-1].model.path) == hub.sha256(SINGLE_REPO, SMOLLM2_Q4_1)
    assert answer(stub)


def test_unload_stops_a_download_and_a_later_load_supersedes_one(running, hub, smollm2_path):
    _, stub = running()
    call = stub.LoadModel(pb.LoadModelRequest(hub=pb.HubSource(repo=SINGLE_REPO)), timeout=300)
    _download_until(hub, call, SMOLLM2_Q4_1, 8 << 20)
    assert not stub.UnloadModel(pb.UnloadModelRequest(), timeout=30).pid
    with pytest.raises(grpc.RpcError) as caught:
        list(call)
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    held = [r for r in hub.body_requests(SINGLE_REPO, SMOLLM2_Q4_1) if r.body_bytes >= 8 << 20]
    assert held and wait_until(held[0].finished.is_set, timeout=10) and held[0].aborted

    hub.reset()
    # a later load of the same id supersedes the download
    call = stub.LoadModel(pb.LoadModelRequest(hub=pb.HubSource(repo=VARIANTS_REPO, variant="Q8_0"), model="m"),
                          timeout=300)
    _download_until(hub, call, SMOLLM2_Q8_0, 8 << 20)
    local = list(stub.LoadModel(pb.LoadModelRequest(path=str(smollm2_path), model="m"), timeout=300))
    assert local[-1].model.state == pb.MODEL_STATE_READY
    assert assert_code(lambda: call, grpc.StatusCode.CANCELLED)
    held = [r for r in hub.body_requests(VARIANTS_REPO, SMOLLM2_Q8_0) if r.body_bytes >= 8 << 20]
    assert held and wait_until(held[0].finished.is_set, timeout=10) and held[0].aborted


def test_the_loaded_model_keeps_serving_while_its_replacement_downloads(running, hub, smollm2_path):
    _, stub = running()
    list(stub.LoadModel(pb.LoadModelRequest(path=str(smollm2_path)), timeout=300))
    results: list[list[pb.LoadModelResponse]] = []
    hub.hold(SMOLLM2_Q4_1, 8 << 20)
    replacing = "SmolLM2-135M-Instruct.Q4_1"  # the id the local file loaded as: the Hub model replaces it
    loader = threading.Thread(target=lambda: results.append(hub_load(stub, SINGLE_REPO, model=replacing)))
    loader.start()
    assert wait_until(hub.held.is_set, timeout=60)
    status = stub.GetStatus(pb.GetStatusRequest()).model
    assert status.state == pb.MODEL_STATE_READY and status.path == str(smollm2_path.resolve())
    assert answer(stub)  # the old model answers during the download
    hub.release()
    loader.join(timeout=120)
    assert results and results[0][-1].model.path != str(smollm2_path.resolve())


def test_a_deadline_ends_a_download_and_keeps_what_was_fetched(running, hub, hf_cache):
    _, stub = running()
    hub.hold(SMOLLM2_Q4_1, 8 << 20)
    with pytest.raises(grpc.RpcError) as caught:
        hub_load(stub, SINGLE_REPO, timeout=8)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    held = [r for r in hub.body_requests(SINGLE_REPO, SMOLLM2_Q4_1) if r.body_bytes >= 8 << 20]
    assert held and wait_until(held[0].finished.is_set, timeout=10) and held[0].aborted
    (partial,) = hf_cache.rglob("*.incomplete")  # a prefix of the file, kept for the next load
    kept = partial.read_bytes()
    assert 0 < len(kept) <= 8 << 20
    assert hashlib.sha256(kept).hexdigest() == hashlib.sha256(content(hub, SINGLE_REPO, SMOLLM2_Q4_1, len(kept))).hexdigest()


# -- offline ----------------------------------------------------------------------------


def test_offline_a_cached_model_loads_without_a_request_and_an_uncached_one_says_so(running, hub, hf_offline):
    _, stub = running()
    hub_load(stub, SINGLE_REPO)
    hf_offline()
    hub.reset()
    _, offline = running()
    events = hub_load(offline, SINGLE_REPO)
    assert events[-1].model.state == pb.MODEL_STATE_READY and not hub.requests
    details = assert_code(lambda: hub_load(offline, VARIANTS_REPO, "Q8_0"), grpc.StatusCode.FAILED_PRECONDITION)
    assert "not" in details and "cached" in details and "HF_HUB_OFFLINE" in details
    assert not hub.requests


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(("repo", "variant", "token", "code", "words"), [
    ("llamagate-test/no-such-repo-GGUF", "", "", grpc.StatusCode.NOT_FOUND, "no repository"),
    (VARIANTS_REPO, "Q5_K_M", "", grpc.StatusCode.NOT_FOUND, "Q4_1"),
    (GATED_REPO, "", "", grpc.StatusCode.PERMISSION_DENIED, "gated"),
    (GATED_REPO, "", OTHER_TOKEN, grpc.StatusCode.PERMISSION_DENIED, "gated"),
    (PRIVATE_REPO, "", "hf_not_a_valid_token", grpc.StatusCode.PERMISSION_DENIED, "token"),
    (NO_GGUF_REPO, "", "", grpc.StatusCode.INVALID_ARGUMENT, "no GGUF"),
    ("not a repo", "", "", grpc.StatusCode.INVALID_ARGUMENT, "hub.repo"),
    (SINGLE_REPO, "Q4 1", "", grpc.StatusCode.INVALID_ARGUMENT, "hub.variant"),
])
def test_bad_hub_sources_have_their_status_codes(running, hub, repo, variant, token, code, words):
    _, stub = running()
    for call in (lambda: hub_plan(stub, repo, variant, token=token), lambda: hub_load(stub, repo, variant, token=token)):
        details = assert_code(call, code)
        assert words in details
        assert token == "" or token not in details
    assert not [r for r in hub.body_requests() if r.range is None]  # nothing downloaded
    assert stub.GetStatus(pb.GetStatusRequest()).model.state == pb.MODEL_STATE_EMPTY


def test_a_gated_repo_loads_with_a_token_that_may_read_it(running, hub):
    _, stub = running()
    planned = hub_plan(stub, GATED_REPO, token=ACCESS_TOKEN)
    assert planned.hub.variant == "Q4_1"
    assert all(r.authorization == f"Bearer {ACCESS_TOKEN}" for r in hub.requests_for(GATED_REPO) if r.route != "cdn")


@pytest.fixture
def small_disk(tmp_path, hf_cache, monkeypatch):
    """The Hub cache on a 16 MiB tmpfs (mounting needs root: skipped without it)."""
    import subprocess

    import huggingface_hub.constants as hf_constants

    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(mount / "hub"))
    yield mount / "hub"
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_the_disk_filling_up_during_a_download_is_disk_full_and_the_service_goes_on(running, hub, small_disk):
    _, stub = running(disk=Disk(free=10 << 30))  # the preflight sees room; the disk itself has 16 MiB
    with pytest.raises(grpc.RpcError) as caught:
        hub_load(stub, SINGLE_REPO)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_details(caught.value)["ErrorInfo"]
    assert info.reason == "DISK_FULL" and "filled up" in caught.value.details()
    (partial,) = small_disk.rglob("*.incomplete")  # what fitted is kept, a prefix of the file
    kept = partial.read_bytes()
    assert 0 < len(kept) <= 16 << 20 and kept == content(hub, SINGLE_REPO, SMOLLM2_Q4_1, len(kept))
    assert stub.GetStatus(pb.GetStatusRequest()).model.state == pb.MODEL_STATE_EMPTY
    assert hub_plan(stub, SINGLE_REPO).hub.variant == "Q4_1"  # the service still answers
