"""The agent loop driven through the slot and the tools, against fakes (issue 10):
what a client sees, what the engine was asked, what the tools ran."""

from __future__ import annotations

import asyncio
import json

import pytest
from fakes import FakeLauncher, FakeTool, FakeToolBox, reply
from test_slot import NO_RESTARTS, A, World

from llamagate.adapters.markup_parser import RustMarkupParser
from llamagate.application.agent import Agent
from llamagate.domain.capabilities import ServerCapabilities
from llamagate.domain.chat import (
    ChatChunk,
    ContentDelta,
    Done,
    FinishReason,
    GenerateRequest,
    Role,
    Sampling,
    ServerTools,
    Tool,
    ToolCallDelta,
    ToolFinished,
    ToolStarted,
    Usage,
    text_message,
)
from llamagate.domain.errors import InvalidArgument
from llamagate.domain.tools import ToolResult

PY = json.dumps({"code": "print(2+2)"})


def ask(*names: str, tools: tuple[Tool, ...] = (), **limits) -> GenerateRequest:
    return GenerateRequest((text_message(Role.USER, "What is 2+2?"),), Sampling(max_tokens=64), tools=tools,
                           server_tools=ServerTools(names or ("python",), **limits))


def markup(name: str = "python", arguments: str = PY) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


def said(*texts: str, usage: Usage = Usage(10, 5, 15)) -> list[ChatChunk]:
    return [ChatChunk(content=t) for t in texts] + [ChatChunk(finish_reason=FinishReason.STOP, usage=usage)]


def structured(name: str, arguments: str, *, split: int = 5) -> list[ChatChunk]:
    pieces = [ToolCallDelta(0, "call_abc", name, arguments[:split]), ToolCallDelta(0, arguments=arguments[split:])]
    return [ChatChunk(tool_calls=(p,)) for p in pieces] + [ChatChunk(finish_reason=FinishReason.TOOL_CALLS)]


class Scene:
    def __init__(self, world: World, *tools: FakeTool) -> None:
        self.world = world
        self.toolbox = FakeToolBox(*(tools or (FakeTool("python", {PY: ToolResult("4\n")}),)))
        self.agent = Agent(world.slot, self.toolbox, RustMarkupParser)

    async def load(self, *scripts: list[ChatChunk]) -> None:
        await self.world.load(A)
        self.world.launcher.engines[-1].chat.scripts = list(scripts)

    @property
    def asked(self):
        return self.world.launcher.engines[-1].chat.calls

    async def run(self, request: GenerateRequest) -> list[object]:
        return [event async for event in self.agent.generate(request)]


def story(test, *, tools_template: bool = False, tools: tuple[FakeTool, ...] = ()):
    async def main() -> None:
        world = World(NO_RESTARTS, FakeLauncher(server_caps=ServerCapabilities(tools=tools_template)))
        try:
            await asyncio.wait_for(test(Scene(world, *tools)), timeout=10)
        finally:
            await world.slot.close()

    asyncio.run(main())


def test_markup_in_the_text_is_healed_into_a_call_and_never_shown():
    async def scene(s: Scene) -> None:
        await s.load(said("Let me compute. ", markup()[:20], markup()[20:]), said("It is 4."))
        events = await s.run(ask())
        shown = "".join(e.text for e in events if isinstance(e, ContentDelta))
        assert shown == "Let me compute. It is 4."
        started = [e for e in events if isinstance(e, ToolStarted)]
        finished = [e for e in events if isinstance(e, ToolFinished)]
        assert [(e.name, json.loads(e.arguments), e.status) for e in started] == [
            ("python", {"code": "print(2+2)"}, "Running Python: print(2+2)")]
        assert [(e.id, e.result, e.failed) for e in finished] == [(started[0].id, "4\n", False)]
        second_turn = s.asked[1].messages
        assert "<tool_response>\n4\n\n</tool_response>" in second_turn[-1].text  # the result, as the model reads it
        assert isinstance(events[-1], Done) and events[-1].usage.completion_tokens == 10
        assert s.toolbox.opened == s.toolbox.closed == 1

    story(scene)


def test_structured_calls_go_to_a_tools_template_and_are_accumulated_by_index():
    async def scene(s: Scene) -> None:
        await s.load(structured("python", PY), said("4"))
        events = await s.run(ask())
        assert s.asked[0].tools and s.asked[0].tools[0].name == "python"  # llama-server was told the tools
        [started] = [e for e in events if isinstance(e, ToolStarted)]
        assert (started.id, json.loads(started.arguments)) == ("call_abc", {"code": "print(2+2)"})
        turn_two = s.asked[1].messages
        assert [m.role for m in turn_two] == [Role.USER, Role.ASSISTANT, Role.TOOL]
        assert turn_two[2].tool_call_id == "call_abc"

    story(scene, tools_template=True)


def test_a_template_without_tools_gets_them_in_the_prompt():
    async def scene(s: Scene) -> None:
        await s.load(said("4"))
        await s.run(ask())
        call = s.asked[0]
        assert call.tools == () and call.messages[0].role is Role.SYSTEM
        assert '"name": "python"' in call.messages[0].text and "<tool_call>" in call.messages[0].text

    story(scene)


def test_the_tool_turn_grammar_holds_the_tool_turns_and_not_the_last():
    async def scene(s: Scene) -> None:
        await s.load(said(markup()), said("4"))
        await s.run(ask(max_iterations=1, tool_turn_grammar='root ::= "x"'))
        first, last = s.asked
        assert first.response_format.text == 'root ::= "x"' and last.response_format.text == ""
        assert last.tools == () and "final answer" in last.messages[-1].text

    story(scene, tools_template=True)


def test_a_tool_that_overstays_is_cut_off_and_reported_failed():
    hold = asyncio.Event()

    async def scene(s: Scene) -> None:
        await s.load(said(markup()), said("Sorry."))
        events = await s.run(ask(tool_timeout_s=0.01))
        [finished] = [e for e in events if isinstance(e, ToolFinished)]
        assert finished.failed and "did not finish" in finished.result
        assert s.toolbox.tools["python"].cancelled == 1
        assert "try a different approach" in s.asked[1].messages[-1].text

    import llamagate.application.agent as agent_module

    grace, agent_module._TOOL_GRACE_S = agent_module._TOOL_GRACE_S, 0.0
    try:
        story(scene, tools=(FakeTool("python", hold=hold),))
    finally:
        agent_module._TOOL_GRACE_S = grace


def test_results_are_cut_to_the_slot_and_a_conversation_that_still_overflows_ends_context_limit():
    long = "line\n" * 10_000

    async def scene(s: Scene) -> None:
        await s.load(said(markup()), [])  # the second turn: llama-server says the prompt does not fit
        s.world.launcher.engines[-1].chat.overflow_after = 1
        events = await s.run(ask())
        [finished] = [e for e in events if isinstance(e, ToolFinished)]
        assert finished.result == long  # the client sees it all
        told = s.asked[1].messages[-1].text
        assert "characters cut" in told and len(told) < len(long) // 2  # the model, what fits
        assert isinstance(events[-1], Done) and events[-1].finish_reason is FinishReason.CONTEXT_LIMIT

    story(scene, tools=(FakeTool("python", {PY: ToolResult(long)}),))


class BrokenTool(FakeTool):
    async def run(self, arguments, *, timeout_s):
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")


def test_what_the_model_writes_never_ends_the_conversation_with_an_unhandled_error():
    async def scene(s: Scene) -> None:
        await s.load(said(markup(arguments='{"code": "print(1) #\\ud800"}')), said("Sorry."))
        events = await s.run(ask())
        [started] = [e for e in events if isinstance(e, ToolStarted)]
        [finished] = [e for e in events if isinstance(e, ToolFinished)]
        started.arguments.encode("utf-8")  # what the client's protobuf will carry
        assert finished.failed and finished.result.startswith("Error: python could not run this call")
        assert isinstance(events[-1], Done)

    story(scene, tools=(BrokenTool("python"),))


def test_cancelling_the_generation_cancels_the_running_tool_and_closes_the_conversation():
    hold = asyncio.Event()

    async def scene(s: Scene) -> None:
        await s.load(said(markup()))
        task = asyncio.create_task(s.run(ask()))
        while not s.toolbox.tools["python"].runs:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert s.toolbox.tools["python"].cancelled == 1 and s.toolbox.closed == 1

    story(scene, tools=(FakeTool("python", hold=hold),))


def test_a_client_tool_call_ends_the_loop_with_tool_calls_for_the_client():
    weather = Tool("get_weather", "", '{"type": "object"}')

    async def scene(s: Scene) -> None:
        await s.load(said(markup("get_weather", '{"city": "Paris"}'), markup("get_weather", '{"city": "Oslo"}')))
        events = await s.run(ask(tools=(weather,)))
        deltas = [e for e in events if isinstance(e, ToolCallDelta)]
        assert [(d.index, d.name, json.loads(d.arguments)) for d in deltas] == [
            (0, "get_weather", {"city": "Paris"}), (1, "get_weather", {"city": "Oslo"})]  # by index, as documented
        assert events[-1].finish_reason is FinishReason.TOOL_CALLS and len(s.asked) == 1
        assert s.toolbox.tools["python"].runs == []

    story(scene)


def test_server_tools_the_service_lacks_or_names_twice_are_refused():
    async def scene(s: Scene) -> None:
        await s.load()
        for request, field in [(ask("terminal"), "server_tools.names[0]"),
                               (ask("python", "python"), "server_tools.names[1]"),
                               (ask(tools=(Tool("python"),)), "server_tools.names[0]"),
                               (ask(max_iterations=0), "server_tools.max_iterations")]:
            with pytest.raises(InvalidArgument) as caught:
                await s.run(request)
            assert caught.value.field == field
        assert s.asked == [] and s.toolbox.opened == 0

    story(scene)


def test_without_server_tools_generate_is_the_slots_own():
    async def scene(s: Scene) -> None:
        await s.load(reply("Hello"))
        events = await s.run(GenerateRequest((text_message(Role.USER, "hi"),)))
        assert [e.text for e in events if isinstance(e, ContentDelta)] == ["Hello"]
        assert s.toolbox.opened == 0

    story(scene)

