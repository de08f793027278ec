"""Helpers for tests about processes that must end."""

from __future__ import annotations

import time

import psutil


def gone(pid: int) -> bool:
    """Not running: exited (a zombie counts: only not reaped yet, by whoever adopted it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return gone(pid)
