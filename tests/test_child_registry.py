"""SPEC §11, defect 10: the children registry. A recorded child whose owner is
gone is killed; a live owner's child, and a process that merely wears a
recorded pid, are not."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import psutil
import pytest

from llamagate.adapters.child_registry import (
    ChildRecord,
    boot_id,
    create_time,
    kill_stale_children,
    read_records,
    record_child,
    write_record,
)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process standing in for a recorded child (its own group, as ours are)."""
    process = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def dead_owner() -> tuple[int, float]:
    """The pid and create time of an owner that has since died."""
    owner = subprocess.Popen(["sleep", "1000"])
    identity = owner.pid, create_time(owner.pid)
    owner.kill()
    owner.wait()
    return identity


def record(child: int, owner: tuple[int, float], *, child_time: float | None = None, boot: str | None = None) -> ChildRecord:
    started = create_time(child) if child_time is None else child_time
    return ChildRecord(child, started, "/bin/sleep", owner[0], owner[1], boot_id() if boot is None else boot)


def myself() -> tuple[int, float]:
    return os.getpid(), create_time(os.getpid())


def test_a_recorded_child_whose_owner_is_gone_is_killed_and_its_record_dropped(tmp_path, sleeper, dead_owner):
    path = write_record(tmp_path, record(sleeper.pid, dead_owner))

    assert kill_stale_children(tmp_path) == [sleeper.pid]

    assert sleeper.wait(timeout=10) == -9
    assert not path.exists()


def test_a_live_owners_child_is_left_alone_and_keeps_its_record(tmp_path, sleeper):
    path = write_record(tmp_path, record(sleeper.pid, myself()))

    assert kill_stale_children(tmp_path) == []

    assert sleeper.poll() is None and path.exists()


def test_an_owner_whose_pid_was_reused_counts_as_gone(tmp_path, sleeper):
    # Our own pid, but another create time: the recorded owner is not us.
    path = write_record(tmp_path, record(sleeper.pid, (os.getpid(), create_time(os.getpid()) - 50)))

    assert kill_stale_children(tmp_path) == [sleeper.pid]
    assert sleeper.wait(timeout=10) == -9 and not path.exists()


def test_a_reused_child_pid_is_never_killed(tmp_path, sleeper, dead_owner):
    # The recorded child started earlier than the process wearing its pid now.
    path = write_record(tmp_path, record(sleeper.pid, dead_owner, child_time=create_time(sleeper.pid) - 1.0))

    assert kill_stale_children(tmp_path) == []

    assert sleeper.poll() is None
    assert not path.exists()  # the recorded child is gone: the record is stale


def test_records_from_before_a_reboot_are_dropped_without_killing_anything(tmp_path, sleeper, dead_owner):
    path = write_record(tmp_path, record(sleeper.pid, dead_owner, boot="another-boot"))

    assert kill_stale_children(tmp_path) == []
    assert sleeper.poll() is None and not path.exists()


def test_an_unreadable_record_is_dropped(tmp_path):
    (tmp_path / "123-abc.json").write_text("{not json")
    (tmp_path / "456-abc.json").write_text('{"pid": 456}')

    assert kill_stale_children(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_a_missing_directory_has_nothing_to_clean(tmp_path):
    assert kill_stale_children(tmp_path / "never-created") == []


def test_record_child_names_the_child_and_its_owner(tmp_path, sleeper):
    path = record_child(tmp_path / "children", sleeper.pid, "/bin/sleep")

    [(found, content)] = read_records(tmp_path / "children")
    assert found == path
    assert content == ChildRecord(sleeper.pid, create_time(sleeper.pid), "/bin/sleep", *myself(), boot_id())
    assert psutil.Process(sleeper.pid).is_running()
    assert not [p for p in path.parent.iterdir() if p.suffix != ".json"]  # no temporary left behind
