"""Running the model's code and commands where they can do little harm.

A separate process in its own session, with CPU, memory, file size and
process limits, a clean environment (PATH, HOME, LANG: none of the service's
secrets), a scratch directory per conversation, output cut to a limit and a
wall-clock timeout that kills everything it started. Inside bubblewrap
(no network, read-only system, private /tmp and /proc) where bwrap exists
and works here, else with the limits alone; ``Sandbox.mode`` says which.
See ``sandbox_argv.py`` for the command chain and why it is built so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from llamagate.adapters.tools.output import OutputCapture
from llamagate.adapters.tools.process_cleanup import kill_tree
from llamagate.adapters.tools.sandbox_argv import (
    SandboxLimits,
    bwrap_argv,
    prlimit_argv,
    setpriv_argv,
)
from llamagate.adapters.tools.sandbox_host import bwrap_options, host_layout, reachable_by_others
from llamagate.adapters.tools.workspace import DEFAULT_UIDS, SandboxBusy, UidPool, Workspace, prepare_root

__all__ = ["RunOutcome", "Sandbox", "SandboxLimits", "Workspace"]

log = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 20.0
_DRAIN_S = 1.0  # time for the last output once everything is killed
_READ_CHUNK = 65536
_STANDARD_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class RunOutcome:
    output: str  # stdout and stderr together, cut to the output limit
    returncode: int | None  # None: killed at the timeout or never started
    signal_number: int | None = None  # the signal that ended it, where known
    error: str = ""  # why it never ran


class Sandbox:
    """Built once at start (it probes bubblewrap); ``workspace()`` per conversation."""

    def __init__(self, scratch_root: Path, limits: SandboxLimits | None = None, *,
                 use_bubblewrap: bool = True, uids: range = DEFAULT_UIDS) -> None:
        self.limits = limits or SandboxLimits()
        self._scratch_root = scratch_root
        self._as_root = os.geteuid() == 0
        self._pool = UidPool(uids) if self._as_root else None
        self._setpriv = shutil.which("setpriv")
        self._prlimit = shutil.which("prlimit")
        self._bwrap: str | None = None
        self._layout = host_layout()
        self._tmp_bytes: int | None = None
        self._disable_userns = False
        self.python: str | None = None
        self.unavailable = "" if self._setpriv and self._prlimit else "util-linux's setpriv and prlimit are needed"
        if self.unavailable:
            self.mode = f"unavailable ({self.unavailable})"
            return
        prepare_root(scratch_root)
        self.mode = self._choose_mode(use_bubblewrap)
        self.python = self._choose_python()
        if self._as_root and not self.bubblewrap and not reachable_by_others(scratch_root):
            log.warning("the sandbox uids cannot reach %s (a parent is closed to others): programs run in their "
                        "scratch directory but cannot open it by its path ($HOME); choose a scratch root under "
                        "a directory others may pass through", scratch_root)
        log.info("tool sandbox: %s%s; python: %s", self.mode,
                 f", as uids {uids.start}-{uids.stop - 1}" if self._as_root else "", self.python or "none")

    @property
    def bubblewrap(self) -> bool:
        return self._bwrap is not None

    def workspace(self) -> Workspace:
        return Workspace(self._scratch_root, self._pool)

    async def run(self, workspace: Workspace, argv: Sequence[str], *, stdin: bytes | None = None,
                  timeout_s: float) -> RunOutcome:
        """Run ``argv`` in ``workspace``; cancelled, it kills everything at once and re-raises.

        Runs of one workspace take turns: each ends by killing whatever still
        runs as the workspace's uid, which must not hit another run's child.
        """
        if self.unavailable:
            return RunOutcome("", None, error=f"the sandbox is unavailable: {self.unavailable}")
        async with workspace.turn:
            return await self._run(workspace, argv, stdin, timeout_s)

    async def _run(self, workspace: Workspace, argv: Sequence[str], stdin: bytes | None,
                   timeout_s: float) -> RunOutcome:
        try:
            scratch = workspace.ensure()
        except (SandboxBusy, OSError) as e:
            return RunOutcome("", None, error=f"no scratch directory for the sandbox: {e}")
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command(argv, str(scratch), workspace.uid),
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self._environment(scratch),
                cwd=scratch,
                start_new_session=True,
            )
        except OSError as e:
            return RunOutcome("", None, error=f"the sandbox could not start: {e}")
        except BaseException:  # cancelled while starting: asyncio kills the child, not what it may have started
            workspace.sweep()
            raise
        capture = OutputCapture(self.limits.output_bytes)
        reader = asyncio.create_task(_read_into(process, capture))
        returncode: int | None = None
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s if math.isfinite(timeout_s) else None):
                    if stdin is not None:
                        await _feed(process, stdin)
                    returncode = await _exited(process)
        except BaseException:  # cancelled: kill everything now, wait for nothing
            _kill_all(process, workspace, running=True)
            reader.cancel()
            raise
        _kill_all(process, workspace, running=returncode is None)  # what it left running, or all of it
        if returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_exited(process), _DRAIN_S)
        await asyncio.wait({reader}, timeout=_DRAIN_S)  # its last words (a killed holder closes the pipe)
        reader.cancel()
        if returncode is None:
            return RunOutcome(capture.text(), None)
        return RunOutcome(capture.text(), returncode, self._signal_of(returncode))

    def _command(self, argv: Sequence[str], scratch: str, uid: int | None) -> list[str]:
        assert self._setpriv and self._prlimit
        limits = prlimit_argv(self._prlimit, self.limits, self._process_limit(uid))
        if self._bwrap is None:
            return [*setpriv_argv(self._setpriv, uid), *limits, *argv]
        sandbox = bwrap_argv(self._bwrap, self._layout, scratch, as_root_uid=uid, setpriv=self._setpriv,
                             tmp_bytes=self._tmp_bytes, disable_userns=self._disable_userns)
        return [*setpriv_argv(self._setpriv, None), *limits, *sandbox, *argv]

    def _process_limit(self, uid: int | None) -> int:
        if uid is not None:
            return self.limits.processes  # a uid of its own: only its processes count
        # Sharing the service's uid, whose threads count too: allow that many more.
        mine = os.getuid()
        tasks = 0
        for process in psutil.process_iter(["uids", "num_threads"]):
            if (ids := process.info.get("uids")) is not None and ids.real == mine:
                tasks += process.info.get("num_threads") or 1
        return tasks + self.limits.processes

    def _environment(self, scratch: Path) -> dict[str, str]:
        python_bin = os.path.dirname(self.python) + ":" if self.python else ""
        return {"PATH": python_bin + _STANDARD_PATH, "HOME": str(scratch), "LANG": os.environ.get("LANG", "C.UTF-8")}

    def _signal_of(self, returncode: int) -> int | None:
        if returncode < 0:
            return -returncode
        # bwrap passes on a child killed by signal N as exit code 128 + N
        if self._bwrap is not None and 128 < returncode < 128 + 65:
            return returncode - 128
        return None

    def _choose_mode(self, use_bubblewrap: bool) -> str:
        if not use_bubblewrap:
            return "limits only (bubblewrap turned off)"
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            return "limits only (bwrap not found)"
        options = bwrap_options(bwrap)
        self._tmp_bytes = self.limits.tmp_bytes if "--size" in options else None
        self._disable_userns = "--disable-userns" in options
        self._bwrap = bwrap
        true = shutil.which("true") or "/bin/true"
        if problem := self._probe([true]):
            self._bwrap = None
            return f"limits only (bwrap unusable: {problem})"
        return "bubblewrap"

    def _choose_python(self) -> str | None:
        """The service's own interpreter, or, where the sandbox uid cannot reach
        it (a Python under /root), the first system one that works."""
        candidates = [sys.executable, *(shutil.which(n, path=_STANDARD_PATH) or "" for n in ("python3", "python"))]
        for python in dict.fromkeys(c for c in candidates if c):
            if not (problem := self._probe([python, "-I", "-c", "import encodings, json"])):
                if python != sys.executable:
                    log.warning("the sandbox runs %s: the service's %s does not run there", python, sys.executable)
                return python
            log.info("the sandbox cannot run %s: %s", python, problem)
        return None

    def _probe(self, argv: list[str]) -> str:
        """Why ``argv`` does not run in the sandbox ("" when it does)."""
        workspace = self.workspace()
        try:
            scratch = workspace.ensure()
            done = subprocess.run(self._command(argv, str(scratch), workspace.uid), check=False, capture_output=True,
                                  env=self._environment(scratch), cwd=scratch, timeout=_PROBE_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        except (OSError, SandboxBusy, subprocess.TimeoutExpired) as e:
            return str(e)
        finally:
            workspace.close()
        if done.returncode == 0:
            return ""
        said = (done.stderr or done.stdout).decode("utf-8", "replace").strip().splitlines()
        return said[-1] if said else f"exit code {done.returncode}"


def _kill_all(process: asyncio.subprocess.Process, workspace: Workspace, *, running: bool) -> None:
    # Its descendants are looked up by pid only while it has not been seen
    # to end: a reaped pid may be reused (its group id cannot be while the
    # group has members, so the group kill is always safe).
    kill_tree(process.pid, descendants=running)
    workspace.sweep()


async def _read_into(process: asyncio.subprocess.Process, capture: OutputCapture) -> None:
    assert process.stdout is not None
    while data := await process.stdout.read(_READ_CHUNK):
        capture.feed(data)


async def _feed(process: asyncio.subprocess.Process, data: bytes) -> None:
    assert process.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it ended without reading it all
        process.stdin.write(data)
        await process.stdin.drain()
    process.stdin.close()


async def _exited(process: asyncio.subprocess.Process) -> int:
    """Its return code, once it has ended. Not ``Process.wait()``: on Python
    3.11 that also waits for the pipes to close, which a background child
    holding stdout delays until the timeout."""
    with contextlib.suppress(OSError):  # no pidfd (old kernel, or already reaped): poll
        fd = os.pidfd_open(process.pid)
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ended.done():
                ended.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await ended
        finally:
            loop.remove_reader(fd)
            os.close(fd)
    while (code := process.returncode) is None:
        await asyncio.sleep(0.01)  # asyncio's watcher reaps it a moment after
    return code
