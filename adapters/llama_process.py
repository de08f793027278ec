"""The llama-server child process: spawn, wait for health, stop (SPEC §8–§11)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import httpx
import psutil

from llamagate.adapters.engine_discovery import child_environment, find_llama_server
from llamagate.adapters.memory_probe import is_rocm
from llamagate.domain.errors import EngineFailed
from llamagate.domain.gpus import pin_environment
from llamagate.domain.launch import LaunchSpec, server_arguments
from llamagate.domain.ports import Endpoint

log = logging.getLogger(__name__)

TAIL_LINES = 40
_OLLAMA_SIGNS = ("key not found", "unknown model architecture", "failed to load model")


class LlamaServerLauncher:
    """Starts llama-server children. The binary is looked up at launch time, so
    the service can run (and explain) before the engine is installed."""

    def __init__(
        self,
        find_binary: Callable[[], Path] = find_llama_server,
        *,
        health_timeout: float = 600.0,
        stop_grace: float = 5.0,
        poll_interval: float = 0.1,
    ) -> None:
        self._find_binary = find_binary
        self._health_timeout = health_timeout
        self._stop_grace = stop_grace
        self._poll_interval = poll_interval

    def free_port(self) -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    async def launch(self, spec: LaunchSpec, *, chat_template: str = "") -> LlamaServerProcess:
        binary = self._find_binary()
        template_file = _write_template(chat_template) if chat_template else None
        if template_file:
            spec = replace(spec, chat_template_file=str(template_file))
        argv = [str(binary), *server_arguments(spec)]
        log.info("starting %s", " ".join(argv))
        # Only we may talk to our child: other local processes could otherwise
        # use its slots behind our back. In the environment, not argv, so `ps`
        # does not show it; never logged.
        api_key = secrets.token_urlsafe(24)
        env = _pinned(child_environment(binary), spec.gpus) | {"LLAMA_API_KEY": api_key}
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: we stop the whole group
            )
        except OSError as error:  # not executable, wrong architecture, ...
            if template_file:
                template_file.unlink(missing_ok=True)
            raise EngineFailed(f"cannot start {binary}: {error}") from error
        return LlamaServerProcess(
            process,
            endpoint=Endpoint(f"http://{spec.host}:{spec.port}", api_key),
            model_path=spec.model_path,
            template_file=template_file,
            health_timeout=self._health_timeout,
            stop_grace=self._stop_grace,
            poll_interval=self._poll_interval,
        )


def _pinned(env: dict[str, str], gpus: tuple[int, ...]) -> dict[str, str]:
    """The planned GPUs only; an empty plan leaves the service's own view."""
    return pin_environment(env, gpus, rocm=is_rocm()) if gpus else env


def _write_template(text: str) -> Path:
    with tempfile.NamedTemporaryFile("w", suffix=".jinja", prefix="llamagate-", delete=False) as f:
        f.write(text)
        return Path(f.name)


class LlamaServerProcess:
    def __init__(
        self,
        process: asyncio.subprocess.Process,
        *,
        endpoint: Endpoint,
        model_path: str,
        template_file: Path | None,
        health_timeout: float,
        stop_grace: float,
        poll_interval: float,
    ) -> None:
        self.pid = process.pid
        self.endpoint = endpoint
        self._process = process
        self._model_path = model_path
        self._template_file = template_file
        self._health_timeout = health_timeout
        self._stop_grace = stop_grace
        self._poll_interval = poll_interval
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        # A full pipe would block the child: drain it for its whole life.
        self._drain = asyncio.create_task(self._drain_output())
        self._exited = asyncio.create_task(process.wait())

    def last_output(self) -> str:
        return "\n".join(self._tail)

    async def _drain_output(self) -> None:
        stream = self._process.stdout
        pending = b""
        while stream is not None and (data := await stream.read(65536)):
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                text = line.decode("utf-8", "replace").rstrip()
                self._tail.append(text)
                log.debug("llama-server[%d] %s", self.pid, text)
        if pending:
            self._tail.append(pending.decode("utf-8", "replace").rstrip())

    async def watch_until_ready(self) -> AsyncIterator[int]:
        deadline = asyncio.get_running_loop().time() + self._health_timeout
        async with httpx.AsyncClient(base_url=self.endpoint.base_url, timeout=2.0) as client:  # /health is public
            while not await self._healthy(client):
                if self._exited.done():
                    raise EngineFailed(await self._failure_message())
                if asyncio.get_running_loop().time() > deadline:
                    await self.stop()
                    raise EngineFailed(f"llama-server was not healthy after {self._health_timeout:.0f} s")
                yield _resident_bytes(self.pid)
                await asyncio.wait({self._exited}, timeout=self._poll_interval)

    async def _healthy(self, client: httpx.AsyncClient) -> bool:
        if self._exited.done():
            return False
        try:
            return (await client.get("/health")).status_code == 200
        except httpx.TransportError:
            return False  # not listening yet

    async def _failure_message(self) -> str:
        await asyncio.wait({self._drain}, timeout=1.0)  # collect its last words
        output = self.last_output()
        code = self._process.returncode
        if "ollama" in self._model_path.lower() and any(s in output.lower() for s in _OLLAMA_SIGNS):
            hint = "some Ollama models use a format llama.cpp does not support"
        else:
            hint = "check the file is a valid model and that memory suffices"
        return f"llama-server exited with code {code} before it was ready ({hint}); its last output:\n{output}"

    async def wait_exit(self) -> str:
        code = await asyncio.shield(self._exited)
        await asyncio.wait({self._drain}, timeout=1.0)
        return f"exit code {code}; its last output:\n{self.last_output()}"

    async def stop(self) -> None:
        try:
            if not self._exited.done():
                _signal_group(self.pid, signal.SIGTERM)
                await asyncio.wait({self._exited}, timeout=self._stop_grace)
            if not self._exited.done():
                log.warning("llama-server %d ignored SIGTERM; killing it", self.pid)
                _signal_group(self.pid, signal.SIGKILL)
                await self._exited
        except BaseException:  # cancelled mid-stop: never leave the child behind
            _signal_group(self.pid, signal.SIGKILL)
            raise
        finally:
            self._drain.cancel()
            if self._template_file:
                self._template_file.unlink(missing_ok=True)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _resident_bytes(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0
