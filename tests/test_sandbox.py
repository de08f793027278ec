"""The python and terminal tools' sandbox (issue 10): limits, a clean
environment, nothing left running, nothing of the service to read.

Each behaviour runs with the limits alone (always) and inside bubblewrap
where bwrap works on this machine (skipped elsewhere, saying why). What a
child may read depends on who the service is: as root the child runs as an
unprivileged uid of its own, so the service's 0600 files are closed to it;
as an ordinary user without bubblewrap it shares the service's uid, and
only bubblewrap hides the service's files.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import resource
import shutil

import psutil
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from llamagate.adapters.tools import SandboxLimits, build_tools
from llamagate.adapters.tools.code_tools import PythonTool, TerminalTool
from llamagate.adapters.tools.output import OutputCapture, truncate_text
from llamagate.adapters.tools.sandbox import Sandbox
from llamagate.adapters.tools.sandbox_argv import HostLayout, bwrap_argv

LIMITS = SandboxLimits(cpu_s=20, memory_bytes=512 << 20, file_bytes=1 << 20, processes=32, output_bytes=4096)
AS_ROOT = os.geteuid() == 0
_which = shutil.which


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture(scope="module", params=["limits", "bubblewrap"])
def sandbox(request, tmp_path_factory) -> Sandbox:
    box = Sandbox(tmp_path_factory.mktemp("scratch"), LIMITS, use_bubblewrap=request.param == "bubblewrap")
    if request.param == "bubblewrap" and not box.bubblewrap:
        pytest.skip(f"bubblewrap does not work here: {box.mode}")
    return box


@pytest.fixture
def tools(sandbox):
    workspace = sandbox.workspace()
    yield PythonTool(sandbox, workspace), TerminalTool(sandbox, workspace, "/bin/sh"), workspace
    workspace.close()


def descendants() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_mode_is_said(sandbox):
    assert sandbox.mode == "bubblewrap" or sandbox.mode.startswith("limits only (")
    assert sandbox.python is not None, sandbox.mode


def test_python_runs_and_its_output_comes_back(tools):
    python, _, _ = tools
    result = run(python.run({"code": "print(2 + 2)"}, timeout_s=30))
    assert (result.text.strip(), result.failed) == ("4", False)


def test_a_non_zero_exit_is_a_failure_with_its_output(tools):
    python, _, _ = tools
    result = run(python.run({"code": "print('partial')\nraise SystemExit(3)"}, timeout_s=30))
    assert result.failed and result.text.startswith("Exit code 3") and "partial" in result.text


def test_an_infinite_loop_is_killed_at_the_timeout(tools):
    python, _, _ = tools
    result = run(python.run({"code": "print('looping', flush=True)\nwhile True: pass"}, timeout_s=1))
    assert result.failed and result.text.startswith("Error: timed out after 1 s")
    assert "looping" in result.text  # what it printed before is kept
    assert not [p for p in descendants() if alive(p)]


def test_allocating_past_the_memory_limit_fails_inside_and_the_service_is_unharmed(tools):
    python, _, _ = tools
    result = run(python.run({"code": f"x = bytearray({2 * LIMITS.memory_bytes})\nprint('allocated')"}, timeout_s=30))
    assert result.failed and "MemoryError" in result.text and "allocated" not in result.text
    assert resource.getrlimit(resource.RLIMIT_AS) == (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    with mmap.mmap(-1, 2 * LIMITS.memory_bytes) as here:  # the service may still reserve that much
        assert len(here) == 2 * LIMITS.memory_bytes


def test_writing_past_the_file_size_limit_fails(tools):
    python, _, workspace = tools
    code = f"open('big', 'wb').write(b'x' * {2 * LIMITS.file_bytes})"
    result = run(python.run({"code": code}, timeout_s=30))
    # Python ignores SIGXFSZ, so the write fails with EFBIG instead of killing it
    assert result.failed and "File too large" in result.text
    assert (workspace.ensure() / "big").stat().st_size <= LIMITS.file_bytes


FORK_BOMB = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""


def test_a_fork_bomb_is_contained_and_nothing_of_it_is_left(tools):
    python, _, _ = tools
    seen: dict[int, psutil.Process] = {}
    most = 0
    spawned_meanwhile = []

    async def watch() -> None:
        nonlocal most
        while True:
            now = [p for p in descendants() if alive(p)]
            seen.update((p.pid, p) for p in now)
            most = max(most, len(now))
            if len(now) > 10:  # the bomb is going: the machine must still start processes
                probe = await asyncio.create_subprocess_exec("true")
                spawned_meanwhile.append(await probe.wait())
            await asyncio.sleep(0.05)

    async def main():
        watcher = asyncio.create_task(watch())
        try:
            return await python.run({"code": FORK_BOMB}, timeout_s=2)
        finally:
            watcher.cancel()

    result = run(main())
    assert result.failed and result.text.startswith("Error: timed out")
    assert most > 10, "the bomb never got going: the test proves nothing"
    # The bomb's processes plus the launcher chain (bwrap and its pid 1) and the
    # watcher's probe. As an ordinary user the limit is the service's own task
    # count plus LIMITS.processes, counted at the start: threads that end later
    # leave the bomb a little more room.
    assert most <= (LIMITS.processes + 4 if AS_ROOT else 2 * LIMITS.processes)
    assert spawned_meanwhile and set(spawned_meanwhile) == {0}
    psutil.wait_procs(list(seen.values()), timeout=5)
    assert not [p for p in seen.values() if alive(p)]


def test_the_child_sees_none_of_the_service_environment(tools, monkeypatch):
    python, terminal, workspace = tools
    monkeypatch.setenv("LLAMAGATE_TEST_SECRET", "s3cret-value")
    monkeypatch.setenv("HF_TOKEN", "hf_s3cret")
    monkeypatch.setenv("LLAMA_API_KEY", "key-s3cret")
    result = run(python.run({"code": "import os\nfor k, v in sorted(os.environ.items()): print(k, v)"}, timeout_s=30))
    assert "s3cret" not in result.text
    names = {line.split(" ", 1)[0] for line in result.text.splitlines()}
    assert names <= {"PATH", "HOME", "LANG", "PWD"}  # bwrap sets PWD for --chdir
    assert f"HOME {workspace.ensure()}" in result.text
    shell = run(terminal.run({"command": "env"}, timeout_s=30))
    assert "s3cret" not in shell.text


def test_the_child_cannot_read_the_service_process_environment(tools, sandbox):
    if not (AS_ROOT or sandbox.bubblewrap):
        pytest.skip("limits only as an ordinary user: the child is the service's uid and may read its /proc")
    python, _, _ = tools
    code = f"print(open('/proc/{os.getpid()}/environ', 'rb').read()[:50])"
    result = run(python.run({"code": code}, timeout_s=30))
    assert result.failed and ("PermissionError" in result.text or "FileNotFoundError" in result.text)


def test_the_child_cannot_read_the_service_files_outside_its_scratch(tools, sandbox, tmp_path):
    if not (AS_ROOT or sandbox.bubblewrap):
        pytest.skip("limits only as an ordinary user: the child is the service's uid and may read its files")
    python, _, _ = tools
    secret = tmp_path / "secret.txt"
    secret.write_text("service secret")
    secret.chmod(0o600)
    result = run(python.run({"code": f"print(open({str(secret)!r}).read())"}, timeout_s=30))
    assert result.failed and "service secret" not in result.text


def test_inside_bubblewrap_the_service_tree_is_not_there_at_all(tools, sandbox):
    if not sandbox.bubblewrap:
        pytest.skip("bubblewrap only: without it the host's world-readable files are visible")
    python, _, _ = tools
    code = f"import os; print(os.path.exists({__file__!r}), os.path.exists('/home'), os.path.exists('/root/.bashrc'))"
    result = run(python.run({"code": code}, timeout_s=30))
    assert result.text.split() == ["False", "False", "False"]


def test_inside_bubblewrap_the_dropped_uid_reads_the_system_configuration(tools, sandbox):
    if not sandbox.bubblewrap:
        pytest.skip("bubblewrap only: without it /etc is the host's own")
    _, terminal, _ = tools
    result = run(terminal.run({"command": "head -c 4 /etc/passwd; echo; stat -c %a /etc"}, timeout_s=30))
    assert not result.failed and result.text.split() == ["root", "755"]  # was 0700: passwd, ssl, zoneinfo unreadable


def test_inside_bubblewrap_there_is_no_network(tools, sandbox):
    if not sandbox.bubblewrap:
        pytest.skip("bubblewrap only: the limits alone leave the network as it is")
    python, _, _ = tools
    code = "import socket\nprint([n for _, n in socket.if_nameindex()])\nsocket.create_connection(('127.0.0.1', 22), 1)"
    result = run(python.run({"code": code}, timeout_s=30))
    assert result.text.startswith("Exit code 1") and "['lo']" in result.text and "ConnectionRefused" in result.text


def test_inside_bubblewrap_the_system_is_read_only_and_tmp_is_its_own(tools, sandbox, tmp_path):
    if not sandbox.bubblewrap:
        pytest.skip("bubblewrap only: the limits alone share the host's /tmp")
    _, terminal, _ = tools
    marker = f"/tmp/{tmp_path.name}-from-the-sandbox"
    result = run(terminal.run({"command": f"touch /usr/x; echo private > {marker} && cat {marker}"}, timeout_s=30))
    assert "/usr/x" in result.text and "private" in result.text
    assert not os.path.exists(marker) and not os.path.exists("/usr/x")


def test_output_past_the_limit_is_cut_saying_so_keeping_the_end(tools):
    python, _, _ = tools
    result = run(python.run({"code": "print('a' * 100_000)\nprint('THE END')"}, timeout_s=30))
    assert "output truncated" in result.text and result.text.rstrip().endswith("THE END")
    assert len(result.text) < LIMITS.output_bytes + 100


def test_files_stay_for_the_conversation_and_go_with_it(tools):
    python, terminal, workspace = tools
    run(python.run({"code": "open('notes.txt', 'w').write('kept')"}, timeout_s=30))
    assert run(terminal.run({"command": "cat notes.txt"}, timeout_s=30)).text == "kept"
    scratch = workspace.ensure()
    workspace.close()
    assert not scratch.exists()


def test_a_background_process_does_not_outlive_its_call(tools, sandbox):
    _, terminal, _ = tools
    # setsid escapes a group kill: only a uid or a pid namespace of its own catches it
    detach = "setsid" if AS_ROOT or sandbox.bubblewrap else ""
    marker = "sleep 321"
    result = run(terminal.run({"command": f"({detach} {marker} &) ; echo started"}, timeout_s=30))
    assert result.text.strip() == "started"
    left = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == marker.split() and alive(p)]
    psutil.wait_procs(left, timeout=5)
    assert not [p for p in left if alive(p)]


def test_cancelling_a_call_kills_its_child_at_once(tools):
    _, terminal, _ = tools
    marker = ["sleep", "654"]

    async def main():
        call = asyncio.create_task(terminal.run({"command": " ".join(marker)}, timeout_s=600))
        for _ in range(400):
            found = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == marker]
            if found:
                break
            await asyncio.sleep(0.05)
        assert found, "the command never started"
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return found

    found = run(main())
    psutil.wait_procs(found, timeout=5)  # SIGKILL is sent before the cancellation returns; reaping follows
    assert not [p for p in found if alive(p)]


def test_the_cpu_time_limit_ends_a_busy_program(tmp_path):
    box = Sandbox(tmp_path, SandboxLimits(cpu_s=1), use_bubblewrap=False)
    workspace = box.workspace()
    try:
        result = run(PythonTool(box, workspace).run({"code": "while True: pass"}, timeout_s=120))
    finally:
        workspace.close()
    assert result.failed and "CPU time limit (1 s)" in result.text


def test_bad_arguments_are_failed_results_not_exceptions(tools):
    python, terminal, _ = tools
    assert run(python.run({}, timeout_s=5)).failed
    assert run(python.run({"code": 42}, timeout_s=5)).failed
    assert run(terminal.run({"command": ""}, timeout_s=5)).text.startswith("Error:")


def test_a_conversation_gets_its_tools_and_its_scratch_goes_when_it_ends(tmp_path):
    toolbox = build_tools({"python", "terminal"}, searxng_url=None, scratch_root=tmp_path, limits=LIMITS,
                          use_bubblewrap=False)
    assert toolbox.names == {"python", "terminal"} and toolbox.sandbox_mode

    async def main():
        async with toolbox.conversation() as tools:
            await tools["terminal"].run({"command": "echo hi > f"}, timeout_s=30)
            return {p.name for p in tmp_path.iterdir()}

    assert len(run(main())) == 1  # its directory, made on first use
    assert not list(tmp_path.iterdir())


FAILING_BWRAP = """#!/bin/sh
if [ "$1" = "--help" ]; then echo "usage: bwrap [OPTION...] -- COMMAND"; exit 0; fi
echo "bwrap: No permissions to create new namespace" >&2
exit 1
"""


def test_a_bwrap_that_cannot_work_here_leaves_the_limits_saying_why(tmp_path, monkeypatch):
    # as in containers that forbid user namespaces
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bwrap").write_text(FAILING_BWRAP)
    (bin_dir / "bwrap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    box = Sandbox(tmp_path / "scratch", LIMITS)
    assert box.mode == "limits only (bwrap unusable: bwrap: No permissions to create new namespace)"
    assert not box.bubblewrap
    workspace = box.workspace()
    try:
        result = run(PythonTool(box, workspace).run({"code": "print('still runs')"}, timeout_s=30))
    finally:
        workspace.close()
    assert result.text.strip() == "still runs"


def test_without_bwrap_the_mode_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name, **kw: None if name == "bwrap" else _which(name, **kw))
    assert Sandbox(tmp_path, LIMITS).mode == "limits only (bwrap not found)"


def test_unknown_tool_names_are_refused():
    with pytest.raises(ValueError, match="rm_rf"):
        build_tools({"python", "rm_rf"}, searxng_url=None)
    with pytest.raises(ValueError, match="SearXNG"):
        build_tools({"web_search"}, searxng_url=None)


def test_as_root_bubblewrap_drops_to_the_conversation_uid_inside():
    layout = HostLayout(links=(("/bin", "usr/bin"),), dirs=("/usr",), etc=("/etc/passwd",),
                        extra=("/opt/py/venv",))
    argv = bwrap_argv("bwrap", layout, "/tmp/scratch/conv-1", as_root_uid=65001, setpriv="setpriv",
                      tmp_bytes=1024)
    assert "--unshare-net" in argv and "--unshare-user" not in argv and "--unshare-all" not in argv
    tail = argv[argv.index("--cap-add"):]
    assert tail[-1] == "--" and "--reuid=65001" in tail and "--no-new-privs" in tail
    # the parents of what is bound are created reachable, /tmp (a fresh tmpfs) excepted
    made = [argv[i + 1] for i, a in enumerate(argv) if a == "--dir"]
    assert made == ["/etc", "/opt", "/opt/py", "/tmp/scratch"]
    assert argv[argv.index("/etc") - 3:argv.index("/etc")] == ["--perms", "0755", "--dir"]
    assert argv.index("--tmpfs") < argv.index("/opt")


def test_unprivileged_bubblewrap_uses_a_user_namespace():
    layout = HostLayout(links=(), dirs=("/usr",), etc=())
    argv = bwrap_argv("bwrap", layout, "/tmp/s", as_root_uid=None, setpriv="setpriv", tmp_bytes=None)
    assert "--unshare-all" in argv and "--cap-add" not in argv and "--size" not in argv


@example(chunks=[b"\x00" * 39, b"\xc2\x80"], limit=53)  # a character across the head/tail boundary, all kept
@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(1, 500))
def test_the_capture_keeps_the_head_and_the_tail(chunks, limit):
    capture = OutputCapture(limit)
    for chunk in chunks:
        capture.feed(chunk)
    whole = b"".join(chunks)
    if len(whole) <= limit:
        assert capture.text() == whole.decode("utf-8", "replace")
    else:
        tail = limit // 4
        assert f"{len(whole) - limit} bytes omitted" in capture.text()
        assert capture.text().startswith(whole[: limit - tail].decode("utf-8", "replace"))
        assert capture.text().endswith(whole[len(whole) - tail:].decode("utf-8", "replace") if tail else "\n")


@given(st.text(max_size=400), st.integers(1, 300))
def test_truncated_text_keeps_what_fits_and_says_what_went(text, limit):
    cut = truncate_text(text, limit)
    if len(text) <= limit:
        assert cut == text
    else:
        assert "characters omitted" in cut
        assert cut.startswith(text[: limit - limit // 4])

