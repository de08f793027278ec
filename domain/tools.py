"""What a server-side tool gives back (SPEC §14)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ToolResult:
    text: str  # what goes back to the model, already cut to the tool's output limit
    failed: bool = False  # timeout, non-zero exit, refused URL, backend error
