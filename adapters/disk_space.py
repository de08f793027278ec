"""DiskSpace: free bytes on the file system a directory is, or will be, on."""

from __future__ import annotations

import os
import shutil


class DiskSpace:
    def free_bytes(self, directory: str) -> int:
        """Free bytes where ``directory`` lives; a directory not made yet is
        asked of its nearest existing ancestor, which will hold it."""
        return shutil.disk_usage(nearest_existing(directory)).free


def nearest_existing(directory: str) -> str:
    path = os.path.abspath(os.path.expanduser(directory))
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:  # the root itself is missing: nothing to ask
            raise FileNotFoundError(f"no existing ancestor of {directory}")
        path = parent
    return path
