"""Split GGUF models: ``NAME-00001-of-00004.gguf`` and its siblings (SPEC §2)."""

from __future__ import annotations

import re

_SHARD = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


def shard_names(filename: str) -> list[str]:
    """All shard file names of the model whose first (or any) shard is ``filename``.

    A file that is not part of a split model is its own only shard.
    """
    match = _SHARD.match(filename)
    if not match:
        return [filename]
    prefix, count = match["prefix"], int(match["count"])
    return [f"{prefix}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def model_id(filename: str) -> str:
    """The display id: the file name without the shard suffix and extension."""
    match = _SHARD.match(filename)
    if match:
        return match["prefix"]
    return filename[:-5] if filename.lower().endswith(".gguf") else filename
