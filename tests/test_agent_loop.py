"""The agent loop's decisions (SPEC §14), with a scripted model: no engine, no tools."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamagate.domain.agent_loop import AgentLimits, AgentRun, Reply
from llamagate.domain.agent_rules import (
    ACT_NOW,
    ALREADY_MADE,
    FINAL_ANSWER,
    NUDGE,
    announces_plan,
    arguments_object,
    for_the_model,
    status_text,
    summed,
)
from llamagate.domain.chat import FinishReason, Role, Timings, ToolCall, Usage, text_message

QUESTION = (text_message(Role.USER, "What is 2+2?"),)
SERVER = frozenset({"python", "web_search"})


def call(name: str = "python", index: int = 0, **arguments) -> tuple[ToolCall, dict[str, object]]:
    arguments = arguments or {"code": "print(2+2)"}
    return ToolCall(f"call_{index}", name, json.dumps(arguments)), arguments


def reply(text: str = "", *calls, completion: int = 3) -> Reply:
    return Reply(text, tuple(calls), usage=Usage(10, completion, 10 + completion),
                 timings=Timings(predicted_n=completion, predicted_ms=completion * 10.0))


def test_a_reply_without_calls_is_the_answer():
    run = AgentRun(QUESTION, SERVER)
    assert run.next_turn().offer_tools
    assert run.turn_ended(reply("4.")) == []
    assert run.next_turn() is None


def test_calls_are_planned_in_order_and_their_results_join_the_conversation():
    run = AgentRun(QUESTION, SERVER)
    run.next_turn()
    planned = run.turn_ended(reply("", call("python", 0), call("web_search", 1, query="llamas")))
    assert [(p.call.name, p.run, p.status) for p in planned] == [
        ("python", True, "Running Python: print(2+2)"), ("web_search", True, "Searching: llamas")]
    for p, result in zip(planned, ("4\n", "1. Llama")):
        run.call_finished(p, result, failed=False)
    turn = run.next_turn()
    roles = [m.role for m in turn.messages]
    assert roles == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.TOOL]
    assert [m.tool_call_id for m in turn.messages[2:]] == ["call_0", "call_1"]
    assert turn.messages[1].tool_calls[0].name == "python" and turn.offer_tools


def test_a_repeated_identical_call_right_after_a_success_is_not_run():
    run = AgentRun(QUESTION, SERVER)
    run.next_turn()
    [first] = run.turn_ended(reply("", call()))
    run.call_finished(first, "4", failed=False)
    run.next_turn()
    [again] = run.turn_ended(reply("", call()))
    assert not again.run and again.answer == ALREADY_MADE
    run.call_finished(again, again.answer, failed=False)
    [other] = (run.next_turn(), run.turn_ended(reply("", call(code="print(3)"))))[1]
    assert other.run  # different arguments: run


def test_a_repeat_after_a_failure_runs_again_and_a_failure_is_nudged():
    run = AgentRun(QUESTION, SERVER)
    run.next_turn()
    [first] = run.turn_ended(reply("", call()))
    told = run.call_finished(first, "Exit code 1: NameError", failed=True)
    assert told.endswith(NUDGE)
    run.next_turn()
    [again] = run.turn_ended(reply("", call()))
    assert again.run


def test_a_call_to_an_unknown_tool_is_answered_with_an_error_not_run():
    run = AgentRun(QUESTION, SERVER)
    run.next_turn()
    [planned] = run.turn_ended(reply("", call("rm_rf")))
    assert not planned.run and planned.answer.startswith("Error: there is no tool named 'rm_rf'")
    assert run.call_finished(planned, planned.answer, failed=True).endswith(NUDGE)


def test_a_plan_without_action_is_reprompted_three_times_at_most_and_not_counted():
    run = AgentRun(QUESTION, SERVER, limits=AgentLimits(max_iterations=1))
    for _ in range(3):
        turn = run.next_turn()
        assert turn is not None and turn.offer_tools
        assert run.turn_ended(reply("I'll search for that first.")) == []
        assert run.next_turn().messages[-1].text == ACT_NOW
    assert run.iterations == 0 and run.plan_prompts == 3
    run.turn_ended(reply("I'll search for that first."))  # the fourth: taken as the answer
    assert run.next_turn() is None


def test_after_the_iteration_cap_one_last_turn_without_tools():
    run = AgentRun(QUESTION, SERVER, limits=AgentLimits(max_iterations=2))
    for n in range(2):
        assert run.next_turn().offer_tools
        [planned] = run.turn_ended(reply("", call(code=f"print({n})")))
        run.call_finished(planned, str(n), failed=False)
    last = run.next_turn()
    assert not last.offer_tools and last.messages[-1].text == FINAL_ANSWER
    assert run.turn_ended(reply("", call(code="print(9)"))) == []  # calls in the last turn are not made
    assert run.next_turn() is None


def test_a_client_tool_call_ends_the_run_with_tool_calls():
    run = AgentRun(QUESTION, SERVER, client_tools=frozenset({"get_weather"}))
    run.next_turn()
    planned = run.turn_ended(reply("", call("python"), call("get_weather", 1, city="Paris")))
    assert [p.client for p in planned] == [False, True]
    run.call_finished(planned[0], "4", failed=False)
    assert run.next_turn() is None and run.finish_reason is FinishReason.TOOL_CALLS


def test_usage_and_timings_add_up_over_the_turns():
    run = AgentRun(QUESTION, SERVER)
    run.next_turn()
    [planned] = run.turn_ended(reply("", call(), completion=5))
    run.call_finished(planned, "4", failed=False)
    run.next_turn()
    run.turn_ended(Reply("4", usage=Usage(40, 2, 42), timings=Timings(predicted_n=2, predicted_ms=20.0)))
    assert run.usage == Usage(prompt_tokens=40, completion_tokens=7, total_tokens=47)
    assert (run.timings.predicted_n, run.timings.predicted_ms) == (7, 70.0)
    assert run.timings.predicted_per_second == pytest.approx(100.0)


# ------------------------------------------------------------ the small rules


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("web_search", {"url": "https://www.example.org/a"}, "Reading: example.org"),
        ("fetch_url", {"url": "https://docs.llamagate.dev/x"}, "Reading: docs.llamagate.dev"),
        ("web_search", {"query": "llamas"}, "Searching: llamas"),
        ("python", {"code": "\nimport math\nprint(math.pi)"}, "Running Python: import math"),
        ("terminal", {"command": "ls " + "x" * 100}, "Running: ls " + "x" * 57),
        ("get_weather", {}, "Calling: get_weather"),
    ],
)
def test_status_texts_follow_the_reference(name, arguments, expected):
    assert status_text(name, arguments) == expected


@pytest.mark.parametrize("prefix", ["Error", "Search failed", "Execution error", "Blocked:", "Exit code",
                                    "Failed to fetch", "Failed to resolve", "No query provided"])
def test_every_failure_prefix_is_nudged(prefix):
    assert for_the_model(f"{prefix} something", failed=False).endswith(NUDGE)


def test_the_image_marker_line_is_stripped_before_the_model_reads_a_result():
    assert for_the_model("plot drawn\n__IMAGES__:abc.png", failed=False) == "plot drawn"


@pytest.mark.parametrize("text", ["I'll look that up.", "Let me check.", "I’ll do it", "Step 1: search",
                                  "Here's my plan: search", "First, I search"])
def test_plan_phrases_are_announcements(text):
    assert announces_plan(text)


def test_answers_and_long_replies_are_not_announcements():
    assert not announces_plan("The answer is 4.")
    assert not announces_plan("I'll " + "x" * 2000)
    assert not announces_plan("")


@given(st.text())
def test_arguments_are_always_an_object_and_json_objects_are_kept(raw):
    for healed in (True, False):
        value = arguments_object(raw, healed=healed)
        assert isinstance(value, dict)
    assert arguments_object(json.dumps({"a": raw}), healed=True) == {"a": raw}


def test_arguments_that_are_not_json_are_kept_whole():
    assert arguments_object("llama facts", healed=True) == {"query": "llama facts"}
    assert arguments_object("[1, 2]", healed=False) == {"raw": "[1, 2]"}


@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 1000), st.floats(0, 1e5)), min_size=1, max_size=6))
def test_summed_completion_tokens_and_time_add_up_and_prompt_is_the_last(turns):
    total = (Usage(), Timings())
    for prompt, completion, ms in turns:
        total = summed(total, (Usage(prompt, completion, prompt + completion),
                               Timings(predicted_n=completion, predicted_ms=ms)))
    usage, timings = total
    assert usage.completion_tokens == sum(c for _, c, _ in turns) == timings.predicted_n
    assert usage.prompt_tokens == turns[-1][0] and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert timings.predicted_ms == pytest.approx(sum(ms for *_, ms in turns))


@pytest.mark.parametrize("url", ["http://[bad", "http://[::ffff:0:127.0.0.1", "http://a＃@b/"])
def test_a_url_that_does_not_parse_still_gets_a_status(url):
    assert status_text("fetch_url", {"url": url}).startswith("Reading: ")


def test_json_and_text_for_the_client_are_always_valid_utf8():
    from llamagate.domain.agent_rules import as_json, clean

    assert as_json({"code": "é"}) == '{"code": "é"}'  # readable where it can be
    assert as_json({"code": "print(1) #\ud800"}) == '{"code": "print(1) #\\ud800"}'
    assert clean("a\udfffb") == "a?b"
    for text in (as_json({"x": "\ud800"}), clean("\ud800")):
        text.encode("utf-8")
