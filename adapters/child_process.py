"""A child process we own for its whole life: llama-server today, tool
sandboxes and RPC workers later (SPEC §8, §11).

- It leads its own session and process group, so stopping it stops
  whatever it started.
- Its stdout and stderr are drained for its whole life (a full pipe would
  block it) into a bounded tail of its last lines, for error messages.
- It dies with its parent (``PR_SET_PDEATHSIG``, set by util-linux's
  ``setpriv`` just before it execs the program), so a SIGKILLed llamagate
  leaves nothing running. And it is recorded in a pidfile registry
  (``adapters/child_registry``) while it runs, so a later llamagate finds whatever
  survived anyway (no setpriv, a parent that died before the signal was
  set, a child that cleared it), whoever its parent is by then.
- Exit callbacks run whenever it ends, stopped by us or crashed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import shutil
import signal
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from llamagate.adapters.child_registry import kill_stale_children, record_child

__all__ = ["ChildExit", "ChildProcess", "ChildState", "kill_stale_children"]

log = logging.getLogger(__name__)

TAIL_LINES = 40
MAX_LINE_CHARS = 4000  # a child printing megabytes without a newline must not grow the tail
_READ_CHUNK = 65536
_EXIT_POLL_S = 0.02
_DRAIN_AFTER_EXIT_S = 1.0  # time to collect a dead child's last words

# Not a preexec function calling prctl: Python code between fork and exec in
# a process with threads (gRPC's) can deadlock or crash the child -- seen
# here as a SIGSEGV at spawn. setpriv sets the signal in the child, then execs.
_SETPRIV = shutil.which("setpriv")
if _SETPRIV is None:
    log.warning("setpriv (util-linux) not found: a child outlives a SIGKILLed llamagate until its next start")


class ChildState(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"  # asked to stop, not gone yet
    EXITED = "exited"  # reaped, output collected, exit callbacks run


_TRANSITIONS: dict[ChildState, frozenset[ChildState]] = {
    ChildState.RUNNING: frozenset({ChildState.STOPPING, ChildState.EXITED}),
    ChildState.STOPPING: frozenset({ChildState.EXITED}),
    ChildState.EXITED: frozenset(),
}


@dataclass(frozen=True)
class ChildExit:
    returncode: int  # negative: killed by that signal (asyncio's convention)
    last_output: str = ""

    @property
    def how(self) -> str:
        if self.returncode >= 0:
            return f"exit code {self.returncode}"
        try:
            return f"killed by {signal.Signals(-self.returncode).name}"
        except ValueError:
            return f"killed by signal {-self.returncode}"


class ChildProcess:
    """One running child; create it with ``await ChildProcess.spawn(...)``."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        *,
        name: str,
        tail_lines: int,
        on_exit: Sequence[Callable[[], None]],
    ) -> None:
        self._process = process
        self.name = name
        self._state = ChildState.RUNNING
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._on_exit = list(on_exit)
        self._exited = asyncio.Event()
        self._drain = asyncio.create_task(self._drain_output(), name=f"{name}[{process.pid}] output")
        self._watch = asyncio.create_task(self._watch_exit(), name=f"{name}[{process.pid}] exit")

    @classmethod
    async def spawn(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        name: str | None = None,
        registry_dir: Path | None = None,
        on_exit: Sequence[Callable[[], None]] = (),
        tail_lines: int = TAIL_LINES,
    ) -> ChildProcess:
        """Start ``argv``. Raises OSError if it cannot be started (a program that
        setpriv cannot exec ends at once instead, saying why in its output).

        Call it from the event loop's thread, never through
        ``asyncio.to_thread``: PR_SET_PDEATHSIG fires when the *thread* that
        forked exits, so a child forked by a worker thread would be killed
        whenever that thread is retired. (asyncio forks in the loop thread.)
        """
        dies_with_us = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []
        process = await asyncio.create_subprocess_exec(
            *dies_with_us,
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,  # its own process group: we stop the whole group
        )
        cleanups = list(on_exit)
        if registry_dir is not None:
            cleanups.append(_record(registry_dir, process.pid, argv[0]))
        return cls(process, name=name or Path(argv[0]).name, tail_lines=tail_lines, on_exit=cleanups)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def state(self) -> ChildState:
        return self._state

    @property
    def exited(self) -> bool:
        return self._state is ChildState.EXITED

    def last_output(self) -> str:
        return "\n".join(self._tail)

    def add_exit_callback(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the child has ended (at once if it already has)."""
        if self.exited:
            _run_callback(callback, self.name)
        else:
            self._on_exit.append(callback)

    async def wait_exit(self) -> ChildExit:
        """Return once the child has ended and its exit callbacks have run."""
        await self._exited.wait()
        code = self._process.returncode
        assert code is not None
        return ChildExit(code, self.last_output())

    async def wait_exit_for(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the end; True if it has ended."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._exited.wait(), timeout)
        return self.exited

    async def stop(self, grace: float) -> None:
        """SIGTERM the group, wait up to ``grace`` s, then SIGKILL it; returns once it is gone.

        Idempotent. Cancelled mid-way, it SIGKILLs the group at once and re-raises.
        """
        if self.exited:
            return
        try:
            if self._state is ChildState.RUNNING:
                self._transition(ChildState.STOPPING)
            self.send_signal(signal.SIGTERM)
            self.send_signal(signal.SIGCONT)  # a stopped (SIGSTOP) child cannot act on SIGTERM until resumed
            if not await self.wait_exit_for(grace):
                log.warning("%s[%d] ignored SIGTERM for %.1f s; killing it", self.name, self.pid, grace)
                self.send_signal(signal.SIGKILL)
                await self._exited.wait()
        except BaseException:  # cancelled: never leave the child behind
            self.send_signal(signal.SIGKILL)
            raise

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the child's whole process group (nothing once it has exited)."""
        if not self.exited:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    def _transition(self, new: ChildState) -> None:
        if new not in _TRANSITIONS[self._state]:
            raise RuntimeError(f"{self.name}[{self.pid}]: {self._state.value} -> {new.value} is not a valid transition")
        log.debug("%s[%d]: %s -> %s", self.name, self.pid, self._state.value, new.value)
        self._state = new

    async def _drain_output(self) -> None:
        stream = self._process.stdout
        assert stream is not None
        pending = b""
        while data := await stream.read(_READ_CHUNK):
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                self._keep(line)
            if len(pending) > MAX_LINE_CHARS:
                self._keep(pending)
                pending = b""
        if pending:
            self._keep(pending)

    def _keep(self, line: bytes) -> None:
        text = line[:MAX_LINE_CHARS].decode("utf-8", "replace").rstrip()
        self._tail.append(text)
        log.debug("%s[%d] %s", self.name, self.pid, text)

    async def _watch_exit(self) -> None:
        code = await self._returncode()
        # Whatever the child left running in its group goes with it: nothing
        # of it may outlive it, nor hold the output pipe open.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        await asyncio.wait({self._drain}, timeout=_DRAIN_AFTER_EXIT_S)
        self._drain.cancel()
        log.info("%s[%d] ended: %s", self.name, self.pid, ChildExit(code).how)
        for callback in self._on_exit:
            _run_callback(callback, self.name)
        self._transition(ChildState.EXITED)
        self._exited.set()

    async def _returncode(self) -> int:
        # Not Process.wait(): on Python 3.11 it also waits for the pipes to
        # close, which a grandchild holding stdout can delay forever. The
        # return code is known as soon as asyncio has reaped the child.
        # Until the child ends, nothing polls: a pidfd turns readable when it
        # does (waking the loop 50 times a second per child cost a serving
        # machine's cores measurable tokens/s, issue 8).
        await _until_ended(self.pid)
        while (code := self._process.returncode) is None:
            await asyncio.sleep(_EXIT_POLL_S)  # asyncio's watcher reaps it a moment later
        return code


async def _until_ended(pid: int) -> None:
    """Return once ``pid`` has ended (at once if a pidfd cannot be had: the caller polls)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (old kernel, not Linux), or already reaped
        return
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ended.done():
            ended.set_result(None)

    try:
        loop.add_reader(fd, readable)
        await ended
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _record(registry_dir: Path, pid: int, exe: str) -> Callable[[], None]:
    """Record the child; the returned callback removes the record."""
    try:
        path = record_child(registry_dir, pid, exe)
    except Exception as error:  # noqa: BLE001 - PDEATHSIG still covers it; say so and go on
        log.warning("could not record child %d in %s: %s", pid, registry_dir, error)
        return lambda: None
    return lambda: path.unlink(missing_ok=True)


def _run_callback(callback: Callable[[], None], name: str) -> None:
    try:
        callback()
    except Exception:  # one failing cleanup must not skip the others
        log.exception("an exit callback of %s failed", name)
