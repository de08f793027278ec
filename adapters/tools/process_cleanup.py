"""Making sure nothing a sandboxed program started outlives its call.

Killing one by one loses to a fork bomb: every kill frees a slot that a
survivor refills. Stopped processes cannot fork, so every process is first
stopped, pass after pass until a pass finds none new, then all are killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable

import psutil

_MAX_PASSES = 50  # each pass stops what forked during the last; RLIMIT_NPROC bounds them


def kill_uid(uid: int) -> None:
    """SIGKILL every process whose real uid is ``uid`` (a conversation's own uid, never ours)."""
    if uid in (0, os.getuid(), os.geteuid()):
        raise ValueError(f"refusing to kill every process of uid {uid}: it is not a sandbox's own")
    _stop_then_kill(lambda: _processes_of(uid))


def kill_tree(pid: int, *, descendants: bool) -> None:
    """SIGKILL the process group ``pid`` leads and, with ``descendants``, every
    process still linked to ``pid`` as a descendant (whatever changed group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGSTOP)
    if descendants:
        _stop_then_kill(lambda: _descendants_of(pid))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _stop_then_kill(find: Callable[[], list[psutil.Process]]) -> None:
    stopped: dict[int, psutil.Process] = {}
    for _ in range(_MAX_PASSES):
        new = [p for p in find() if p.pid not in stopped]
        if not new:
            break
        for process in new:
            _signal(process, signal.SIGSTOP)
            stopped[process.pid] = process
    for process in stopped.values():
        _signal(process, signal.SIGKILL)


def _processes_of(uid: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["uids"]):
        uids = process.info.get("uids")
        if uids is not None and uids.real == uid:
            found.append(process)
    return found


def _descendants_of(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _signal(process: psutil.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(psutil.Error):
        process.send_signal(sig)  # psutil checks the pid still names the same process

