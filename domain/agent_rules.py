"""The agent loop's small rules (SPEC §14): status texts, failures and their
nudge, a plan announced instead of acted on, arguments that are not JSON,
and what a turn's token counts add up to. Pure functions, no state.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from urllib.parse import urlsplit

from llamagate.domain.chat import Timings, Usage

_FAILURE_PREFIXES = ("Error", "Search failed", "Execution error", "Blocked:", "Exit code", "Failed to fetch",
                     "Failed to resolve", "No query provided")
NUDGE = "\n\n(The tool call failed: try a different approach.)"
ALREADY_MADE = ("This exact call was just made and succeeded; its result is above. "
                "Do not repeat it: try something else, or give your answer.")
ACT_NOW = ("You described what you will do but did not call a tool. Call the tool now, "
           "in the tool-call format, instead of describing it.")
FINAL_ANSWER = "You have used all your tool calls. Give your final answer now, without calling any tool."
_IMAGES_MARKER = "\n__IMAGES__:"
_PLAN_LIMIT = 2000  # a longer reply is an answer, not an announcement
_PLAN_PHRASES = re.compile(
    r"\b(i['’]ll|i will|let me|i am going to|first|step 1:|here['’]s my plan|now i|next i)", re.IGNORECASE)
_STATUS_WIDTH = 60


def status_text(name: str, arguments: dict[str, object]) -> str:
    """What the user is shown while a tool runs (SPEC §14's wording)."""
    if name in ("web_search", "fetch_url") and isinstance(url := arguments.get("url"), str) and url:
        try:
            host = urlsplit(url).hostname or url
        except ValueError:  # "http://[bad": the model wrote it; the tool will say what is wrong
            host = url
        return f"Reading: {host.removeprefix('www.')[:_STATUS_WIDTH]}"
    if name == "web_search":
        return f"Searching: {arguments.get('query', '')}"
    if name == "python":
        code = str(arguments.get("code", ""))
        return f"Running Python: {code.strip().splitlines()[0][:_STATUS_WIDTH] if code.strip() else ''}"
    if name == "terminal":
        return f"Running: {str(arguments.get('command', ''))[:_STATUS_WIDTH]}"
    return f"Calling: {name}"


def as_json(value: object) -> str:
    """JSON text that is valid UTF-8: escapes (``\\ud800``) kept as escapes
    where the text holds what UTF-8 cannot (a lone surrogate the model wrote)."""
    text = json.dumps(value, ensure_ascii=False)
    return text if _utf8(text) else json.dumps(value)


def clean(text: str) -> str:
    """``text`` with what UTF-8 cannot carry replaced, for the client's events."""
    return text if _utf8(text) else text.encode("utf-8", "replace").decode("utf-8")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_failure(result: str) -> bool:
    return result.startswith(_FAILURE_PREFIXES)


def for_the_model(result: str, *, failed: bool, limit: int = 0) -> str:
    """A tool's result as the model reads it: no image marker line, at most
    ``limit`` characters (0: any; the middle goes), and a nudge after a failure."""
    text = _cut(result.split(_IMAGES_MARKER, 1)[0], limit)
    return text + NUDGE if failed or is_failure(text) else text


def _cut(text: str, limit: int) -> str:
    if limit <= 0 or len(text) <= limit:
        return text
    head, tail = limit * 3 // 4, limit // 4  # errors come at the end: keep some of it
    return f"{text[:head]}\n[... {len(text) - head - tail:,} characters cut ...]\n{text[len(text) - tail:]}"


def announces_plan(reply: str) -> bool:
    """A short reply that says what it will do instead of doing it."""
    return 0 < len(reply) < _PLAN_LIMIT and _PLAN_PHRASES.search(reply) is not None


def arguments_object(raw: str, *, healed: bool) -> dict[str, object]:
    """A call's arguments as an object. Text that is not a JSON object is
    kept whole: as the query of a healed call (models that lose the format
    mostly lose it on search queries), else as ``raw``."""
    try:
        value = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError):
        value = None
    if isinstance(value, dict):
        return value
    return {"query": raw} if healed else {"raw": raw}


def canonical(arguments: dict[str, object]) -> str:
    """One spelling of the same arguments, to tell a repeated call."""
    return json.dumps(arguments, sort_keys=True, ensure_ascii=False)


def summed(total: tuple[Usage, Timings], turn: tuple[Usage, Timings]) -> tuple[Usage, Timings]:
    """Completion tokens and generation time add up over the turns; the
    prompt is the last turn's (it holds the whole conversation)."""
    (usage, timings), (u, t) = total, turn
    completion = usage.completion_tokens + u.completion_tokens
    predicted_n, predicted_ms = timings.predicted_n + t.predicted_n, timings.predicted_ms + t.predicted_ms
    return (
        Usage(u.prompt_tokens, completion, u.prompt_tokens + completion, u.cached_prompt_tokens),
        replace(t, predicted_n=predicted_n, predicted_ms=predicted_ms,
                predicted_per_second=predicted_n * 1000.0 / predicted_ms if predicted_ms > 0 else 0.0,
                draft_n=timings.draft_n + t.draft_n, draft_accepted_n=timings.draft_accepted_n + t.draft_accepted_n),
    )
