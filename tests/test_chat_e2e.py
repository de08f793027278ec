"""The chat API against the real llama-server and SmolLM2 (issue 9).

Tool calls are driven by llama-server's own tool-call grammar: with
tool_choice REQUIRED and a schema whose one property is an enum, the reply
can only be that call. (llama-server refuses a custom ``grammar`` together
with tools: "Cannot use custom grammar constraints with tools".) SmolLM2's
own template has no tools, so those tests load it with functionary v3.2's
template from the llama.cpp tree, whose calls start the reply.
"""

from __future__ import annotations

import json

import grpc
import jsonschema
import pytest
from e2e import ask, assert_code, engine, error_details, load
from projector import tiny_png

from llamagate.v1 import llamagate_pb2 as pb

WEATHER = pb.Tool(
    name="get_weather",
    description="The weather in a city",
    parameters=json.dumps({"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris"]}},
                           "required": ["city"]}),
)
GREEDY = {"temperature": 0.0, "seed": 7}


def user(text: str) -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, text=text)


def collect(stream) -> tuple[str, dict[int, dict[str, str]], pb.GenerateDone, list[pb.GenerateResponse]]:
    """The content, the tool calls by index (id, name, arguments joined) and the Done event."""
    events = list(stream)
    content = "".join(e.content_delta for e in events if e.WhichOneof("event") == "content_delta")
    calls: dict[int, dict[str, str]] = {}
    for e in events:
        if e.WhichOneof("event") == "tool_call_delta":
            d = e.tool_call_delta
            call = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += d.id
            call["name"] += d.name
            call["arguments"] += d.arguments_delta
    assert events[-1].WhichOneof("event") == "done"
    return content, calls, events[-1].done, events


@pytest.fixture(scope="module")
def functionary(llama_cpp_tree) -> str:
    return (llama_cpp_tree / "models" / "templates" / "meetkai-functionary-medium-v3.2.jinja").read_text()


# ------------------------------------------------------------ text


def test_streamed_deltas_join_to_the_non_streamed_answer(stub, smollm2_path):
    model = load(stub, smollm2_path, context_length=2048)[-1].model
    question = "Name three colours of the rainbow."
    call = stub.Generate(ask(question, max_tokens=48, **GREEDY), timeout=120)
    content, _, done, _ = collect(call)

    body = {"messages": [{"role": "user", "content": question}], "max_tokens": 48, "temperature": 0.0, "seed": 7}
    with engine(model.pid) as direct:
        whole = direct.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert content == whole and content
    assert done.usage.completion_tokens > 0


def test_the_request_id_is_in_every_event_and_in_the_initial_metadata(stub, smollm2_path):
    load(stub, smollm2_path, context_length=2048)
    request = ask("hi", max_tokens=4)
    request.request_id = "client-42"
    call = stub.Generate(request, timeout=60)
    events = list(call)
    assert {e.request_id for e in events} == {"client-42"}
    assert ("x-request-id", "client-42") in call.initial_metadata()

    generated = stub.Generate(ask("hi", max_tokens=4), timeout=60)
    ids = {e.request_id for e in generated}
    [made] = ids
    assert len(made) == 32 and ("x-request-id", made) in generated.initial_metadata()

    from_metadata = stub.Generate(ask("hi", max_tokens=4), timeout=60, metadata=(("x-request-id", "meta-7"),))
    assert {e.request_id for e in from_metadata} == {"meta-7"}


def test_top_logprobs_come_with_each_content_delta(stub, smollm2_path):
    load(stub, smollm2_path, context_length=2048)
    request = ask("Count: one, two,", max_tokens=6, top_logprobs=3, **GREEDY)
    deltas = [e for e in stub.Generate(request, timeout=60) if e.WhichOneof("event") == "content_delta"]
    assert deltas and all(len(d.logprobs) == 1 for d in deltas)
    for d in deltas:
        [token] = d.logprobs
        assert token.token == d.content_delta and token.logprob <= 0
        assert len(token.top_logprobs) == 3
        assert token.top_logprobs[0].token == token.token  # greedy: the chosen token is the likeliest


# ------------------------------------------------------------ structured output


def test_a_json_schema_reply_validates_against_the_schema(stub, smollm2_path):
    load(stub, smollm2_path, context_length=2048)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    request = ask("Describe a person as JSON.", max_tokens=60, **GREEDY)
    request.response_format.json_schema = json.dumps(schema)
    content, _, done, _ = collect(stub.Generate(request, timeout=120))
    jsonschema.validate(json.loads(content), schema)
    assert done.finish_reason == pb.FINISH_REASON_STOP


def test_a_gbnf_grammar_decides_the_reply(stub, smollm2_path):
    load(stub, smollm2_path, context_length=2048)
    request = ask("Is the sky green?", max_tokens=32, **GREEDY)
    request.response_format.grammar = 'root ::= "maybe, said the " ("cat" | "dog")'
    content, _, _, _ = collect(stub.Generate(request, timeout=60))
    assert content in ("maybe, said the cat", "maybe, said the dog")


def test_a_bad_grammar_is_invalid_argument(stub, smollm2_path):
    load(stub, smollm2_path, context_length=2048)
    request = ask("hi", max_tokens=4)
    request.response_format.grammar = "root ::= ("
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Generate(request, timeout=60))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = error_details(caught.value)["BadRequest"].field_violations
    assert violation.field == "response_format.grammar" and "grammar" in violation.description


# ------------------------------------------------------------ tools


def test_a_tool_call_streams_its_id_name_and_arguments_and_the_result_completes_the_turn(
        stub, smollm2_path, functionary):
    load(stub, smollm2_path, context_length=2048, chat_template=functionary)
    question = user("What is the weather in Paris?")
    request = pb.GenerateRequest(messages=[question], tools=[WEATHER], sampling=pb.Sampling(max_tokens=64, **GREEDY),
                                 tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED))
    content, calls, done, _ = collect(stub.Generate(request, timeout=120))

    assert done.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    [call] = calls.values()
    assert call["name"] == "get_weather" and call["id"]
    assert json.loads(call["arguments"]) == {"city": "Paris"}

    made = pb.Message(role=pb.ROLE_ASSISTANT, tool_calls=[pb.ToolCall(**call)])
    result = pb.Message(role=pb.ROLE_TOOL, tool_call_id=call["id"], text='{"sky": "sunny", "celsius": 21}')
    # NONE: answer now, without tools. The grammar makes the 135M model write
    # functionary's answer format (">>>all\n" then the text), which llama-server
    # parses back into plain content.
    follow_up = pb.GenerateRequest(messages=[question, made, result], tools=[WEATHER],
                                   tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE),
                                   response_format=pb.ResponseFormat(grammar='root ::= "all\\nIt is sunny in Paris."'),
                                   sampling=pb.Sampling(max_tokens=24, **GREEDY))
    answer, more_calls, done, _ = collect(stub.Generate(follow_up, timeout=120))
    assert done.finish_reason == pb.FINISH_REASON_STOP
    assert answer == "It is sunny in Paris." and not more_calls


def test_a_named_tool_choice_calls_that_tool(stub, smollm2_path, functionary):
    load(stub, smollm2_path, context_length=2048, chat_template=functionary)
    other = pb.Tool(name="get_time", parameters='{"type": "object", "properties": {}}')
    request = pb.GenerateRequest(messages=[user("Weather?")], tools=[other, WEATHER],
                                 tool_choice=pb.ToolChoice(name="get_weather"),
                                 sampling=pb.Sampling(max_tokens=64, **GREEDY))
    _, calls, done, _ = collect(stub.Generate(request, timeout=120))
    assert [c["name"] for c in calls.values()] == ["get_weather"]
    assert done.finish_reason == pb.FINISH_REASON_TOOL_CALLS


def test_tools_for_a_template_without_tools_name_the_field(stub, smollm2_path):
    load(stub, smollm2_path, context_length=2048)  # SmolLM2's own template has no tools
    request = pb.GenerateRequest(messages=[user("Weather?")], tools=[WEATHER])
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Generate(request, timeout=60))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = error_details(caught.value)["BadRequest"].field_violations
    assert violation.field == "tools" and "chat_template" in violation.description


# ------------------------------------------------------------ limits and counting


def test_max_tokens_above_the_context_is_a_field_violation(stub, smollm2_path):
    load(stub, smollm2_path, context_length=1024)
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Generate(ask("hi", max_tokens=1025), timeout=60))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error_details(caught.value)
    [violation] = details["BadRequest"].field_violations
    assert violation.field == "sampling.max_tokens" and "1024" in violation.description
    assert details["ErrorInfo"].reason == "INVALID_ARGUMENT" and details["ErrorInfo"].domain == "llamagate.dev"
    assert collect(stub.Generate(ask("hi", max_tokens=1024, **GREEDY), timeout=120))[2].usage.completion_tokens


def test_count_tokens_matches_the_prompt_a_generation_reports(stub, smollm2_path):
    load(stub, smollm2_path, context_length=2048)
    conversation = [pb.Message(role=pb.ROLE_SYSTEM, text="You are terse."), user("Say hello to the moon.")]
    counted = stub.CountTokens(pb.CountTokensRequest(messages=conversation), timeout=30)
    request = pb.GenerateRequest(messages=conversation, sampling=pb.Sampling(max_tokens=1, **GREEDY))
    _, _, done, _ = collect(stub.Generate(request, timeout=60))
    assert counted.prompt_tokens == done.usage.prompt_tokens > 10
    assert counted.context_length == 2048


def test_count_tokens_refuses_a_bad_conversation_and_needs_a_model(stub, smollm2_path):
    stub.UnloadModel(pb.UnloadModelRequest())
    assert_code(lambda: stub.CountTokens(pb.CountTokensRequest(messages=[user("hi")]), timeout=10),
                grpc.StatusCode.FAILED_PRECONDITION)
    load(stub, smollm2_path, context_length=2048)
    with pytest.raises(grpc.RpcError) as caught:
        stub.CountTokens(pb.CountTokensRequest(messages=[pb.Message(role=pb.ROLE_TOOL, text="x")]), timeout=10)
    assert error_details(caught.value)["BadRequest"].field_violations[0].field == "messages[0].tool_call_id"


# ------------------------------------------------------------ vision


def test_images_through_the_projector_add_prompt_tokens_in_order(stub, smollm2_path, tiny_projector):
    info = load(stub, smollm2_path, context_length=2048, mmproj_path=str(tiny_projector))[-1].model
    assert info.capabilities.vision

    def prompt_tokens(*parts: pb.ContentPart) -> int:
        message = pb.Message(role=pb.ROLE_USER, text="What is in the picture?", parts=parts)
        request = pb.GenerateRequest(messages=[message], sampling=pb.Sampling(max_tokens=1, **GREEDY))
        return collect(stub.Generate(request, timeout=120))[2].usage.prompt_tokens

    image = pb.ContentPart(image=pb.Image(data=tiny_png(32, 32), mime_type="image/png"))
    text_only, one, two = prompt_tokens(), prompt_tokens(image), prompt_tokens(image, image)
    assert text_only < one < two
    counted = stub.CountTokens(pb.CountTokensRequest(messages=[pb.Message(role=pb.ROLE_USER,
                                                                          text="What is in the picture?",
                                                                          parts=[image])]), timeout=30)
    assert counted.prompt_tokens == one


def test_an_image_with_the_wrong_mime_type_names_the_part(stub, smollm2_path, tiny_projector):
    load(stub, smollm2_path, context_length=2048, mmproj_path=str(tiny_projector))
    bad = pb.ContentPart(image=pb.Image(data=tiny_png(8, 8), mime_type="image/jpeg"))
    message = pb.Message(role=pb.ROLE_USER, parts=[pb.ContentPart(text="look"), bad])
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Generate(pb.GenerateRequest(messages=[message]), timeout=60))
    [violation] = error_details(caught.value)["BadRequest"].field_violations
    assert violation.field == "messages[0].parts[1].image.mime_type"


# ------------------------------------------------------------ speculative decoding


def test_draft_counts_reach_the_client_and_speculation_keeps_the_greedy_text(stub, smollm2_path):
    from test_speculative_real import PROMPT

    def reply(speculative: int) -> tuple[str, pb.Timings]:
        # One batch size for both: the automatic one follows the prompt speeds measured so far, and
        # on CPU the greedy text itself can differ between batch sizes (near-ties in the logits).
        load(stub, smollm2_path, context_length=2048, speculative=speculative, batch_size=512)
        content, _, done, _ = collect(stub.Generate(ask(PROMPT, max_tokens=48, **GREEDY), timeout=120))
        return content, done.timings

    plain, _ = reply(pb.SPECULATIVE_TYPE_OFF)
    drafted, timings = reply(pb.SPECULATIVE_TYPE_NGRAM_SIMPLE)
    assert drafted == plain
    assert timings.draft_n > 0 and 0 < timings.draft_accepted_n <= timings.draft_n
