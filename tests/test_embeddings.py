"""Embeddings and reranking below the gRPC layer (issue 12): the requests'
rules, the ranking law, the launch and its flags, llama-server's JSON (played
by httpx.MockTransport with the bytes the pinned build sends), and the slot's
mode checks and queue against fakes."""

from __future__ import annotations

import array
import asyncio
import base64
import itertools
import json
import math
from collections.abc import Callable

import httpx
import pytest
from fakes import model_facts
from hypothesis import given
from hypothesis import strategies as st
from test_llama_argv import argv, assert_accepted
from test_slot import QUESTION, World, error_of, run, until

from llamagate.adapters.llama_embed_wire import CHUNK_CHARS, CHUNK_INPUTS, chunks, embeddings_from_json
from llamagate.adapters.llama_http import LlamaHttpClient
from llamagate.application.slot import SlotSettings
from llamagate.domain.batching import MAX_BATCH
from llamagate.domain.chat import Done
from llamagate.domain.embeddings import (
    MAX_INPUT_BYTES,
    MAX_INPUTS,
    EmbedRequest,
    RerankRequest,
    RerankResult,
    check_embed,
    check_rerank,
    rank,
)
from llamagate.domain.errors import (
    Aborted,
    ContextExceeded,
    EngineFailed,
    EngineRejected,
    InvalidArgument,
    Overloaded,
    WrongMode,
)
from llamagate.domain.launch import LaunchSpec, check_load_options, launch_from_plan
from llamagate.domain.load_options import LoadOptions, ModelMode, Pooling, Speculative
from llamagate.domain.load_plan import plan_load
from llamagate.domain.restart_policy import RestartPolicy

A = "/models/a.gguf"
GIB = 1 << 30

# --- the requests' rules -----------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (EmbedRequest(()), "texts"),
        (EmbedRequest(("a", "", "b")), "texts[1]"),
        (EmbedRequest(("x",) * (MAX_INPUTS + 1)), "texts"),
        (EmbedRequest(("a", "b", "c", "é" * (MAX_INPUT_BYTES // 2 + 1))), "texts[3]"),
        (RerankRequest("", ("a",)), "query"),
        (RerankRequest("q", ()), "documents"),
        (RerankRequest("q", ("a", "b", "")), "documents[2]"),
        (RerankRequest("q", ("a",) * (MAX_INPUTS + 1)), "documents"),
        (RerankRequest("q" * (MAX_INPUT_BYTES + 1), ("a",)), "query"),
        (RerankRequest("q", ("a", "b"), top_n=3), "top_n"),
        (RerankRequest("q", ("a", "b"), top_n=-1), "top_n"),
    ],
)
def test_each_bad_request_names_its_field(request_, field):
    check = check_embed if isinstance(request_, EmbedRequest) else check_rerank
    with pytest.raises(InvalidArgument) as caught:
        check(request_)
    assert caught.value.field == field and str(caught.value).startswith(f"{field}: ")


def test_requests_at_the_limits_pass():
    check_embed(EmbedRequest(("x",) * MAX_INPUTS))
    check_embed(EmbedRequest(("é" * (MAX_INPUT_BYTES // 2),)))  # two bytes each: exactly 1 MiB
    check_rerank(RerankRequest("q", ("a", "b"), top_n=2))
    check_rerank(RerankRequest("q", ("a", "b"), top_n=0))


# --- the ranking law ---------------------------------------------------------

SCORES = st.lists(st.one_of(st.floats(allow_nan=False), st.sampled_from([0.0, -0.0, 0.5, 1.0])), max_size=40)


@given(SCORES)
def test_rank_is_a_permutation_best_first_with_ties_in_index_order(scores):
    ranked = rank(scores)

    assert sorted(r.index for r in ranked) == list(range(len(scores)))
    assert all(scores[r.index] == r.score for r in ranked)
    for before, after in itertools.pairwise(ranked):
        assert before.score > after.score or (before.score == after.score and before.index < after.index)


@given(SCORES)
def test_ranking_a_ranking_again_changes_nothing(scores):
    # Ranking the scores of a ranking again changes nothing: the order is a function of the scores alone.
    ranked = rank(scores)
    again = rank([r.score for r in ranked])
    assert [r.index for r in again] == list(range(len(scores)))


def test_a_nan_score_ranks_below_every_number():
    ranked = rank([0.1, math.nan, -math.inf, 5.0])
    assert [r.index for r in ranked] == [3, 0, 2, 1] and math.isnan(ranked[-1].score)
    assert ranked[0] == RerankResult(3, 5.0)


# --- load options and the launch ---------------------------------------------


@pytest.mark.parametrize(
    ("mode", "pooling", "ok"),
    [
        (ModelMode.EMBEDDING, Pooling.MEAN, True),
        (ModelMode.EMBEDDING, Pooling.CLS, True),
        (ModelMode.EMBEDDING, Pooling.LAST, True),
        (ModelMode.EMBEDDING, Pooling.DEFAULT, True),
        (ModelMode.EMBEDDING, Pooling.NONE, False),  # a vector per token, not per text
        (ModelMode.EMBEDDING, Pooling.RANK, False),
        (ModelMode.RERANK, Pooling.DEFAULT, True),
        (ModelMode.RERANK, Pooling.RANK, True),  # what rerank means anyway
        (ModelMode.RERANK, Pooling.MEAN, False),
        (ModelMode.CHAT, Pooling.DEFAULT, True),
        (ModelMode.CHAT, Pooling.MEAN, False),
        (ModelMode.CHAT, Pooling.RANK, False),
    ],
)
def test_pooling_goes_with_its_mode(mode, pooling, ok):
    options = LoadOptions(mode=mode, pooling=pooling)
    if ok:
        check_load_options(options)
        return
    with pytest.raises(InvalidArgument) as caught:
        check_load_options(options)
    assert caught.value.field == "options.pooling"


def launch(**options: object):
    load_options = LoadOptions(**options)  # type: ignore[arg-type]
    load_plan = plan_load(model_facts(A, context=8192), load_options, [], 16 * GIB)
    return launch_from_plan(load_plan, load_options, decode_budget_s=1.0, host_threads=2)


@pytest.mark.parametrize("mode", [ModelMode.EMBEDDING, ModelMode.RERANK])
def test_an_embedding_or_rerank_launch_never_drafts_nor_templates(mode):
    chat_info, chat = launch(speculative=Speculative.NGRAM_MOD, chat_template="{{ x }}")
    info, spec = launch(mode=mode, speculative=Speculative.NGRAM_MOD, chat_template="{{ x }}")

    assert chat.speculative is Speculative.NGRAM_MOD and chat.chat_template and chat_info.mode is ModelMode.CHAT
    assert (spec.speculative, spec.chat_template, dict(spec.template_kwargs)) == (Speculative.OFF, "", {})
    assert spec.mode is info.mode is mode


def test_the_launch_carries_the_pooling_and_a_batch_that_holds_a_whole_input():
    _, chat = launch(context_length=4096)
    _, spec = launch(mode=ModelMode.EMBEDDING, pooling=Pooling.CLS, context_length=4096, parallel=4)
    _, wide = launch(mode=ModelMode.EMBEDDING, context_length=8192)
    _, chosen = launch(mode=ModelMode.EMBEDDING, context_length=8192, batch_size=256)

    assert spec.pooling is Pooling.CLS
    assert spec.batch_size == 1024  # a slot's context: 4096 over 4 slots
    assert wide.batch_size == MAX_BATCH and chosen.batch_size == 256
    assert chat.batch_size < spec.batch_size  # chat's batch is sized for a quick cancel instead


# --- llama-server's flags ----------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "pooling", "expected"),
    [
        (ModelMode.CHAT, Pooling.DEFAULT, []),
        (ModelMode.EMBEDDING, Pooling.DEFAULT, ["--embeddings"]),
        (ModelMode.EMBEDDING, Pooling.MEAN, ["--embeddings", "--pooling", "mean"]),
        (ModelMode.EMBEDDING, Pooling.LAST, ["--embeddings", "--pooling", "last"]),
        (ModelMode.RERANK, Pooling.DEFAULT, ["--reranking"]),
        (ModelMode.RERANK, Pooling.RANK, ["--reranking"]),
    ],
)
def test_each_mode_has_its_flags(mode, pooling, expected):
    plain = argv(LaunchSpec("/m.gguf", 0))
    args = argv(LaunchSpec("/m.gguf", 0, mode=mode, pooling=pooling))
    assert args[: len(plain)] == plain and args[len(plain):] == expected


@pytest.mark.engine
@pytest.mark.parametrize(("mode", "pooling"), [(ModelMode.EMBEDDING, p) for p in Pooling if p is not Pooling.RANK]
                         + [(ModelMode.RERANK, Pooling.DEFAULT)])
def test_the_built_llama_server_accepts_every_mode_flag(mode, pooling, cache_dir):
    assert_accepted(argv(LaunchSpec("/m.gguf", 0, mode=mode, pooling=pooling, batch_size=512)), cache_dir)


# --- llama-server's JSON -----------------------------------------------------


def b64(*values: float) -> str:
    return base64.b64encode(array.array("f", values).tobytes()).decode()


def embedding_answer(*vectors: tuple[float, ...], tokens: int = 3) -> dict:
    data = [{"embedding": b64(*v), "index": i, "object": "embedding", "encoding_format": "base64"}
            for i, v in enumerate(vectors)]
    return {"model": "m.gguf", "object": "list", "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "data": data}


def rerank_answer(scores: list[float | None], tokens: int = 9) -> dict:
    results = [{"index": i, "relevance_score": s} for i, s in enumerate(scores)]
    results.sort(key=lambda r: -(r["relevance_score"] or 0))  # llama-server sends them sorted, best first
    return {"model": "m.gguf", "object": "list", "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "results": results}


@given(st.lists(st.integers(1, CHUNK_CHARS * 2), max_size=300))
def test_chunks_cover_the_inputs_in_order_each_within_the_limits(sizes):
    parts = chunks(sizes)

    assert [i for part in parts for i in part] == list(range(len(sizes)))
    for part in parts:
        assert len(part) == 1 or (len(part) <= CHUNK_INPUTS and sum(sizes[i] for i in part) <= CHUNK_CHARS)


def test_an_answer_must_be_what_was_asked():
    good = embedding_answer((1.0, 0.0), (0.0, 1.0))
    assert embeddings_from_json(good, 2).vectors == ((1.0, 0.0), (0.0, 1.0))
    assert embeddings_from_json({**good, "data": good["data"][::-1]}, 2).vectors == ((1.0, 0.0), (0.0, 1.0))
    floats = {**good, "data": [{"index": 0, "embedding": [0.5, 1]}, {"index": 1, "embedding": [2, 3.0]}]}
    assert embeddings_from_json(floats, 2).vectors == ((0.5, 1.0), (2.0, 3.0))

    broken = [
        {**good, "data": good["data"][:1]},  # one missing
        {**good, "data": [good["data"][0], good["data"][0]]},  # twice the same index
        {**good, "data": [good["data"][0], {**good["data"][1], "embedding": b64(1.0)}]},  # two widths
        {**good, "data": [good["data"][0], {**good["data"][1], "embedding": "not base64!"}]},
        {**good, "data": [good["data"][0], {**good["data"][1], "index": True}]},
        "no JSON object",
    ]
    for payload in broken:
        with pytest.raises(EngineFailed):
            embeddings_from_json(payload, 2)


Handler = Callable[[httpx.Request], httpx.Response]


def talk(handler: Handler, work: Callable[[LlamaHttpClient], object]):
    async def main():
        client = LlamaHttpClient("http://127.0.0.1:1", "secret-key", transport=httpx.MockTransport(handler))
        try:
            return await work(client)  # type: ignore[misc]
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_embed_sends_the_texts_in_parts_and_joins_the_vectors_in_order():
    bodies: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/embeddings" and request.headers["authorization"] == "Bearer secret-key"
        body = json.loads(request.content)
        bodies.append(body)
        return httpx.Response(200, json=embedding_answer(*[(float(len(t)), 1.0) for t in body["input"]], tokens=2))

    texts = tuple("x" * (i + 1) for i in range(CHUNK_INPUTS + 5))
    result = talk(handler, lambda c: c.embed(EmbedRequest(texts, normalize=False)))

    assert [len(b["input"]) for b in bodies] == [CHUNK_INPUTS, 5]
    assert {b["embd_normalize"] for b in bodies} == {-1} and {b["encoding_format"] for b in bodies} == {"base64"}
    assert [v[0] for v in result.vectors] == [float(len(t)) for t in texts]
    assert result.prompt_tokens == 4
    talk(handler, lambda c: c.embed(EmbedRequest(("a",))))
    assert bodies[-1]["embd_normalize"] == 2  # euclidean: norm 1


def test_rerank_ranks_across_parts_by_score_then_index_and_keeps_top_n():
    bodies: list[dict] = []
    scores = {"best": 0.9, "tie": 0.5, "worst": None}  # None: a NaN, as llama-server writes one

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/rerank"
        body = json.loads(request.content)
        bodies.append(body)
        return httpx.Response(200, json=rerank_answer([scores[d.split()[0]] for d in body["documents"]]))

    documents = ("tie a", "worst", "best", "tie b") + ("tie c",) * CHUNK_INPUTS
    ranking = talk(handler, lambda c: c.rerank(RerankRequest("q", documents, top_n=3)))

    assert "top_n" not in bodies[0] and bodies[0]["query"] == "q" and len(bodies) == 2
    assert [(r.index, r.score) for r in ranking.results] == [(2, 0.9), (0, 0.5), (3, 0.5)]
    assert ranking.prompt_tokens == 18
    everything = talk(handler, lambda c: c.rerank(RerankRequest("q", documents[:4])))
    assert [r.index for r in everything.results] == [2, 0, 3, 1]


# The pinned build's answers, byte for byte (SmolLM2 with --embeddings, -c 2048 --parallel 2, -ub 2048).
TOO_LARGE = (b'{"error":{"code":500,"message":"input (3001 tokens) is too large to process. increase the physical batch '
             b'size (current batch size: 2048)","type":"server_error"}}')
LARGER_THAN_CONTEXT = (b'{"error":{"code":400,"message":"input (1501 tokens) is larger than the max context size (1024 '
                       b'tokens). skipping","type":"exceed_context_size_error","n_prompt_tokens":1501,"n_ctx":1024}}')
NO_POOLING = (b'{"error":{"code":400,"message":"Pooling type \'none\' is not OAI compatible. Please use a different '
              b'pooling type","type":"invalid_request_error"}}')
NOT_RERANKING = (b'{"error":{"code":501,"message":"This server does not support reranking. Start it with '
                 b'`--reranking`","type":"not_supported_error"}}')


@pytest.mark.parametrize(
    ("status", "body", "error", "words"),
    [
        (500, TOO_LARGE, ContextExceeded, "3001 tokens"),
        (400, LARGER_THAN_CONTEXT, ContextExceeded, "1501 tokens"),
        (400, NO_POOLING, EngineRejected, "options.pooling"),
        (501, NOT_RERANKING, EngineRejected, "--reranking"),
        (503, b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}', EngineFailed, "Loading"),
    ],
)
def test_llama_servers_errors_become_the_domains(status, body, error, words):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": "application/json"})

    for work in (lambda c: c.embed(EmbedRequest(("a",))), lambda c: c.rerank(RerankRequest("q", ("a",)))):
        with pytest.raises(error) as caught:
            talk(handler, work)
        assert words in str(caught.value)
    if error is ContextExceeded:
        assert caught.value.prompt_tokens > caught.value.context_length > 0


def test_a_refused_connection_is_engine_failed():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(EngineFailed, match="lost connection"):
        talk(handler, lambda c: c.embed(EmbedRequest(("a",))))


# --- the slot, against fakes -------------------------------------------------

TEXTS = EmbedRequest(("the cat", "the cat", "a dog"))
QUERY = RerankRequest("where is the cat", ("a dog barks", "the cat is here", "where"), top_n=2)


def test_an_embedding_model_embeds_and_refuses_chat_and_rerank():
    async def story(w: World) -> None:
        await w.load(A, mode=ModelMode.EMBEDDING, pooling=Pooling.MEAN)
        engine = w.launcher.alive()[0]
        embeddings = await w.slot.embed(TEXTS)

        assert engine.spec.mode is ModelMode.EMBEDDING and w.slot.status().mode is ModelMode.EMBEDDING
        assert embeddings.vectors[0] == embeddings.vectors[1] != embeddings.vectors[2]
        assert engine.chat.embeds == [TEXTS] and embeddings.prompt_tokens == 6
        for refused in (error_of(w.ask()), error_of(w.slot.rerank(QUERY)), error_of(w.slot.count_tokens(QUESTION))):
            error = await refused
            assert isinstance(error, WrongMode) and "embedding mode" in str(error)
        assert engine.chat.calls == [] and engine.chat.reranks == []

    run(story)


def test_a_rerank_model_ranks_and_refuses_chat_and_embeddings():
    async def story(w: World) -> None:
        await w.load(A, mode=ModelMode.RERANK)
        ranking = await w.slot.rerank(QUERY)

        assert [r.index for r in ranking.results] == [1, 2]  # three words shared, then one; top 2
        assert isinstance(await error_of(w.ask()), WrongMode)
        assert isinstance(await error_of(w.slot.embed(TEXTS)), WrongMode)

    run(story)


def test_a_chat_model_refuses_embeddings_and_rerank_and_bad_requests_reach_no_engine():
    async def story(w: World) -> None:
        await w.load(A)
        assert isinstance(await error_of(w.slot.embed(TEXTS)), WrongMode)
        assert isinstance(await error_of(w.slot.rerank(QUERY)), WrongMode)
        await w.load(A, mode=ModelMode.EMBEDDING)
        engine = w.launcher.alive()[0]
        bad = await error_of(w.slot.embed(EmbedRequest(("fine", ""))))
        assert isinstance(bad, InvalidArgument) and bad.field == "texts[1]" and engine.chat.embeds == []

    run(story)


def test_embeddings_queue_for_the_slots_like_generations_and_an_unload_ends_them():
    async def story(w: World) -> None:
        await w.load(A, mode=ModelMode.EMBEDDING, parallel=1)
        engine = w.launcher.alive()[0]
        engine.chat.hold = asyncio.Event()
        running = asyncio.create_task(w.slot.embed(TEXTS))
        await until(lambda: len(engine.chat.embeds) == 1)
        queued = asyncio.create_task(w.slot.embed(TEXTS))
        await asyncio.sleep(0.01)

        refused = await error_of(w.slot.embed(TEXTS))
        assert isinstance(refused, Overloaded) and len(engine.chat.embeds) == 1  # never more than the slots
        engine.chat.hold.set()
        first, second = await asyncio.gather(running, queued)
        assert first == second and len(engine.chat.embeds) == 2

        engine.chat.hold = asyncio.Event()
        running = asyncio.create_task(w.slot.embed(TEXTS))
        await until(lambda: len(engine.chat.embeds) == 3)
        queued = asyncio.create_task(w.slot.embed(TEXTS))
        await asyncio.sleep(0.01)
        await w.slot.unload()
        assert isinstance(await error_of(running), Aborted) and isinstance(await error_of(queued), Aborted)

    run(story, SlotSettings(restart=RestartPolicy(enabled=False), queue_size=1))


def test_a_chat_model_still_generates():
    async def story(w: World) -> None:
        await w.load(A)
        events = await w.ask(QUESTION)
        assert isinstance(events[-1], Done) and len(w.launcher.alive()[0].chat.calls) == 1

    run(story)
