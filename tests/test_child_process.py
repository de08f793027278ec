"""The child process we own (SPEC §8, §11): its group, its output, its end,
and that it never outlives us (defects 3 and 10). Small shell scripts stand in
for llama-server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from processes import gone, gone_within

from llamagate.adapters.child_process import (
    MAX_LINE_CHARS,
    ChildExit,
    ChildProcess,
    ChildState,
)
from llamagate.adapters.child_registry import kill_stale_children, read_records

# The script says "ready" once its traps are set: signals sent before that
# would meet the shell's default handlers and prove nothing.
TRAP_TERM_THEN_EXIT = "trap 'echo terminated; exit 0' TERM; echo ready; while :; do sleep 0.05; done"
IGNORE_TERM = "trap '' TERM; echo ready; while :; do sleep 0.05; done"


def run(coroutine):
    return asyncio.run(coroutine)


async def spawn_sh(script: str, **kwargs) -> ChildProcess:
    return await ChildProcess.spawn(["sh", "-c", script], **kwargs)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        await asyncio.sleep(0.02)


def test_stop_ends_the_whole_process_group():
    async def scenario():
        child = await spawn_sh("sleep 1000 & echo $!; wait")
        await until(lambda: child.last_output().strip().isdigit())
        grandchild = int(child.last_output())
        await child.stop(grace=5)
        await until(lambda: gone(grandchild))  # signalled with the group; it may take a moment to die
        return child, await child.wait_exit()

    child, ended = run(scenario())
    assert gone(child.pid)
    assert ended.how == "killed by SIGTERM" and child.state is ChildState.EXITED


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period():
    async def scenario():
        child = await spawn_sh(IGNORE_TERM)
        await until(lambda: "ready" in child.last_output())
        await child.stop(grace=0.5)
        return child, await child.wait_exit()

    child, ended = run(scenario())
    assert ended.how == "killed by SIGKILL" and gone(child.pid)


def test_a_stopped_child_is_resumed_so_it_can_handle_sigterm():
    # A SIGSTOPped process that handles SIGTERM keeps it pending until
    # SIGCONT: without one, only the SIGKILL after the grace would end it.
    async def scenario():
        child = await spawn_sh(TRAP_TERM_THEN_EXIT)
        await until(lambda: "ready" in child.last_output())
        child.send_signal(signal.SIGSTOP)
        await until(lambda: psutil.Process(child.pid).status() == psutil.STATUS_STOPPED)
        await child.stop(grace=60)
        return await child.wait_exit()

    ended = run(scenario())
    assert ended.how == "exit code 0" and "terminated" in ended.last_output


def test_stop_cancelled_mid_way_kills_the_child_at_once_and_reraises():
    async def scenario():
        child = await spawn_sh(IGNORE_TERM)
        await until(lambda: "ready" in child.last_output())
        stopping = asyncio.create_task(child.stop(grace=600))
        await until(lambda: child.state is ChildState.STOPPING)
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        # "At once": far sooner than the grace period it was given.
        return await asyncio.wait_for(child.wait_exit(), timeout=10)

    assert run(scenario()).how == "killed by SIGKILL"


def test_stop_is_idempotent():
    async def scenario():
        child = await spawn_sh(TRAP_TERM_THEN_EXIT)
        await until(lambda: "ready" in child.last_output())
        await asyncio.gather(child.stop(grace=5), child.stop(grace=5))
        await child.stop(grace=5)  # already gone: returns at once, signals nothing
        return await child.wait_exit()

    assert run(scenario()).how == "exit code 0"


def test_the_output_tail_keeps_only_the_last_lines():
    async def scenario():
        child = await spawn_sh("i=0; while [ $i -lt 1000 ]; do echo line $i; i=$((i+1)); done", tail_lines=5)
        return await child.wait_exit()

    ended = run(scenario())
    assert ended.last_output.splitlines() == [f"line {i}" for i in range(995, 1000)]
    assert ended.how == "exit code 0"


def test_a_line_without_end_is_cut_to_a_bounded_length():
    async def scenario():
        child = await spawn_sh("head -c 1000000 /dev/zero | tr '\\0' x; echo; echo last", tail_lines=3)
        return await child.wait_exit()

    lines = run(scenario()).last_output.splitlines()
    assert lines[-1] == "last"
    assert all(len(line) <= MAX_LINE_CHARS for line in lines)


def test_a_child_with_a_full_pipe_is_not_blocked():
    # 4 MiB is far more than a pipe buffer: it only finishes if we keep reading.
    async def scenario():
        child = await spawn_sh("head -c 4194304 /dev/zero | tr '\\0' '\\n'; echo done")
        return await asyncio.wait_for(child.wait_exit(), timeout=60)

    ended = run(scenario())
    assert ended.how == "exit code 0" and ended.last_output.endswith("done")


def test_exit_callbacks_run_when_the_child_crashes():
    ran: list[str] = []

    async def scenario():
        child = await spawn_sh("echo dying; exit 3", on_exit=[lambda: ran.append("at spawn")])
        child.add_exit_callback(lambda: ran.append("added"))
        ended = await child.wait_exit()
        child.add_exit_callback(lambda: ran.append("after the end"))  # runs at once
        return ended

    ended = run(scenario())
    assert ended == ChildExit(3, "dying")
    assert ran == ["at spawn", "added", "after the end"]


def test_a_failing_exit_callback_does_not_skip_the_others():
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("cleanup failed")

    async def scenario():
        child = await spawn_sh("exit 0", on_exit=[broken, lambda: ran.append("second")])
        return await child.wait_exit()

    assert run(scenario()).how == "exit code 0" and ran == ["second"]


def test_a_child_that_exits_leaving_a_grandchild_is_seen_to_end():
    # The grandchild holds the output pipe open; the end is still seen, and
    # nothing of the child's group outlives it.
    async def scenario():
        child = await spawn_sh("sleep 1000 & echo $!; exit 4")
        ended = await asyncio.wait_for(child.wait_exit(), timeout=30)
        grandchild = int(ended.last_output.splitlines()[0])
        await until(lambda: gone(grandchild))  # SIGKILLed; it may take a moment to finish dying
        return ended

    assert run(scenario()).how == "exit code 4"


def test_an_executable_that_cannot_run_ends_at_once_saying_so(tmp_path):
    broken = tmp_path / "not-a-program"
    broken.write_bytes(b"\x7fELF not really")
    broken.chmod(0o755)

    async def scenario():
        child = await ChildProcess.spawn([str(broken)])
        return await child.wait_exit()

    ended = run(scenario())
    assert ended.returncode != 0 and str(broken) in ended.last_output


# --- dying with the parent, and the registry (defect 10) -------------------------

PARENT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from llamagate.adapters.child_process import ChildProcess

    async def main():
        child = await ChildProcess.spawn(["sleep", "1000"], registry_dir=Path(sys.argv[1]))
        print(child.pid, flush=True)
        await asyncio.sleep(1000)

    asyncio.run(main())
    """
)


def _parent_and_child(registry: Path) -> tuple[subprocess.Popen[str], int]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(registry)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    return parent, int(parent.stdout.readline())


def test_defect_10_a_child_dies_within_2_s_of_its_parent_being_sigkilled(tmp_path):
    parent, child = _parent_and_child(tmp_path)
    try:
        assert not gone(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert gone_within(child, 2.0), "the child outlived its SIGKILLed parent by 2 s"
    finally:
        if not gone(child):
            os.kill(child, signal.SIGKILL)


def test_defect_10_a_sigkilled_parents_record_is_cleaned_up_by_the_next_owner(tmp_path):
    parent, child = _parent_and_child(tmp_path)
    [(_, recorded)] = read_records(tmp_path)
    assert recorded is not None and (recorded.pid, recorded.owner_pid) == (child, parent.pid)

    parent.send_signal(signal.SIGKILL)  # no exit callback runs: the record stays behind
    parent.wait()
    assert len(read_records(tmp_path)) == 1

    kill_stale_children(tmp_path)  # the child may be dead already (PDEATHSIG) or killed now

    assert read_records(tmp_path) == []
    deadline = time.monotonic() + 2.0
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gone(child)


def test_a_child_is_recorded_while_it_runs_and_unrecorded_when_it_ends(tmp_path):
    async def scenario():
        child = await spawn_sh(TRAP_TERM_THEN_EXIT, registry_dir=tmp_path)
        records = read_records(tmp_path)
        await child.stop(grace=5)
        return child.pid, records, read_records(tmp_path)

    pid, while_running, after = run(scenario())
    [(_, recorded)] = while_running
    assert recorded is not None and (recorded.pid, recorded.owner_pid) == (pid, os.getpid())
    assert Path(recorded.exe).name == "sh"  # what was started, as it was named
    assert after == []


def test_a_crashed_child_is_unrecorded_too(tmp_path):
    async def scenario():
        child = await spawn_sh("exit 1", registry_dir=tmp_path)
        await child.wait_exit()

    run(scenario())
    assert read_records(tmp_path) == []
