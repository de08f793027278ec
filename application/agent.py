"""Generate with server-side tools: the agent loop's turns through the model
slot, its calls through the tools, everything streamed as it happens.

``domain.agent_loop.AgentRun`` decides; this drives it. Each turn is an
ordinary generation of the slot (queue, cancel and errors as for any
Generate). Calls come from llama-server's structured tool calls and from
markup in the text, healed by a streaming parser (a port), so markup never
reaches the client. A Generate without server tools goes straight to the slot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace

from llamagate.application.slot import ModelSlot, slot_context
from llamagate.domain.agent_loop import AgentLimits, AgentRun, PlannedCall, Reply, Turn
from llamagate.domain.agent_rules import arguments_object, as_json, clean, is_failure
from llamagate.domain.capabilities import Capabilities
from llamagate.domain.chat import (
    ContentDelta,
    Done,
    FinishReason,
    FormatKind,
    GenerateEvent,
    GenerateRequest,
    MarkupEvent,
    ReasoningDelta,
    ResponseFormat,
    ServerTools,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolFinished,
    ToolStarted,
)
from llamagate.domain.errors import ContextExceeded
from llamagate.domain.ports import MarkupParser, ServerTool, ToolBox
from llamagate.domain.request_checks import check_server_tools, validate
from llamagate.domain.tool_prompt import tools_in_prompt

log = logging.getLogger(__name__)

_NO_TIMEOUT_S = 86_400.0 * 365  # what "no timeout" hands a tool
_TOOL_GRACE_S = 5.0
_MIN_RESULT_CHARS = 2_000  # a tool that overstays its own timeout by this much is cancelled


class Agent:
    def __init__(self, slot: ModelSlot, toolbox: ToolBox, parsers: Callable[[str], MarkupParser]) -> None:
        self._slot = slot
        self._toolbox = toolbox
        self._parsers = parsers  # one per turn, given the prefix of its call ids

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerateEvent, None]:
        spec = request.server_tools
        if spec is None:
            async for event in self._slot.generate(request):
                yield event
            return
        info = self._slot.serving()
        validate(request, info.capabilities, slot_context(info), tools_in_prompt=True)
        check_server_tools(request, self._toolbox.names)
        limits = AgentLimits(
            max_iterations=spec.max_iterations or AgentLimits.max_iterations,
            tool_timeout_s=AgentLimits.timeout_from(spec.tool_timeout_s)
            if spec.tool_timeout_s is not None else AgentLimits.tool_timeout_s,
            # about a quarter of the slot (a token is ~4 characters): room for the next turn
            result_chars=max(_MIN_RESULT_CHARS, slot_context(info)),
        )
        async with self._toolbox.conversation() as tools:
            async for event in self._loop(request, spec, tools, limits):
                yield event

    async def _loop(self, request: GenerateRequest, spec: ServerTools, tools: Mapping[str, ServerTool],
                    limits: AgentLimits) -> AsyncIterator[GenerateEvent]:
        run = AgentRun(request.messages, frozenset(spec.names), frozenset(t.name for t in request.tools), limits)
        offered = (*request.tools, *(tools[name].definition for name in spec.names))
        while (turn := run.next_turn()) is not None:
            reply = Reply("")
            try:
                async for item in self._turn(turn, request, offered, spec, run.iterations):
                    if isinstance(item, Reply):
                        reply = item
                    else:
                        yield item
            except ContextExceeded:
                if run.iterations == 0:
                    raise  # the client's own conversation does not fit
                break  # the results so far fill the slot: the run ends here, saying so
            planned = run.turn_ended(reply)
            for index, client_call in enumerate(p.call for p in planned if p.client):
                # the client runs these (a call of its own tools ends the run), as without server tools
                yield ToolCallDelta(index, client_call.id, client_call.name, client_call.arguments)
            for call in (p for p in planned if not p.client):
                async for event in self._call(run, call, limits, tools):
                    yield event
        yield Done(run.finish_reason if turn is None else FinishReason.CONTEXT_LIMIT, run.usage, run.timings)

    async def _call(self, run: AgentRun, planned: PlannedCall, limits: AgentLimits,
                    tools: Mapping[str, ServerTool]) -> AsyncIterator[GenerateEvent]:
        call = planned.call
        yield ToolStarted(call.id, call.name, call.arguments, clean(planned.status))
        if planned.run:
            result, failed = await _run(tools[call.name], planned.arguments, limits.tool_timeout_s)
        else:
            result, failed = planned.answer, is_failure(planned.answer)
        result = clean(result)
        run.call_finished(planned, result, failed=failed)
        yield ToolFinished(call.id, call.name, result, failed)

    async def _turn(self, turn: Turn, request: GenerateRequest, offered: tuple[Tool, ...], spec: ServerTools,
                    iteration: int) -> AsyncIterator[GenerateEvent | Reply]:
        caps = self._slot.status().capabilities
        shaped = _turn_request(turn, request, offered, spec, caps)
        heard = _Heard()
        parser = self._parsers(f"call_{iteration}_")
        async for event in self._slot.generate(shaped, checked=True):
            if isinstance(event, ContentDelta):
                for piece in parser.feed(event.text):
                    if (shown := heard.markup(piece)) is not None:
                        yield shown
            elif isinstance(event, ReasoningDelta):
                heard.reasoning.append(event.text)
                yield event
            elif isinstance(event, ToolCallDelta):
                heard.structured_piece(event)
            elif isinstance(event, Done):
                heard.done = event
        for piece in parser.finish():
            if (shown := heard.markup(piece)) is not None:
                yield shown
        yield heard.reply()


async def _run(tool: ServerTool, arguments: dict[str, object], timeout_s: float | None) -> tuple[str, bool]:
    limit = _NO_TIMEOUT_S if timeout_s is None else timeout_s
    name = tool.definition.name
    try:  # the tool keeps its own timeout; this catches one that does not
        result = await asyncio.wait_for(tool.run(arguments, timeout_s=limit), limit + _TOOL_GRACE_S)
    except TimeoutError:
        return f"Error: {name} did not finish within {limit:g} s", True
    except Exception as error:  # noqa: BLE001 - what the model wrote must not end the conversation
        log.warning("the %s tool failed unexpectedly", name, exc_info=error)
        return f"Error: {name} could not run this call: {error}", True
    return result.text, result.failed


def _turn_request(turn: Turn, request: GenerateRequest, offered: tuple[Tool, ...], spec: ServerTools,
                  caps: Capabilities) -> GenerateRequest:
    """Tools go to llama-server when its template has them and no grammar
    constrains the turn; else they are described in the prompt."""
    grammar = spec.tool_turn_grammar if turn.offer_tools else ""
    in_prompt = not caps.tools or bool(grammar)
    messages = tools_in_prompt(turn.messages, offered) if in_prompt else turn.messages
    tools = offered if turn.offer_tools and not in_prompt else ()
    return replace(
        request, messages=messages, tools=tools, tool_choice=ToolChoice(), server_tools=None,
        response_format=ResponseFormat(FormatKind.GRAMMAR, grammar) if grammar else ResponseFormat(),
    )


@dataclass
class _Heard:
    """What one turn said: visible text, reasoning, and its calls from both
    llama-server's structured pieces (by index) and the healed markup."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    structured: dict[int, list[str]] = field(default_factory=dict)  # index -> [id, name, arguments]
    marked: dict[int, list[str]] = field(default_factory=dict)
    marked_order: list[int] = field(default_factory=list)
    shown: bool = False  # visible text came in this turn
    done: Done | None = None

    def markup(self, piece: MarkupEvent) -> GenerateEvent | None:
        if isinstance(piece, ContentDelta):
            self.text.append(piece.text)
            self.shown = self.shown or bool(piece.text.strip())
            return piece
        if isinstance(piece, ReasoningDelta):
            self.reasoning.append(piece.text)
            return piece
        if isinstance(piece, ToolCallDelta):
            if piece.index not in self.marked:
                self.marked_order.append(piece.index)
            _accumulate(self.marked, piece)
        return None  # the end of a call: its arguments are complete

    def structured_piece(self, piece: ToolCallDelta) -> None:
        # SPEC §14: once visible text was shown in this turn, later structured calls are ignored.
        if not self.shown:
            _accumulate(self.structured, piece)

    def reply(self) -> Reply:
        calls = [(c, False) for c in _calls(self.structured, sorted(self.structured))]
        calls += [(c, True) for c in _calls(self.marked, self.marked_order)]
        reply = Reply(
            text="".join(self.text),
            calls=tuple(_with_arguments(call, healed) for call, healed in calls),
            reasoning="".join(self.reasoning),
        )
        if self.done is None:
            return reply
        return replace(reply, finish_reason=self.done.finish_reason, usage=self.done.usage,
                       timings=self.done.timings)


def _accumulate(table: dict[int, list[str]], piece: ToolCallDelta) -> None:
    entry = table.setdefault(piece.index, ["", "", ""])
    entry[0] += piece.id
    entry[1] += piece.name
    entry[2] += piece.arguments


def _calls(table: dict[int, list[str]], order: list[int]) -> list[ToolCall]:
    """Pieces that never got a name are dropped (SPEC §14)."""
    return [ToolCall(table[i][0] or f"call_{i}", table[i][1], table[i][2]) for i in order if table[i][1]]


def _with_arguments(call: ToolCall, healed: bool) -> tuple[ToolCall, dict[str, object]]:
    arguments = arguments_object(call.arguments, healed=healed)
    return replace(call, id=clean(call.id), name=clean(call.name), arguments=as_json(arguments)), arguments

