"""Which model files the service may open (issue 13): only those under its model roots.

The rule (domain/model_roots) decides on the requested path's real path and
its kind from stat alone; the inspector (adapters/gguf_inspector) opens
nothing it refuses. Here: the rule's laws, the inspector on real paths
(``..``, symlinks, a directory, devices, a FIFO that would block an open),
the settings, and the refusals through the real gRPC service.
"""

from __future__ import annotations

import os
import posixpath
import socket
import threading
from argparse import Namespace
from pathlib import Path, PurePosixPath

import grpc
import pytest
from e2e import assert_code
from hypothesis import given
from hypothesis import strategies as st

from llamagate.adapters import gguf_inspector, paths
from llamagate.adapters.gguf_inspector import GgufInspector
from llamagate.adapters.model_files import ModelRootSettings, locate, model_roots
from llamagate.domain.errors import InvalidArgument, InvalidModel, ModelNotFound, PermissionDenied
from llamagate.domain.load_options import LoadOptions
from llamagate.domain.model_config import ModelSpec, ServiceConfig
from llamagate.domain.model_roots import FileKind, ModelRoots
from llamagate.server.cli import _named_files
from llamagate.server.settings import Settings
from llamagate.v1 import llamagate_pb2 as pb

SECRET = "root:x:0:0:secret-line\n"

# -- the rule ------------------------------------------------------------------

names = st.sampled_from(["a", "b", "models", "models2", "m.gguf", "etc"])
absolute = st.lists(names, max_size=4).map(lambda parts: "/" + "/".join(parts))
roots_st = st.lists(absolute, min_size=1, max_size=3).map(tuple)


def below(path: str, root: str) -> bool:
    """The oracle: ``root``'s components are a prefix of ``path``'s (no string tricks)."""
    want = PurePosixPath(root).parts
    return PurePosixPath(path).parts[: len(want)] == want


@given(roots_st, absolute)
def test_anything_resolved_outside_every_root_is_refused_whatever_is_there(roots, resolved):
    rule = ModelRoots(roots)
    for kind in FileKind:
        if any(below(resolved, root) for root in roots):
            continue
        with pytest.raises(PermissionDenied) as refused:
            rule.admit("asked.gguf", resolved, kind)
        assert "asked.gguf" in str(refused.value) and "LLAMAGATE_MODEL_ROOTS" in str(refused.value)
        assert resolved == "/" or resolved not in str(refused.value)  # never where it leads


@given(roots_st, st.data())
def test_a_regular_file_at_or_below_a_root_is_admitted(roots, data):
    root = data.draw(st.sampled_from(roots))
    suffix = data.draw(st.lists(names, max_size=3))
    ModelRoots(roots).admit("asked.gguf", posixpath.join(root, *suffix), FileKind.REGULAR)


@given(roots_st, st.lists(st.sampled_from(["a", "b", "..", "."]), max_size=6))
def test_dot_dot_is_normalised_before_deciding(roots, steps):
    resolved = posixpath.join(roots[0], *steps)
    assert ModelRoots(roots).contains(resolved) == any(below(posixpath.normpath(resolved), r) for r in roots)


def test_a_name_that_merely_starts_like_a_root_is_outside():
    rule = ModelRoots(("/srv/models",))
    assert rule.contains("/srv/models/x.gguf") and rule.contains("/srv/models")
    assert not rule.contains("/srv/models2/x.gguf") and not rule.contains("/srv/models/../secret")
    assert not rule.contains("srv/models/x.gguf")  # relative: never inside
    assert ModelRoots(("/",)).contains("/etc/passwd")
    with pytest.raises(ValueError, match="absolute"):
        ModelRoots(("models",))


@pytest.mark.parametrize(("kind", "error", "says"), [
    (FileKind.MISSING, ModelNotFound, "not found"), (FileKind.DIRECTORY, InvalidModel, "a directory"),
    (FileKind.FIFO, InvalidModel, "a FIFO"), (FileKind.CHARACTER_DEVICE, InvalidModel, "a character device"),
    (FileKind.BLOCK_DEVICE, InvalidModel, "a block device"), (FileKind.SOCKET, InvalidModel, "a socket"),
    (FileKind.UNREADABLE, InvalidModel, "cannot read")])
def test_inside_a_root_what_is_not_a_regular_file_says_what_it_is(kind, error, says):
    with pytest.raises(error, match=says):
        ModelRoots(("/models",)).admit("/models/x", "/models/x", kind)


# -- the inspector on real paths -------------------------------------------------


def write_model(path: Path) -> Path:
    from gguf import GGUFWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(path, "llama")
    writer.add_context_length(128)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def tree(tmp_path):
    """A root with a model, and beside it (outside) a model and a secret."""
    root, outside = tmp_path / "models", tmp_path / "outside"
    write_model(root / "good.gguf")
    write_model(outside / "elsewhere.gguf")
    (outside / "passwd").write_text(SECRET)
    return root, outside


@pytest.fixture
def opened(monkeypatch):
    """Every file the inspector hands to the scanner; the real scanner still runs."""
    seen: list[str] = []
    real = gguf_inspector.scan_file

    def spy(path, *args, **kwargs):
        seen.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(gguf_inspector, "scan_file", spy)
    return seen


def inspector_for(root: Path) -> GgufInspector:
    return GgufInspector(ModelRoots((os.path.realpath(root),)))


def refused(inspector: GgufInspector, path: str, error: type[Exception]) -> str:
    with pytest.raises(error) as raised:
        inspector.inspect(path)
    message = str(raised.value)
    assert "root:x" not in message and "secret-line" not in message
    return message


def test_a_model_under_the_root_loads_and_one_beside_it_is_refused_unopened(tree, opened):
    root, outside = tree
    inspector = inspector_for(root)

    assert inspector.inspect(str(root / "good.gguf")).architecture == "llama"
    for path in (str(root / ".." / "outside" / "passwd"), str(outside / "elsewhere.gguf"), "/etc/passwd",
                 str(outside / "missing.gguf")):  # missing outside: refused too, so nothing outside is probed
        message = refused(inspector, path, PermissionDenied)
        assert path in message and "LLAMAGATE_MODEL_ROOTS" in message

    assert opened == [os.path.realpath(root / "good.gguf")]


def test_a_relative_path_climbing_out_of_the_working_directory_is_refused(tree, opened, monkeypatch):
    root, _ = tree
    monkeypatch.chdir(root)
    climb = "../" * (len(root.parts) + 2) + "etc/passwd"

    assert climb in refused(inspector_for(root), climb, PermissionDenied)
    assert inspector_for(root).inspect("good.gguf").path == os.path.realpath(root / "good.gguf")
    assert opened == [os.path.realpath(root / "good.gguf")]


def test_a_symlink_out_of_a_root_is_refused_at_any_level_without_naming_its_target(tree, opened):
    root, outside = tree
    (root / "file-link.gguf").symlink_to(outside / "elsewhere.gguf")
    (root / "dir-link").symlink_to(outside)
    (root / "deeper").mkdir()
    (root / "deeper" / "up").symlink_to("../../outside")
    (root / "secret.gguf").symlink_to(outside / "passwd")
    inspector = inspector_for(root)

    for name in ("file-link.gguf", "dir-link/elsewhere.gguf", "deeper/up/passwd", "secret.gguf",
                 "dir-link/missing.gguf"):
        message = refused(inspector, str(root / name), PermissionDenied)
        assert str(outside) not in message

    assert opened == []


def test_a_symlink_within_the_roots_loads_as_its_real_path(tree):
    root, _ = tree
    (root / "alias.gguf").symlink_to("good.gguf")

    assert inspector_for(root).inspect(str(root / "alias.gguf")).path == os.path.realpath(root / "good.gguf")


def test_a_missing_file_under_a_root_is_not_found(tree):
    root, _ = tree
    assert "nope.gguf" in refused(inspector_for(root), str(root / "nope.gguf"), ModelNotFound)


def test_a_directory_a_socket_and_a_device_under_a_root_are_invalid_unopened(tree, opened, tmp_path):
    root, _ = tree
    (root / "sub.gguf").mkdir()
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(root / "sock.gguf"))

        assert "a directory" in refused(inspector_for(root), str(root / "sub.gguf"), InvalidModel)
        assert "a socket" in refused(inspector_for(root), str(root / "sock.gguf"), InvalidModel)
    assert "a character device" in refused(GgufInspector(ModelRoots(("/dev",))), "/dev/zero", InvalidModel)
    refused(inspector_for(root), "/dev/zero", PermissionDenied)
    assert opened == []


def test_a_fifo_under_a_root_is_invalid_and_never_opened(tree, opened):
    """Opening a FIFO with no writer blocks: the call must return at once."""
    root, _ = tree
    fifo = root / "pipe.gguf"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            inspector_for(root).inspect(str(fifo))
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            outcome.append(error)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():  # it opened the FIFO: release it before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the inspector opened a FIFO")
    assert isinstance(outcome[0], InvalidModel) and "a FIFO" in str(outcome[0])
    assert opened == []


def test_a_file_that_is_not_gguf_is_refused_without_any_of_its_bytes(tree):
    root, _ = tree
    (root / "notes.gguf").write_text(SECRET)

    message = refused(inspector_for(root), str(root / "notes.gguf"), InvalidModel)

    assert "does not start with the magic" in message
    assert not any(f"{byte:02x}" in message for byte in b"ro")  # not as hex either


def test_every_shard_of_a_split_model_is_admitted_like_the_first(tree, opened):
    root, outside = tree
    write_model(root / "split-00001-of-00002.gguf")
    inspector = inspector_for(root)

    assert "is missing" in refused(inspector, str(root / "split-00001-of-00002.gguf"), ModelNotFound)
    (root / "split-00002-of-00002.gguf").symlink_to(outside / "passwd")
    refused(inspector, str(root / "split-00001-of-00002.gguf"), PermissionDenied)
    assert opened == []


def test_a_nul_in_a_path_is_invalid():
    with pytest.raises(InvalidArgument, match="NUL"):
        locate("/models/a\0b.gguf")


# -- the settings --------------------------------------------------------------


def test_the_roots_variable_lists_absolute_directories(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ModelRootSettings.from_env({}).configured == ()
    assert ModelRootSettings.from_env({"LLAMAGATE_MODEL_ROOTS": f"/srv/a{os.pathsep}{os.pathsep} ~/b "}).configured \
        == ("/srv/a", str(tmp_path / "b"))
    with pytest.raises(ValueError, match="LLAMAGATE_MODEL_ROOTS.*'models'"):
        ModelRootSettings.from_env({"LLAMAGATE_MODEL_ROOTS": "models"})
    assert Settings.from_env({"LLAMAGATE_MODEL_ROOTS": "/srv/a"}).model_roots.configured == ("/srv/a",)


def test_by_default_the_roots_are_the_caches_and_the_named_files_directories(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    hf = tmp_path / "hf" / "hub"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hf))
    blobs = tmp_path / "blobs"
    write_model(blobs / "abc")
    (tmp_path / "named").mkdir()
    (tmp_path / "named" / "chat.gguf").symlink_to(blobs / "abc")
    named = ModelRootSettings().with_operator_files([str(tmp_path / "named" / "chat.gguf")])

    roots = model_roots(named, tmp_path / "cache").roots

    real = os.path.realpath
    assert set(roots) == {real(tmp_path / "named"), real(blobs), real(paths.models_dir(tmp_path / "cache")), real(hf)}
    configured = model_roots(ModelRootSettings(configured=(str(tmp_path / "only"),)).with_operator_files(
        [str(tmp_path / "named" / "chat.gguf")]), tmp_path / "cache").roots
    assert set(configured) == {real(tmp_path / "only"), real(paths.models_dir(tmp_path / "cache")), real(hf)}


def test_a_root_reached_through_a_symlink_admits_what_is_below_it(tmp_path):
    write_model(tmp_path / "real" / "m.gguf")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    roots = model_roots(ModelRootSettings(configured=(str(tmp_path / "link"),)), tmp_path / "cache")

    assert GgufInspector(roots).inspect(str(tmp_path / "link" / "m.gguf")).architecture == "llama"


def test_serve_names_its_model_file_and_the_configs_paths(tmp_path):
    config = ServiceConfig((
        ModelSpec("chat", str(tmp_path / "a" / "chat.gguf")),
        ModelSpec("seen", "/srv/b/seen.gguf", options=LoadOptions(mmproj_path="/srv/c/p.gguf")),
    ))
    args = Namespace(model=str(tmp_path / "d" / "cli.gguf"))

    assert _named_files(args, config) == [str(tmp_path / "d" / "cli.gguf"), str(tmp_path / "a" / "chat.gguf"),
                                          "/srv/b/seen.gguf", "/srv/c/p.gguf"]
    assert _named_files(Namespace(model=None), None) == []


def test_plan_reads_the_file_it_is_given_unless_the_roots_are_configured_elsewhere(tmp_path, monkeypatch, capsys):
    from llamagate.server.cli import main

    model = write_model(tmp_path / "here" / "m.gguf")
    monkeypatch.delenv("LLAMAGATE_MODEL_ROOTS")
    assert main(["plan", str(model)]) == 0
    assert "(llama)" in capsys.readouterr().out

    monkeypatch.setenv("LLAMAGATE_MODEL_ROOTS", str(tmp_path / "elsewhere"))
    assert main(["plan", str(model)]) == 1
    assert "outside" in capsys.readouterr().err


def test_serve_refuses_a_model_outside_configured_roots_before_listening(tmp_path, monkeypatch, capsys):
    from llamagate.server.cli import main

    model = write_model(tmp_path / "here" / "m.gguf")
    monkeypatch.setenv("LLAMAGATE_CACHE_DIR", str(tmp_path / "cache"))  # its own children registry
    monkeypatch.setenv("LLAMAGATE_MODEL_ROOTS", str(tmp_path / "elsewhere"))

    assert main(["serve", "--listen", "127.0.0.1:0", "--model", str(model)]) == 1
    assert f"{model} is outside the directories models may be loaded from" in capsys.readouterr().err


# -- through the real service --------------------------------------------------


def test_the_service_refuses_files_outside_its_roots_and_non_files_without_echoing_content(stub, smollm2_path,
                                                                                          tmp_path):
    climb = "../" * (len(Path.cwd().parts) + 2) + "etc/passwd"
    link = tmp_path / "innocent.gguf"
    link.symlink_to("/etc/passwd")
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    good = tmp_path / "ok.gguf"
    good.symlink_to(smollm2_path)  # from one root (the tests' files) into another (the model cache)

    for path in (climb, "/etc/passwd", str(link)):
        for call in (lambda path=path: stub.LoadModel(pb.LoadModelRequest(path=path), timeout=30),
                     lambda path=path: stub.PlanModel(pb.PlanModelRequest(path=path), timeout=30)):
            details = assert_code(call, grpc.StatusCode.PERMISSION_DENIED)
            assert path in details and "root:" not in details and "/etc/passwd" not in details.replace(path, "")
    details = assert_code(lambda: stub.LoadModel(pb.LoadModelRequest(path=str(fifo)), timeout=30),
                          grpc.StatusCode.INVALID_ARGUMENT)
    assert "a FIFO" in details
    projector = pb.LoadOptions(mmproj_path="/etc/passwd")
    assert_code(lambda: stub.PlanModel(pb.PlanModelRequest(path=str(good), options=projector), timeout=30),
                grpc.StatusCode.PERMISSION_DENIED)
    assert stub.PlanModel(pb.PlanModelRequest(path=str(good)), timeout=30).plan.architecture == "llama"
