"""The server-side tools (SPEC §14) as adapters of ``domain.ports.ServerTool``.

``build_tools`` runs once at start (it probes the sandbox); each conversation
then takes its own set with ``async with toolbox.conversation() as tools``,
so that ``python`` and ``terminal`` get a scratch directory of their own,
removed with everything still running there when the conversation ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from llamagate.adapters.tools.code_tools import PythonTool, TerminalTool
from llamagate.adapters.tools.fetch_url import FetchUrlTool
from llamagate.adapters.tools.sandbox import Sandbox, SandboxLimits
from llamagate.adapters.tools.sandbox_host import scratch_root_default
from llamagate.adapters.tools.searxng import SearxngBackend
from llamagate.adapters.tools.web_search import WebSearchTool
from llamagate.adapters.tools.workspace import Workspace
from llamagate.domain.chat import Tool
from llamagate.domain.ports import ServerTool

__all__ = ["TOOL_NAMES", "SandboxLimits", "Toolbox", "build_tools", "scratch_root_default"]

log = logging.getLogger(__name__)

TOOL_NAMES = frozenset({"python", "terminal", "web_search", "fetch_url"})
_CODE_TOOLS = frozenset({"python", "terminal"})


class Toolbox:
    """The enabled tools; ``conversation()`` hands one conversation its own."""

    def __init__(self, sandbox: Sandbox | None, shared: Mapping[str, ServerTool], code: frozenset[str]) -> None:
        self._sandbox = sandbox
        self._shared = dict(shared)  # tools without per-conversation state
        self._code = code
        self._shell = shutil.which("bash") or shutil.which("sh") or "/bin/sh"

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._shared) | self._code

    @property
    def sandbox_mode(self) -> str | None:
        """How code runs ("bubblewrap", "limits only (...)"); None when no code tool is enabled."""
        return self._sandbox.mode if self._sandbox is not None else None

    def definitions(self) -> dict[str, Tool]:
        """Each enabled tool's name, description and parameters, as the model is shown them."""
        workspace = self._sandbox.workspace() if self._sandbox is not None else None  # never used: nothing made
        return {name: tool.definition for name, tool in self._tools(workspace).items()}

    @contextlib.asynccontextmanager
    async def conversation(self) -> AsyncIterator[dict[str, ServerTool]]:
        workspace = self._sandbox.workspace() if self._sandbox is not None else None
        try:
            yield self._tools(workspace)
        finally:
            if workspace is not None:
                await _close(workspace)

    def _tools(self, workspace: Workspace | None) -> dict[str, ServerTool]:
        tools = dict(self._shared)
        if workspace is not None and self._sandbox is not None:
            if "python" in self._code:
                tools["python"] = PythonTool(self._sandbox, workspace)
            if "terminal" in self._code:
                tools["terminal"] = TerminalTool(self._sandbox, workspace, self._shell)
        return tools


def build_tools(enabled: set[str] | frozenset[str], *, searxng_url: str | None, scratch_root: Path | None = None,
                allow_private_fetch: bool = False, limits: SandboxLimits | None = None,
                use_bubblewrap: bool = True) -> Toolbox:
    """The tools named in ``enabled`` (blocking: probes the sandbox when a code tool is enabled).

    Raises ValueError for an unknown name, or web_search without a SearXNG URL;
    OSError when the scratch root cannot be made or written.
    """
    if unknown := set(enabled) - TOOL_NAMES:
        raise ValueError(f"unknown server tools {sorted(unknown)}; the tools are {sorted(TOOL_NAMES)}")
    shared: dict[str, ServerTool] = {}
    if "web_search" in enabled:
        if not searxng_url:
            raise ValueError("web_search needs a SearXNG URL to search through")
        shared["web_search"] = WebSearchTool(SearxngBackend(searxng_url))
    if "fetch_url" in enabled:
        shared["fetch_url"] = FetchUrlTool(allow_private=allow_private_fetch)
    code = frozenset(enabled) & _CODE_TOOLS
    sandbox = None
    if code:
        sandbox = Sandbox(scratch_root or scratch_root_default(), limits or SandboxLimits(),
                          use_bubblewrap=use_bubblewrap)
    return Toolbox(sandbox, shared, code)


async def _close(workspace: Workspace) -> None:
    # Removing a large scratch directory must not stall the event loop; if
    # this is cancelled, the thread still finishes the job.
    try:
        await asyncio.shield(asyncio.to_thread(workspace.close))
    except OSError as e:
        log.warning("could not remove a conversation's scratch directory: %s", e)
