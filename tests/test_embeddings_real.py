"""Embeddings and reranking for real (issue 12): a model slot with the
project's real adapters loads SmolLM2 in EMBEDDING mode and a tiny reranker
in RERANK mode, and serves them through llama-server.

The reranker is written here: a two-layer Qwen3 with random weights and a
classification head, laid out as llama.cpp's converter writes a real
Qwen3-Reranker (conversion/qwen.py, Qwen3Model: pooling type RANK, output
labels "yes" and "no", ``cls.output.weight`` of two rows, the "rerank"
prompt template), with SmolLM2's tokenizer. Its scores mean nothing; what is
real is that llama-server loads it as a reranker and scores each pair.
"""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter, PoolingType

from llamagate.adapters.engine_discovery import find_llama_server
from llamagate.adapters.gguf_inspector import GgufInspector
from llamagate.adapters.llama_process import LlamaServerLauncher
from llamagate.adapters.memory_probe import SystemMemory
from llamagate.application.slot import ModelSlot, SlotSettings
from llamagate.domain.chat import GenerateRequest, Role, Sampling, text_message
from llamagate.domain.embeddings import EmbedRequest, RerankRequest
from llamagate.domain.errors import ContextExceeded, EngineRejected, LlamagateError, WrongMode
from llamagate.domain.load_options import LoadOptions, ModelMode, Pooling
from llamagate.domain.restart_policy import RestartPolicy
from llamagate.rust_ext._native import scan_file

pytestmark = pytest.mark.engine

TEXTS = (
    "The cat sat on the mat.",
    "The cat sat on the mat.",
    "Quarterly revenue grew by twelve percent.",
    "A kitten rested on the rug.",
    "Rust has no garbage collector.",
    "Photosynthesis turns light into sugar.",
    "The train leaves at noon.",
    "Paris is the capital of France.",
)
QUERY = "where did the cat sit?"
DOCUMENTS = ("The cat sat on the mat.", QUERY, "Paris is the capital of France.", "x")
CONTEXT = 512


def write_reranker(path: Path, tokenizer_from: Path, *, seed: int = 0) -> Path:
    """A tiny Qwen3 reranker with random weights and ``tokenizer_from``'s BPE tokenizer."""
    keys = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")
    header = scan_file(tokenizer_from, array_values=keys)
    meta, arrays = header["metadata"], {k: header["arrays"][k]["values"] for k in keys}
    width, heads, kv_heads, head_dim, ffn, layers = 64, 2, 1, 32, 128, 2
    writer = GGUFWriter(path, "qwen3")
    writer.add_name("llamagate tiny reranker")
    writer.add_file_type(1)  # F16 matrices, F32 norms
    for add, value in ((writer.add_context_length, 512), (writer.add_block_count, layers),
                       (writer.add_embedding_length, width), (writer.add_feed_forward_length, ffn),
                       (writer.add_head_count, heads), (writer.add_head_count_kv, kv_heads),
                       (writer.add_key_length, head_dim), (writer.add_value_length, head_dim)):
        add(value)
    writer.add_rope_freq_base(1e6)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_pooling_type(PoolingType.RANK)
    writer.add_classifier_output_labels(["yes", "no"])  # two rows: llama.cpp's Qwen3 head softmaxes them
    writer.add_chat_template([{"name": "rerank", "template": (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
        "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n"
        "<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n"
        "<Query>: {query}\n<Document>: {document}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")}])
    writer.add_tokenizer_model(meta["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    writer.add_token_list(arrays["tokenizer.ggml.tokens"])
    writer.add_token_types(arrays["tokenizer.ggml.token_type"])
    writer.add_token_merges(arrays["tokenizer.ggml.merges"])
    writer.add_bos_token_id(meta["tokenizer.ggml.bos_token_id"])
    writer.add_eos_token_id(meta["tokenizer.ggml.eos_token_id"])
    writer.add_pad_token_id(meta["tokenizer.ggml.padding_token_id"])
    writer.add_add_bos_token(False)

    rng = np.random.default_rng(seed)
    shapes = {"token_embd.weight": (len(arrays["tokenizer.ggml.tokens"]), width), "output_norm.weight": (width,),
              "cls.output.weight": (2, width)}  # numpy order: ggml's ne reversed
    for i in range(layers):
        shapes |= {f"blk.{i}.{name}": shape for name, shape in {
            "attn_norm.weight": (width,), "ffn_norm.weight": (width,),
            "attn_q.weight": (heads * head_dim, width), "attn_k.weight": (kv_heads * head_dim, width),
            "attn_v.weight": (kv_heads * head_dim, width), "attn_output.weight": (width, heads * head_dim),
            "attn_q_norm.weight": (head_dim,), "attn_k_norm.weight": (head_dim,),
            "ffn_gate.weight": (ffn, width), "ffn_up.weight": (ffn, width), "ffn_down.weight": (width, ffn),
        }.items()}
    for name, shape in shapes.items():
        if len(shape) == 1:  # norms at 1 keep the activations finite
            writer.add_tensor(name, np.ones(shape, dtype=np.float32))
        else:
            writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


async def outcome(awaitable) -> object:
    try:
        return await awaitable
    except LlamagateError as error:
        return error


@pytest.fixture(scope="module")
def served(cache_dir, smollm2_path, tmp_path_factory) -> dict[str, object]:
    """One slot with the real adapters: SmolLM2 for embeddings (mean pooling,
    then its own pooling), then the tiny reranker; what each call returned."""
    workdir = tmp_path_factory.mktemp("embeddings")
    reranker = write_reranker(workdir / "tiny-reranker.gguf", smollm2_path)
    binary = find_llama_server({"PATH": ""}, cache_dir)
    launcher = LlamaServerLauncher(lambda: binary, registry_dir=workdir, env=os.environ)
    slot = ModelSlot(GgufInspector(), launcher, SystemMemory(os.environ),
                     SlotSettings(restart=RestartPolicy(enabled=False)))
    chat = GenerateRequest((text_message(Role.USER, "hi"),), Sampling(max_tokens=4))
    long_text = "word " * (CONTEXT + 200)

    async def load(path: Path, **options: object) -> None:
        async for _ in slot.load(str(path), LoadOptions(context_length=CONTEXT, **options)):  # type: ignore[arg-type]
            pass

    async def scenario() -> dict[str, object]:
        seen: dict[str, object] = {}
        try:
            await load(smollm2_path, mode=ModelMode.EMBEDDING, pooling=Pooling.MEAN)
            seen["info"] = slot.status()
            seen["normalized"] = await slot.embed(EmbedRequest(TEXTS))
            seen["raw"] = await slot.embed(EmbedRequest(TEXTS[:3], normalize=False))
            seen["too long"] = await outcome(slot.embed(EmbedRequest(("short", long_text))))
            seen["chat"] = await outcome(slot.generate(chat).__anext__())
            seen["rerank on embeddings"] = await outcome(slot.rerank(RerankRequest(QUERY, DOCUMENTS)))
            await load(smollm2_path, mode=ModelMode.EMBEDDING)  # SmolLM2's own pooling: none
            seen["no pooling"] = await outcome(slot.embed(EmbedRequest(TEXTS[:1])))
            await load(reranker, mode=ModelMode.RERANK)
            seen["ranked"] = [await slot.rerank(RerankRequest(QUERY, DOCUMENTS)) for _ in range(2)]
            seen["top 2"] = await slot.rerank(RerankRequest(QUERY, DOCUMENTS, top_n=2))
            seen["rerank too long"] = await outcome(slot.rerank(RerankRequest(QUERY, ("fine", long_text))))
            seen["embed on reranker"] = await outcome(slot.embed(EmbedRequest(TEXTS[:1])))
        finally:
            await slot.close()
        return seen

    return asyncio.run(scenario())


def cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (norm(a) * norm(b))


def norm(vector) -> float:
    return math.sqrt(sum(x * x for x in vector))


def test_each_text_gets_a_vector_as_wide_as_the_model(served, smollm2_path):
    width = GgufInspector().inspect(str(smollm2_path)).hyperparameters.embedding_length
    embeddings = served["normalized"]
    assert len(embeddings.vectors) == len(TEXTS) and {len(v) for v in embeddings.vectors} == {width}
    assert embeddings.prompt_tokens >= len(TEXTS)
    assert served["info"].mode is ModelMode.EMBEDDING


def test_normalized_vectors_have_norm_one_and_raw_ones_do_not(served):
    assert all(abs(norm(v) - 1.0) <= 1e-4 for v in served["normalized"].vectors)
    assert all(abs(norm(v) - 1.0) > 1e-2 for v in served["raw"].vectors)


def test_identical_texts_have_cosine_one_and_different_texts_less(served):
    vectors = served["normalized"].vectors
    assert abs(cosine(vectors[0], vectors[1]) - 1.0) <= 1e-5
    assert all(cosine(vectors[0], other) < 1.0 - 1e-4 for other in vectors[2:])
    raw = served["raw"].vectors  # the same direction, before scaling
    assert abs(cosine(raw[2], vectors[2]) - 1.0) <= 1e-5


def test_an_input_longer_than_the_model_takes_is_context_exceeded(served):
    for key in ("too long", "rerank too long"):
        error = served[key]
        assert isinstance(error, ContextExceeded), (key, error)
        assert error.prompt_tokens > CONTEXT >= error.context_length > 0


def test_each_model_refuses_what_its_mode_does_not_serve(served):
    for key in ("chat", "rerank on embeddings", "embed on reranker"):
        assert isinstance(served[key], WrongMode), (key, served[key])


def test_a_model_without_pooling_of_its_own_asks_for_one(served):
    error = served["no pooling"]
    assert isinstance(error, EngineRejected) and "options.pooling" in str(error)


def test_the_reranker_scores_each_document_the_same_way_twice(served):
    first, second = served["ranked"]
    assert sorted(r.index for r in first.results) == list(range(len(DOCUMENTS)))
    assert first == second  # same order, same scores
    # Two outputs softmaxed by llama.cpp's Qwen3 head: the head ran (random weights: no ranking checked).
    assert all(0.0 < r.score < 1.0 for r in first.results)
    assert first.prompt_tokens > 0


def test_top_n_keeps_the_best(served):
    first = served["ranked"][0]
    assert served["top 2"].results == first.results[:2]
