"""A record of the children we start, so a crashed llamagate's are found (SPEC §11).

One JSON file per live child in a directory (the composition root passes
``<cache>/run/children``): the child's pid and create time, its executable,
and its owner's pid and create time. A pid alone is not an identity (pids
are reused); a pid with its create time is. Create times are kept in
seconds since boot, with the boot's id, because psutil's wall-clock create
time moves when the clock is stepped, which could make a live owner look gone.

``kill_stale_children`` kills every recorded child whose owner is gone,
whoever its parent is now: the old heuristic ("re-parented to pid 1")
missed children adopted by a subreaper.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

_SUFFIX = ".json"


@dataclass(frozen=True)
class ChildRecord:
    pid: int
    create_time: float  # seconds since boot
    exe: str
    owner_pid: int
    owner_create_time: float  # seconds since boot
    boot_id: str


def record_child(directory: Path, pid: int, exe: str) -> Path:
    """Write the record of our child ``pid``; returns its file (remove it when the child ends).

    Raises OSError (or psutil.NoSuchProcess if the child is already gone).
    """
    own = os.getpid()
    return write_record(directory, ChildRecord(pid, create_time(pid), exe, own, create_time(own), boot_id()))


def write_record(directory: Path, record: ChildRecord) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed: a concurrent reader sees
    # the whole record or none. A unique name, so a reused pid never
    # overwrites (or later removes) another owner's record.
    fd, temporary = tempfile.mkstemp(prefix=f".{record.pid}-", suffix=".tmp", dir=directory)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(record), f)
    final = Path(temporary).with_name(Path(temporary).name[1:].removesuffix(".tmp") + _SUFFIX)
    os.replace(temporary, final)
    return final


def read_records(directory: Path) -> list[tuple[Path, ChildRecord | None]]:
    """Every record file with its content (None: unreadable or malformed)."""
    if not directory.is_dir():
        return []
    return [(path, _read(path)) for path in sorted(directory.glob(f"*{_SUFFIX}"))]


def _read(path: Path) -> ChildRecord | None:
    try:
        raw = json.loads(path.read_text())
        return ChildRecord(
            pid=int(raw["pid"]),
            create_time=float(raw["create_time"]),
            exe=str(raw["exe"]),
            owner_pid=int(raw["owner_pid"]),
            owner_create_time=float(raw["owner_create_time"]),
            boot_id=str(raw["boot_id"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def kill_stale_children(directory: Path) -> list[int]:
    """SIGKILL (with its process group) every recorded child whose owner is
    gone, and drop its record; returns the pids killed (blocking).

    A live owner's children are left alone, and a pid now worn by another
    process (create time differs) is never signalled.
    """
    killed = []
    this_boot = boot_id()
    for path, record in read_records(directory):
        if record is None:
            log.warning("dropping unreadable child record %s", path)
        elif record.boot_id != this_boot:
            pass  # written before a reboot: nothing it names is running
        elif _is_alive(record.owner_pid, record.owner_create_time):
            continue
        elif _is_alive(record.pid, record.create_time):
            _kill_group(record.pid)
            killed.append(record.pid)
            log.warning("killed %s (pid %d) left behind by llamagate pid %d", record.exe, record.pid, record.owner_pid)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return killed


def create_time(pid: int) -> float:
    """When ``pid`` started, in seconds since boot (from its start in clock ticks,
    which never moves; psutil adds the boot time, which we take off again)."""
    return float(psutil.Process(pid).create_time() - psutil.boot_time())


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _is_alive(pid: int, started: float) -> bool:
    """The very process recorded: same pid *and* same create time."""
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False  # dead, only not reaped yet
        # Half a clock tick apart at most (the float arithmetic above is not exact).
        return abs(create_time(pid) - started) < 0.005
    except (psutil.Error, ValueError, OverflowError):
        return False


def _kill_group(pid: int) -> None:
    # Each child leads its own process group (see child_process): whatever
    # it started goes with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
