"""The agent loop's decisions (SPEC §14), one run per Generate with server-side tools.

``AgentRun`` holds the conversation as it grows and decides, turn by turn,
what happens next; it never calls a model or a tool (the application does,
through ports) and never waits. One turn goes:

    turn = run.next_turn()                # None: the run is over
    ... the model answers turn.messages ...
    planned = run.turn_ended(reply)       # the calls to make, in order
    for call in planned: run.call_finished(call, result, failed=...)

Rules: a repeated identical call right after a success is answered
"already made" instead of run; a failed result gets a nudge; a short reply
that only announces a plan is re-prompted (at most ``max_plan_prompts``
times, not counted against the budget); after ``max_iterations`` turns with
calls, one last turn without tools; usage and timings add up over turns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llamagate.domain.agent_rules import (
    ACT_NOW,
    ALREADY_MADE,
    FINAL_ANSWER,
    announces_plan,
    canonical,
    for_the_model,
    status_text,
    summed,
)
from llamagate.domain.chat import ChatMessage, FinishReason, Role, TextPart, Timings, ToolCall, Usage, text_message

DEFAULT_ITERATIONS = 25
DEFAULT_TOOL_TIMEOUT_S = 300.0
NO_TIMEOUT_FROM_S = 9999.0  # SPEC §14: a timeout this long means none


@dataclass(frozen=True)
class AgentLimits:
    max_iterations: int = DEFAULT_ITERATIONS
    tool_timeout_s: float | None = DEFAULT_TOOL_TIMEOUT_S  # None: no timeout
    max_plan_prompts: int = 3
    result_chars: int = 0  # a result is cut to this many characters for the model (0: as the tool gave it)

    @staticmethod
    def timeout_from(seconds: float) -> float | None:
        return None if seconds >= NO_TIMEOUT_FROM_S else seconds


@dataclass(frozen=True)
class Turn:
    messages: tuple[ChatMessage, ...]
    offer_tools: bool  # False: the last turn, which must answer without tools


@dataclass(frozen=True)
class Reply:
    """What the model said in a turn: visible text, and its calls with their
    arguments already made objects (see ``agent_rules.arguments_object``)."""

    text: str
    calls: tuple[tuple[ToolCall, dict[str, object]], ...] = ()
    reasoning: str = ""
    finish_reason: FinishReason = FinishReason.STOP
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)


@dataclass(frozen=True)
class PlannedCall:
    call: ToolCall
    arguments: dict[str, object]
    status: str  # what the user is shown while it runs
    run: bool  # False: answered without running it (``answer`` is the result)
    answer: str = ""
    client: bool = False  # a tool the client runs: the run ends with it


class AgentRun:
    def __init__(self, messages: tuple[ChatMessage, ...], server_tools: frozenset[str],
                 client_tools: frozenset[str] = frozenset(), limits: AgentLimits | None = None) -> None:
        self._messages = list(messages)
        self._server, self._client = server_tools, client_tools
        self.limits = limits or AgentLimits()
        self.iterations = 0
        self.plan_prompts = 0
        self._last_success: tuple[str, str] | None = None  # (name, canonical arguments) of the last call that worked
        self._last_call: tuple[str, str] | None = None
        self._final_turn_pending = False
        self._over = False
        self.finish_reason = FinishReason.STOP
        self.usage, self.timings = Usage(), Timings()

    @property
    def messages(self) -> tuple[ChatMessage, ...]:
        return tuple(self._messages)

    def next_turn(self) -> Turn | None:
        if self._over:
            return None
        if self._final_turn_pending:
            self._over = True  # whatever it says is the answer
            return Turn((*self._messages, text_message(Role.USER, FINAL_ANSWER)), offer_tools=False)
        return Turn(tuple(self._messages), offer_tools=True)

    def turn_ended(self, reply: Reply) -> list[PlannedCall]:
        self.usage, self.timings = summed((self.usage, self.timings), (reply.usage, reply.timings))
        self.finish_reason = reply.finish_reason
        if self._over or not reply.calls:
            return self._answered(reply)
        self.iterations += 1
        self._messages.append(ChatMessage(Role.ASSISTANT, _text(reply.text), reply.reasoning,
                                          tuple(call for call, _ in reply.calls)))
        planned = [self._plan(call, arguments) for call, arguments in reply.calls]
        if any(p.client for p in planned):
            self._over = True
            self.finish_reason = FinishReason.TOOL_CALLS
        elif self.iterations >= self.limits.max_iterations:
            self._final_turn_pending = True
        return planned

    def call_finished(self, planned: PlannedCall, result: str, *, failed: bool) -> str:
        """Record a call's result (in call order); returns the text the model reads."""
        key = (planned.call.name, canonical(planned.arguments))
        if planned.run:
            self._last_success = None if failed else key
        self._last_call = key
        text = for_the_model(result, failed=failed, limit=self.limits.result_chars)
        self._messages.append(ChatMessage(Role.TOOL, _text(text), tool_call_id=planned.call.id))
        return text

    def _answered(self, reply: Reply) -> list[PlannedCall]:
        plan_only = announces_plan(reply.text) and self.plan_prompts < self.limits.max_plan_prompts
        if not self._over and plan_only:
            self.plan_prompts += 1
            self._messages += [ChatMessage(Role.ASSISTANT, _text(reply.text)), text_message(Role.USER, ACT_NOW)]
            return []
        self._over = True
        return []

    def _plan(self, call: ToolCall, arguments: dict[str, object]) -> PlannedCall:
        status = status_text(call.name, arguments)
        if call.name in self._client:
            return PlannedCall(call, arguments, status, run=False, client=True)
        if call.name not in self._server:
            offered = ", ".join(sorted(self._server | self._client))
            return PlannedCall(call, arguments, status, run=False,
                               answer=f"Error: there is no tool named {call.name!r} (the tools are: {offered})")
        if (call.name, canonical(arguments)) == self._last_success == self._last_call:
            return PlannedCall(call, arguments, status, run=False, answer=ALREADY_MADE)
        return PlannedCall(call, arguments, status, run=True)


def _text(text: str) -> tuple[TextPart, ...]:
    return (TextPart(text),) if text else ()
