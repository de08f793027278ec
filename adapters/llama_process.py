"""Starting llama-server children and watching them come up (SPEC §8–§11)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import psutil

from llamagate.adapters.child_process import ChildProcess
from llamagate.adapters.engine_discovery import child_environment
from llamagate.adapters.llama_argv import HOST, server_arguments
from llamagate.adapters.llama_http import LlamaHttpClient
from llamagate.adapters.memory_probe import is_rocm
from llamagate.domain.errors import EngineFailed
from llamagate.domain.gpus import pin_environment
from llamagate.domain.launch import LaunchSpec
from llamagate.domain.ports import EngineExit

log = logging.getLogger(__name__)

_VERSION_TIMEOUT_S = 30.0
_OLLAMA_SIGNS = ("key not found", "unknown model architecture", "failed to load model")


class LlamaServerLauncher:
    """Starts llama-server children. The binary is looked up when needed, so
    the service can run (and explain) before the engine is installed."""

    def __init__(
        self,
        find_binary: Callable[[], Path],
        *,
        registry_dir: Path | None,
        env: Mapping[str, str],
        health_timeout: float = 600.0,
        stop_grace: float = 5.0,
        poll_interval: float = 0.01,  # readiness: at most this much added to a load
    ) -> None:
        self._find_binary = find_binary
        self._registry_dir = registry_dir
        self._env = env  # the service's environment (Settings.env): what children inherit
        self._health_timeout = health_timeout
        self._stop_grace = stop_grace
        self._poll_interval = poll_interval
        self._runs: set[tuple[str, int, int, int]] = set()  # binaries seen to run, by identity

    def check(self) -> None:
        """Find the binary and run ``--version`` (once per file version), so a
        load that could not even start fails before the loaded model is stopped."""
        binary = self._find_binary()  # EngineNotFound lists where it looked
        try:
            stat = binary.stat()
        except OSError as error:
            raise EngineFailed(f"cannot run {binary}: {error}") from error
        # Mode too: a chmod -x leaves the mtime as it was.
        identity = (str(binary), stat.st_mtime_ns, stat.st_size, stat.st_mode)
        if identity not in self._runs:
            _check_runs(binary, child_environment(binary, self._env))
            self._runs.add(identity)

    async def launch(self, spec: LaunchSpec) -> LlamaServerProcess:
        # Finding the binary and its libraries stats files: off the event loop.
        binary, env = await asyncio.to_thread(self._environment, spec)
        port = _free_port()
        # Only we may talk to our child: other local processes could otherwise
        # use its slots behind our back. In the environment, not argv, so `ps`
        # does not show it; never logged.
        api_key = secrets.token_urlsafe(24)
        template = _write_template(spec.chat_template) if spec.chat_template else None
        try:
            child = await self._spawn(binary, spec, env | {"LLAMA_API_KEY": api_key}, port=port, template=template)
        except BaseException:
            if template:
                template.unlink(missing_ok=True)
            raise
        return LlamaServerProcess(
            child,
            LlamaHttpClient(f"http://{HOST}:{port}", api_key),
            model_path=spec.model_path,
            health_timeout=self._health_timeout,
            stop_grace=self._stop_grace,
            poll_interval=self._poll_interval,
        )

    def _environment(self, spec: LaunchSpec) -> tuple[Path, dict[str, str]]:
        """The binary and the child's environment (blocking)."""
        binary = self._find_binary()
        return binary, _pinned(child_environment(binary, self._env), spec.gpus)

    async def _spawn(
        self, binary: Path, spec: LaunchSpec, env: dict[str, str], *, port: int, template: Path | None
    ) -> ChildProcess:
        argv = [str(binary), *server_arguments(spec, port=port, template_file=str(template) if template else None)]
        log.info("starting %s", " ".join(argv))
        try:
            return await ChildProcess.spawn(
                argv,
                env=env,
                name="llama-server",
                registry_dir=self._registry_dir,
                # Whenever it ends, crash included, not only on stop() (defect 3).
                on_exit=[_remover(template)] if template else [],
            )
        except OSError as error:  # no setpriv to run it through, and not executable itself
            raise EngineFailed(f"cannot start {binary}: {error}") from error


class LlamaServerProcess:
    """One llama-server child (an ``EngineProcess``)."""

    def __init__(
        self,
        child: ChildProcess,
        http: LlamaHttpClient,
        *,
        model_path: str,
        health_timeout: float,
        stop_grace: float,
        poll_interval: float,
    ) -> None:
        self._child = child
        self._http = http
        self._model_path = model_path
        self._health_timeout = health_timeout
        self._stop_grace = stop_grace
        self._poll_interval = poll_interval

    @property
    def pid(self) -> int:
        return self._child.pid

    @property
    def chat(self) -> LlamaHttpClient:
        return self._http

    async def wait_ready(self) -> AsyncIterator[int]:
        """Yield resident bytes while loading; return once ``/health`` says 200."""
        deadline = asyncio.get_running_loop().time() + self._health_timeout
        while not await self._healthy():
            if self._child.exited:
                await self.stop()  # only closes the connection pool: the child is gone
                raise EngineFailed(await self._failure_message())
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise EngineFailed(
                    f"llama-server was not healthy after {self._health_timeout:g} s; "
                    f"its last output:\n{self._child.last_output()}"
                )
            yield _resident_bytes(self.pid)
            await self._child.wait_exit_for(self._poll_interval)  # wakes at once if it dies

    async def _healthy(self) -> bool:
        # Another process could take a dead child's port: ask only while ours lives.
        return not self._child.exited and await self._http.healthy()

    async def stop(self, grace: float | None = None) -> None:
        try:
            await self._child.stop(self._stop_grace if grace is None else grace)
        finally:
            await self._http.aclose()

    async def responsive(self, timeout: float) -> bool:
        return not self._child.exited and await self._http.responsive(timeout)

    async def wait_exit(self) -> EngineExit:
        ended = await self._child.wait_exit()
        return EngineExit(ended.how, ended.last_output)

    async def _failure_message(self) -> str:
        ended = await self._child.wait_exit()
        output = ended.last_output
        if "ollama" in self._model_path.lower() and any(s in output.lower() for s in _OLLAMA_SIGNS):
            hint = "some Ollama models use a format llama.cpp does not support"
        else:
            hint = "check the file is a valid model and that memory suffices"
        ending = f"exited with code {ended.returncode}" if ended.returncode >= 0 else f"was {ended.how}"
        return f"llama-server {ending} before it was ready ({hint}); its last output:\n{output}"


def _check_runs(binary: Path, env: dict[str, str]) -> None:
    """Blocking: ``binary --version`` must exit 0."""
    try:
        result = subprocess.run(
            [str(binary), "--version"],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_VERSION_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as error:  # not executable, wrong format, hung
        raise EngineFailed(f"cannot run {binary}: {error}") from error
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode("utf-8", "replace").strip()[-2000:]
        raise EngineFailed(f"cannot run {binary}: `--version` exited with code {result.returncode}:\n{output}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _pinned(env: dict[str, str], gpus: tuple[int, ...]) -> dict[str, str]:
    """The planned GPUs only; an empty plan leaves the service's own view."""
    return pin_environment(env, gpus, rocm=is_rocm()) if gpus else env


def _write_template(text: str) -> Path:
    fd, name = tempfile.mkstemp(suffix=".jinja", prefix="llamagate-template-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(name)


def _remover(path: Path) -> Callable[[], None]:
    return lambda: path.unlink(missing_ok=True)


def _resident_bytes(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0
