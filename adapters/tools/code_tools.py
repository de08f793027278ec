"""The ``python`` and ``terminal`` tools: the model's code and shell commands,
run in the conversation's sandbox (SPEC §14)."""

from __future__ import annotations

import json
import signal
from collections.abc import Mapping

from llamagate.adapters.tools.sandbox import RunOutcome, Sandbox, SandboxLimits, Workspace
from llamagate.domain.chat import Tool
from llamagate.domain.tools import ToolResult

_MAX_COMMAND_CHARS = 100_000  # a command line is one exec argument (Linux caps those at 128 KiB)


def _schema(name: str, description: str) -> str:
    return json.dumps({"type": "object", "properties": {name: {"type": "string", "description": description}},
                       "required": [name]})


class PythonTool:
    def __init__(self, sandbox: Sandbox, workspace: Workspace) -> None:
        self._sandbox = sandbox
        self._workspace = workspace

    @property
    def definition(self) -> Tool:
        return Tool(
            "python",
            "Run Python 3 code in a sandbox and get what it prints (stdout and stderr). No network. "
            "Files written to the current directory stay there for later calls in this conversation.",
            _schema("code", "The Python program to run; print what you want to see."),
        )

    async def run(self, arguments: Mapping[str, object], *, timeout_s: float) -> ToolResult:
        code = arguments.get("code")
        if not isinstance(code, str) or not code.strip():
            return ToolResult('Error: the python tool needs "code", the program to run, as a string', failed=True)
        if self._sandbox.python is None:
            return ToolResult("Error: no Python interpreter runs in the sandbox here", failed=True)
        # The program comes on stdin, not argv: no size limit, nothing left in the scratch directory.
        # -u: what it printed before a kill is not lost in a buffer.
        outcome = await self._sandbox.run(self._workspace, [self._sandbox.python, "-I", "-u", "-"],
                                          stdin=code.encode("utf-8", "surrogatepass"), timeout_s=timeout_s)
        return describe(outcome, self._sandbox.limits, timeout_s)


class TerminalTool:
    def __init__(self, sandbox: Sandbox, workspace: Workspace, shell: str) -> None:
        self._sandbox = sandbox
        self._workspace = workspace
        self._shell = shell

    @property
    def definition(self) -> Tool:
        return Tool(
            "terminal",
            "Run a shell command (bash) in a sandbox and get its output (stdout and stderr). No network. "
            "The current directory is this conversation's scratch directory, kept between calls.",
            _schema("command", "The command line to run."),
        )

    async def run(self, arguments: Mapping[str, object], *, timeout_s: float) -> ToolResult:
        command = arguments.get("command")
        if not isinstance(command, str) or not command.strip():
            return ToolResult('Error: the terminal tool needs "command", the command line, as a string', failed=True)
        if len(command) > _MAX_COMMAND_CHARS:
            return ToolResult(f"Error: the command is {len(command)} characters long; at most "
                              f"{_MAX_COMMAND_CHARS} are accepted (write longer programs to a file)", failed=True)
        outcome = await self._sandbox.run(self._workspace, [self._shell, "-c", command], timeout_s=timeout_s)
        return describe(outcome, self._sandbox.limits, timeout_s)


def describe(outcome: RunOutcome, limits: SandboxLimits, timeout_s: float) -> ToolResult:
    """What the model is told of a run: its output, and why it failed when it did."""
    output = outcome.output  # already cut to the output limit as it was read
    if outcome.error:
        return ToolResult(f"Error: {outcome.error}", failed=True)
    if outcome.returncode is None:
        return ToolResult(_with_output(f"Error: timed out after {timeout_s:g} s; it was killed.", output), failed=True)
    if outcome.signal_number is not None:
        return ToolResult(_with_output(_killed_by(outcome.signal_number, limits), output), failed=True)
    if outcome.returncode != 0:
        return ToolResult(_with_output(f"Exit code {outcome.returncode}", output), failed=True)
    return ToolResult(output if output.strip() else "(no output)")


def _killed_by(number: int, limits: SandboxLimits) -> str:
    if number == signal.SIGXCPU:
        return f"Error: it used up its CPU time limit ({limits.cpu_s} s) and was killed."
    if number == signal.SIGXFSZ:
        return f"Error: it tried to write a file larger than the limit ({limits.file_bytes} bytes) and was killed."
    if number == signal.SIGKILL:
        return (f"Error: it was killed (SIGKILL): over its CPU time limit ({limits.cpu_s} s) "
                "or out of memory.")
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    return f"Error: it was killed by {name}."


def _with_output(message: str, output: str) -> str:
    return f"{message}\n{output}" if output.strip() else message
