"""The composition root's own work: what it does before serving, off the event loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from llamagate.server import app
from llamagate.server.settings import Settings


def answered_by_the_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """A blocking step that needs the event loop to answer it: on the loop
    itself it could never be answered, and would time out."""
    pong = threading.Event()
    loop.call_soon_threadsafe(pong.set)
    return pong.wait(2)


def test_defect_13_the_stale_children_scan_and_the_default_model_fetch_run_off_the_event_loop(monkeypatch,
                                                                                             tmp_path):
    answers: list[bool] = []

    async def main() -> tuple[list[int], Path]:
        loop = asyncio.get_running_loop()

        def scan(directory: Path) -> list[int]:
            answers.append(answered_by_the_loop(loop))
            return [4242]

        def fetch(cache: Path) -> Path:
            answers.append(answered_by_the_loop(loop))
            return cache / "model.gguf"

        monkeypatch.setattr(app, "kill_stale_children", scan)
        monkeypatch.setattr(app, "ensure_default_model", fetch)
        settings = Settings(cache_dir=tmp_path)
        return await app.clean_stale_children(settings), await app.default_model(settings)

    killed, model = asyncio.run(main())

    assert answers == [True, True]
    assert (killed, model) == ([4242], tmp_path / "model.gguf")
