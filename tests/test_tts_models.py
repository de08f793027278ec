"""What the real llama-server does with speech models' vocabularies (issue 14).

The tiny models of tests/tts_models.py on a bare llama-server: the facts the
TTS code builds on (codec detection through /tokenize and /detokenize, codec
tokens generated under a grammar and read back as ids, stop strings,
cancellation), pinned so that a llama.cpp upgrade that changes one fails here
rather than in a Synthesize stream.
"""

from __future__ import annotations

import pytest
from e2e import wait_until
from gguf import TokenType
from tts_models import (  # noqa: F401  (fixtures)
    CODECS,
    DETECTION,
    MARKERS,
    LlamaServer,
    llama_server_binary,
    orpheus_token,
    speech_models,
    vocabulary,
    write_speech_model,
)

pytestmark = pytest.mark.engine

ORPHEUS_PROMPT = "<custom_token_3>hello world<|eot_id|><custom_token_4>"
LLAMA3_END = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")  # what llama.cpp counts as end of generation
CODES = (0, 1, 4095)  # the codes a frame may draw from in these tests


@pytest.fixture(scope="module")
def servers(speech_models, llama_server_binary, smollm2_path):  # noqa: F811
    """``servers(name)``: one llama-server per codec model (or "smollm2"), started on first use."""
    started: dict[str, LlamaServer] = {}

    def server(name: str) -> LlamaServer:
        if name not in started:
            model = smollm2_path if name == "smollm2" else speech_models(name)
            started[name] = LlamaServer(llama_server_binary, model, context=4096)
        return started[name]

    yield server
    for running in started.values():
        running.close()


def orpheus_grammar(frames: int, codes=CODES, then: str = "") -> str:
    """``frames`` Orpheus frames (position p of 7 draws from ``codes``), then ``then``: token references by id."""
    rules = [f"root ::= frame{{{frames}}} {then}".rstrip(), "frame ::= " + " ".join(f"p{p}" for p in range(7))]
    rules += [f"p{p} ::= " + " | ".join(f"<[{orpheus_token(p, code)}]>" for code in codes) for p in range(7)]
    return "\n".join(rules)


def generated(events: list[dict]) -> list[int]:
    return [token for event in events for token in event["tokens"]]


# -- a) every marker is one token on its own model, several on any other -------------------


@pytest.mark.parametrize("codec", CODECS)
def test_each_marker_is_one_token_and_detokenizes_to_its_text(servers, codec):
    server, vocab = servers(codec), vocabulary(codec)
    for marker in MARKERS[codec]:
        assert server.tokenize(marker) == [vocab.id(marker)], marker
        assert server.detokenize([vocab.id(marker)]) == marker
    assert server.tokenize("hello world") == [vocab.id("hello"), vocab.id("Ġworld")]  # ordinary text still works


@pytest.mark.parametrize("codec", CODECS)
def test_only_its_own_codec_markers_are_single_tokens(servers, codec):
    server = servers(codec)
    for other, markers in DETECTION.items():
        for marker in markers:
            assert (len(server.tokenize(marker)) == 1) == (other == codec), (codec, marker)


def test_a_text_model_splits_every_codec_marker(servers):
    for marker in (m for markers in DETECTION.values() for m in markers):
        assert len(servers("smollm2").tokenize(marker)) > 1, marker


def test_without_parse_special_a_control_marker_is_split(servers):
    body = {"content": "<|c1_0|>", "add_special": False, "parse_special": False}
    assert len(servers("dac").post("/tokenize", body).json()["tokens"]) > 1


# -- b) detokenize: the snac probe, and ids beyond the vocabulary --------------------------


def test_the_snac_probe_ids_detokenize_to_custom_tokens(servers):
    assert orpheus_token(0, 0) == vocabulary("snac").id("<custom_token_10>")
    assert servers("snac").detokenize([128258, 128259]) == "<custom_token_2><custom_token_3>"


@pytest.mark.parametrize("ids", [[128258, 128259], [49152], [5, 49152, 6], [-1]])
def test_an_id_beyond_the_vocabulary_is_a_500_and_the_server_goes_on(servers, ids):
    server = servers("smollm2")  # 49152 tokens: ids 0..49151
    response = server.post("/detokenize", {"tokens": ids})
    assert response.status_code == 500
    error = response.json()["error"]
    assert (error["code"], error["type"]) == (500, "server_error")
    assert "_M_range_check" in error["message"] and "49152" in error["message"]  # libstdc++'s vector::at
    assert server.http.get("/health").json() == {"status": "ok"}
    done = server.post("/completion", {"prompt": "Hi", "n_predict": 2}).json()
    assert done["tokens_predicted"] == 2


def test_the_snac_probe_on_a_small_vocabulary_is_a_500(servers):
    assert servers("dac").post("/detokenize", {"tokens": [128258, 128259]}).status_code == 500


# -- c) codec tokens under a grammar, read back as ids ---------------------------------------


def test_a_grammar_of_token_ids_yields_orpheus_frames_then_an_end_token(servers):
    server, vocab = servers("snac"), vocabulary("snac")
    events = server.stream({"prompt": ORPHEUS_PROMPT, "n_predict": 64, "return_tokens": True,
                            "grammar": orpheus_grammar(3), "seed": 1})
    *partial, final = events
    assert all(len(event["tokens"]) == 1 and event["stop"] is False for event in partial)  # one id per event
    assert all(event["content"] == "" for event in events)  # CONTROL tokens have no text in a completion
    ids = generated(events)
    assert len(ids) == 3 * 7 + 1
    for i, token in enumerate(ids[:-1]):
        assert token in {orpheus_token(i % 7, code) for code in CODES}, (i, token)
    # the grammar complete, llama.cpp allows only end-of-generation tokens: one comes, the stream ends on it
    assert ids[-1] in {vocab.id(end) for end in LLAMA3_END}
    assert (final["stop"], final["tokens"], final["stop_type"], final["tokens_predicted"]) == (True, [], "eos", 22)


def test_a_grammar_of_token_texts_yields_dac_pairs(servers):
    server, vocab = servers("dac"), vocabulary("dac")
    grammar = ("root ::= (c1 c2){4} <|audio_end|>\n"
               "c1 ::= <|c1_0|> | <|c1_7|> | <|c1_1023|>\nc2 ::= <|c2_0|> | <|c2_9|> | <|c2_1023|>")
    prompt = "<|im_start|>\n<|text_start|>hello world<|text_end|>\n<|audio_start|><|global_features_start|>\n"
    events = server.stream({"prompt": prompt, "n_predict": 40, "return_tokens": True, "grammar": grammar})
    ids = generated(events)
    c1 = {vocab.id(f"<|c1_{code}|>") for code in (0, 7, 1023)}
    c2 = {vocab.id(f"<|c2_{code}|>") for code in (0, 9, 1023)}
    assert len(ids) == 4 * 2 + 2
    assert all(token in (c1 if i % 2 == 0 else c2) for i, token in enumerate(ids[:8]))
    assert ids[8] == vocab.id("<|audio_end|>")
    assert ids[9] in {vocab.id(end) for end in ("<|im_end|>", "<|end_of_text|>", "<|eot_id|>")}
    assert events[-1]["stop_type"] == "eos"


def test_the_grammar_is_cut_by_n_predict(servers):
    events = servers("snac").stream({"prompt": ORPHEUS_PROMPT, "n_predict": 5, "return_tokens": True,
                                     "grammar": orpheus_grammar(3)})
    assert len(generated(events)) == 5
    assert events[-1]["stop_type"] == "limit"


def test_logit_bias_by_id_forces_a_code_and_by_text_does_not(servers):
    server, vocab = servers("dac"), vocabulary("dac")
    code = vocab.id("<|c1_5|>")
    for bias in ([[code, 100]], {str(code): 100}):
        events = server.stream({"prompt": "hello", "n_predict": 4, "return_tokens": True, "logit_bias": bias})
        assert generated(events) == [code] * 4
    # a text key is tokenized WITHOUT parsing special tokens: the bias goes to the marker's pieces
    events = server.stream({"prompt": "hello", "n_predict": 4, "return_tokens": True,
                            "logit_bias": {"<|c1_5|>": 100}})
    assert code not in generated(events)


def test_n_probs_gives_the_sampled_id_too(servers):
    events = servers("snac").stream({"prompt": ORPHEUS_PROMPT, "n_predict": 2, "return_tokens": True, "n_probs": 1,
                                     "grammar": orpheus_grammar(1)})
    first = events[0]
    [probability] = first["completion_probabilities"]
    assert probability["id"] == first["tokens"][0] in {orpheus_token(0, code) for code in CODES}
    assert (probability["token"], probability["bytes"]) == ("", [])  # a CONTROL token's text is empty here too
    assert len(probability["top_logprobs"]) == 1  # drawn before the grammar: any token, not only allowed ones


def test_special_tokens_in_a_prompt_string_are_parsed_and_bos_is_added(servers):
    server, vocab = servers("snac"), vocabulary("snac")
    final = server.stream({"prompt": ORPHEUS_PROMPT, "n_predict": 1})[-1]
    assert final["tokens_evaluated"] == 1 + len(server.tokenize(ORPHEUS_PROMPT)) == 6  # BOS + 5
    assert final["prompt"] == "<|begin_of_text|>" + ORPHEUS_PROMPT
    # a prompt given as an array that starts with an id gets no BOS
    final = server.stream({"prompt": [vocab.id("<custom_token_3>"), "hello world"], "n_predict": 1})[-1]
    assert final["tokens_evaluated"] == 3
    assert final["prompt"] == "<custom_token_3>hello world"


# -- d) stop strings and special tokens -------------------------------------------------------


def test_a_stop_string_does_not_see_a_control_token_unless_it_is_preserved(servers):
    server, end_of_speech = servers("snac"), vocabulary("snac").id("<custom_token_2>")
    body = {"prompt": ORPHEUS_PROMPT, "n_predict": 64, "return_tokens": True, "stop": ["<custom_token_2>"],
            "grammar": orpheus_grammar(1, then="<[128258]> <[128260]>")}
    events = server.stream(body)
    assert generated(events)[7:9] == [end_of_speech, 128260]  # went on past it
    assert events[-1]["stop_type"] == "eos"

    events = server.stream(body | {"preserved_tokens": ["<custom_token_2>"]})
    assert generated(events)[7:] == [end_of_speech]  # the stop token's id is sent, then the stream ends
    final = events[-1]
    assert (final["stop_type"], final["stopping_word"], final["content"]) == ("word", "<custom_token_2>", "")


def test_a_preserved_control_token_has_its_text_as_content(servers):
    events = servers("snac").stream({"prompt": ORPHEUS_PROMPT, "n_predict": 64, "return_tokens": True,
                                     "preserved_tokens": ["<custom_token_2>"],
                                     "grammar": orpheus_grammar(1, then="<[128258]>")})
    assert [event["content"] for event in events[6:8]] == ["", "<custom_token_2>"]


def test_user_defined_custom_tokens_have_text_and_stop_without_preserving(llama_server_binary, tmp_path):  # noqa: F811
    model = write_speech_model(tmp_path / "user-defined-snac.gguf", "snac", custom_type=TokenType.USER_DEFINED)
    server = LlamaServer(llama_server_binary, model)
    try:
        assert server.tokenize("<custom_token_2>") == [128258]
        events = server.stream({"prompt": ORPHEUS_PROMPT, "n_predict": 64, "return_tokens": True,
                                "stop": ["<custom_token_2>"], "grammar": orpheus_grammar(1, (0,), then="<[128258]>")})
    finally:
        server.close()
    assert [event["content"] for event in events[:7]] == [f"<custom_token_{10 + p * 4096}>" for p in range(7)]
    assert events[-1]["stop_type"] == "word"
    assert generated(events)[-1] == 128258


# -- e) cancelling: closing the stream frees the slot -----------------------------------------


def test_closing_the_stream_frees_the_slot(servers):
    server = servers("snac")  # 4000 tokens at 5..30 ms each under the grammar: far more than the wait
    endless = "root ::= frame+\nframe ::= " + " ".join(f"<[{orpheus_token(p, 0)}]>" for p in range(7))
    events = server.stream({"prompt": ORPHEUS_PROMPT, "n_predict": 4000, "return_tokens": True,
                            "grammar": endless, "ignore_eos": True}, stop_after=20)
    assert len(events) == 20 and not events[-1]["stop"]
    assert wait_until(lambda: not server.busy(), timeout=10.0)
    assert server.stream({"prompt": ORPHEUS_PROMPT, "n_predict": 1})[-1]["tokens_predicted"] == 1
