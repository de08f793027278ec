"""Tiny speech-model GGUFs for the text-to-speech tests, and a bare llama-server to run them.

A TTS model in GGUF is an ordinary language model whose vocabulary also holds
the audio codec's tokens; the codec is recognised by those tokens alone
(../shared/SPEC.md §16). So each model here is a llama-architecture network
with random weights (one layer, 32 wide, the output tied to the embeddings:
llama.cpp reuses ``token_embd`` when ``output.weight`` is absent) and a
vocabulary laid out as the real model's is where it matters:

- ``snac`` (Orpheus, Llama-3 based): ids 0..127999 ordinary pieces, the
  Llama-3 special block at 128000..128255 (``<|begin_of_text|>`` 128000,
  ``<|end_of_text|>`` 128001, ``<|eot_id|>`` 128009), then ``<custom_token_N>``
  at 128256 + N for N in 0..28682: every Orpheus audio code exists
  (position p of a 7-token frame, code c: ``<custom_token_{10 + p*4096 + c}>``).
- ``csm``: ``<|AUDIO|>`` and ``<|audio_eos|>``.
- ``whisper``: ``<|startoftranscript|>`` and its task tokens.
- ``bicodec`` (Spark-TTS, Qwen2.5 based): ``<|bicodec_semantic_0..8191|>``,
  ``<|bicodec_global_0..4095|>`` and the prompt markers.
- ``dac`` (OuteTTS 1.0): ``<|c1_0..1023|>``, ``<|c2_0..1023|>`` and the
  prompt markers.
- ``text``: none of these; a plain language model.

The tokenizer is byte-level BPE ("gpt2", as every one of these real models
has): the 256 byte symbols first, so any text tokenizes, then a few merged
words. Marker tokens are CONTROL, as llama.cpp's converter writes every
``<|...|>`` token; ``custom_type`` chooses the Orpheus tokens' type
(CONTROL by default; USER_DEFINED is the other way a converted model may
carry them). Either way llama-server's ``/tokenize`` (``parse_special``)
gives one id per marker and ``/detokenize`` gives back its text; only
generation differs: a CONTROL token's ``content`` is empty in a completion
(unless ``preserved_tokens`` names it), a USER_DEFINED one's is its text.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from gguf import GGUFWriter, TokenType

from llamagate.adapters.engine_discovery import child_environment, find_llama_server

CODECS = ("snac", "csm", "whisper", "bicodec", "dac", "text")

# Orpheus: audio codes are custom tokens 10 .. 10 + 7*4096 - 1, after 10 control ones
ORPHEUS_CUSTOM_BASE = 128256  # <custom_token_0>
ORPHEUS_AUDIO_OFFSET = 10
ORPHEUS_CODEBOOK = 4096
ORPHEUS_FRAME = 7
DAC_CODEBOOK = 1024
BICODEC_SEMANTIC = 8192
BICODEC_GLOBAL = 4096

WIDTH, HEADS, FEED_FORWARD, LAYERS, CONTEXT = 32, 2, 64, 1, 8192

LLAMA3_SPECIALS = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 6: "<|start_header_id|>",
                   7: "<|end_header_id|>", 8: "<|eom_id|>", 9: "<|eot_id|>"}  # offsets from 128000
# merged words (each merge's result is a token): "hello world" is two tokens
MERGES = ("h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld")


# What tells each codec apart (SPEC §16): ids 128258/128259 detokenize to
# <custom_token_…> (snac); otherwise these texts are single tokens.
DETECTION = {
    "snac": ("<custom_token_2>", "<custom_token_3>"),
    "csm": ("<|AUDIO|>", "<|audio_eos|>"),
    "whisper": ("<|startoftranscript|>",),
    "bicodec": ("<|bicodec_semantic_0|>", "<|bicodec_global_0|>"),
    "dac": ("<|c1_0|>", "<|c2_0|>"),
}
# The markers a test may name: detection, prompt and stop tokens, each code range's ends.
MARKERS = {
    "snac": ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<custom_token_0>", "<custom_token_2>",
             "<custom_token_3>", "<custom_token_4>", "<custom_token_10>", "<custom_token_28681>"),
    "csm": ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|AUDIO|>", "<|audio_eos|>"),
    "whisper": ("<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"),
    "bicodec": ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|task_tts|>", "<|start_content|>",
                "<|end_content|>", "<|start_global_token|>", "<|bicodec_global_0|>", "<|bicodec_global_4095|>",
                "<|bicodec_semantic_0|>", "<|bicodec_semantic_8191|>"),
    "dac": ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>", "<|text_start|>",
            "<|text_end|>", "<|audio_start|>", "<|audio_end|>", "<|global_features_start|>", "<|c1_0|>",
            "<|c1_1023|>", "<|c2_0|>", "<|c2_1023|>"),
    "text": ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"),
}


def orpheus_token(position: int, code: int) -> int:
    """The id of SNAC ``code`` at ``position`` (0..6) of an Orpheus frame."""
    if not (0 <= position < ORPHEUS_FRAME and 0 <= code < ORPHEUS_CODEBOOK):
        raise ValueError(f"position {position} / code {code} out of range")
    return ORPHEUS_CUSTOM_BASE + ORPHEUS_AUDIO_OFFSET + position * ORPHEUS_CODEBOOK + code


@dataclass(frozen=True)
class Vocabulary:
    """A model's tokens in id order, their GGUF token types, BPE merges, and which token is BOS/EOS."""

    codec: str
    tokens: tuple[str, ...]
    types: tuple[int, ...]
    pre: str  # tokenizer.ggml.pre: the pre-tokenizer regexes llama.cpp applies
    bos: str | None
    eos: str
    add_bos: bool
    merges: tuple[str, ...] = MERGES
    _ids: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._ids.update((text, i) for i, text in enumerate(self.tokens))
        if len(self._ids) != len(self.tokens):  # llama.cpp asserts every token text is unique
            raise ValueError("duplicate token texts")

    def id(self, text: str) -> int:
        return self._ids[text]

    def __len__(self) -> int:
        return len(self.tokens)


def _byte_symbols() -> list[str]:
    """GPT-2's byte-to-unicode alphabet, in byte order: the first 256 tokens of byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted, symbols = 0, []
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def _base() -> list[str]:
    return [*_byte_symbols(), *(merge.replace(" ", "") for merge in MERGES)]


def _markers(codec: str) -> list[str]:
    """The codec's marker tokens, appended after the base pieces (snac is laid out apart)."""
    llama3 = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    if codec == "csm":
        return [*llama3, "<|AUDIO|>", "<|audio_eos|>"]
    if codec == "whisper":
        return ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    if codec == "bicodec":
        return ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|task_tts|>", "<|start_content|>",
                "<|end_content|>", "<|start_global_token|>", "<|end_global_token|>",
                "<|start_semantic_token|>", "<|end_semantic_token|>",
                *(f"<|bicodec_global_{i}|>" for i in range(BICODEC_GLOBAL)),
                *(f"<|bicodec_semantic_{i}|>" for i in range(BICODEC_SEMANTIC))]
    if codec == "dac":
        return [*llama3, "<|im_start|>", "<|im_end|>", "<|text_start|>", "<|text_end|>", "<|audio_start|>",
                "<|audio_end|>", "<|global_features_start|>", "<|global_features_end|>",
                *(f"<|c1_{i}|>" for i in range(DAC_CODEBOOK)), *(f"<|c2_{i}|>" for i in range(DAC_CODEBOOK))]
    if codec == "text":
        return llama3
    raise ValueError(f"unknown codec {codec!r}; one of {', '.join(CODECS)}")


@functools.cache
def vocabulary(codec: str, custom_type: TokenType = TokenType.CONTROL) -> Vocabulary:
    """The vocabulary of the ``codec`` model (see the module's docstring for the layout)."""
    base = _base()
    if codec == "snac":
        filler = [f"[filler_{i}]" for i in range(128000 - len(base))]  # ordinary pieces nobody types
        specials = [LLAMA3_SPECIALS.get(i, f"<|reserved_special_token_{i}|>") for i in range(256)]
        custom = [f"<custom_token_{n}>" for n in range(ORPHEUS_AUDIO_OFFSET + ORPHEUS_FRAME * ORPHEUS_CODEBOOK + 1)]
        tokens = [*base, *filler, *specials, *custom]
        types = [TokenType.NORMAL] * (len(base) + len(filler)) + [TokenType.CONTROL] * 256 + [custom_type] * len(custom)
        return Vocabulary(codec, tuple(tokens), tuple(int(t) for t in types), "llama-bpe",
                          "<|begin_of_text|>", "<|end_of_text|>", True)
    markers = _markers(codec)
    types = [TokenType.NORMAL] * len(base) + [TokenType.CONTROL] * len(markers)
    qwen = codec in ("bicodec", "whisper")
    return Vocabulary(codec, tuple(base + markers), tuple(int(t) for t in types),
                      "qwen2" if codec == "bicodec" else "gpt-2" if codec == "whisper" else "llama-bpe",
                      None if qwen else "<|begin_of_text|>", "<|endoftext|>" if qwen else "<|end_of_text|>",
                      not qwen)


def write_speech_model(path: Path, codec: str, *, seed: int = 0,
                       custom_type: TokenType = TokenType.CONTROL) -> Path:
    """Write the tiny ``codec`` model (one of CODECS) to ``path`` and return it."""
    vocab = vocabulary(codec, custom_type)
    writer = GGUFWriter(path, "llama")
    writer.add_name(f"llamagate tiny {codec} speech model")
    writer.add_file_type(1)  # F16 matrices, F32 norms
    for add, value in ((writer.add_context_length, CONTEXT), (writer.add_block_count, LAYERS),
                       (writer.add_embedding_length, WIDTH), (writer.add_feed_forward_length, FEED_FORWARD),
                       (writer.add_head_count, HEADS), (writer.add_head_count_kv, HEADS),
                       (writer.add_rope_dimension_count, WIDTH // HEADS), (writer.add_vocab_size, len(vocab))):
        add(value)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(list(vocab.tokens))
    writer.add_token_types(list(vocab.types))
    writer.add_token_merges(list(vocab.merges))
    if vocab.bos is not None:
        writer.add_bos_token_id(vocab.id(vocab.bos))
    writer.add_eos_token_id(vocab.id(vocab.eos))
    writer.add_add_bos_token(vocab.add_bos)
    for name, data in _weights(len(vocab), np.random.default_rng(seed)).items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _weights(n_vocab: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """numpy shapes are ggml's ne reversed; small weights and unit norms keep activations finite."""
    shapes = {"token_embd.weight": (n_vocab, WIDTH), "output_norm.weight": (WIDTH,)}
    for i in range(LAYERS):
        shapes |= {f"blk.{i}.{name}": shape for name, shape in {
            "attn_norm.weight": (WIDTH,), "ffn_norm.weight": (WIDTH,),
            "attn_q.weight": (WIDTH, WIDTH), "attn_k.weight": (WIDTH, WIDTH),
            "attn_v.weight": (WIDTH, WIDTH), "attn_output.weight": (WIDTH, WIDTH),
            "ffn_gate.weight": (FEED_FORWARD, WIDTH), "ffn_up.weight": (FEED_FORWARD, WIDTH),
            "ffn_down.weight": (WIDTH, FEED_FORWARD),
        }.items()}
    return {name: np.ones(shape, dtype=np.float32) if len(shape) == 1
            else (rng.standard_normal(shape) * 0.02).astype(np.float16) for name, shape in shapes.items()}


# -- a bare llama-server on one model ------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LlamaServer:
    """llama-server on ``model``, as the project's launcher would start it, with an HTTP client on it."""

    def __init__(self, binary: Path, model: Path, *, context: int = 1024, threads: int = 1,
                 extra: tuple[str, ...] = ()) -> None:
        # one thread: ggml's threads spin while they wait, and on a small shared CPU two threads
        # on a tiny model are several times slower than one (measured: 90 vs 4 ms a token)
        port = _free_port()
        argv = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", str(context),
                "--parallel", "1", "-t", str(threads), "--no-webui", "--fit", "off", *extra]
        # not a pipe: a full pipe would stall the server's logging; it lives as long as the server
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=child_environment(binary, os.environ))
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=60)
        self._wait_ready(60.0)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited {self.process.returncode}:\n{self.log()}")
            try:
                if self.http.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.close()
        raise RuntimeError(f"llama-server not ready within {timeout} s")

    def post(self, path: str, body: dict) -> httpx.Response:
        return self.http.post(path, json=body)

    def tokenize(self, text: str) -> list[int]:
        body = {"content": text, "add_special": False, "parse_special": True}
        return self.post("/tokenize", body).raise_for_status().json()["tokens"]

    def detokenize(self, ids: list[int]) -> str:
        return self.post("/detokenize", {"tokens": ids}).raise_for_status().json()["content"]

    def stream(self, body: dict, *, stop_after: int | None = None) -> list[dict]:
        """``/completion`` streamed: every SSE event's JSON, the last one the final (``"stop": true``);
        with ``stop_after``, the stream is closed after that many events (a client cancelling)."""
        events: list[dict] = []
        # llama-server may close a connection after a stream although it said keep-alive:
        # "Connection: close" keeps such a connection out of the pool (as adapters/llama_http.py does)
        with self.http.stream("POST", "/completion", json=body | {"stream": True},
                              headers={"Connection": "close"}) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line.removeprefix("data: ")))
                    if len(events) == stop_after:
                        break
        return events

    def busy(self) -> bool:
        """Whether the (only) slot is generating, as ``/slots`` says."""
        return self.http.get("/slots").raise_for_status().json()[0]["is_processing"]

    def log(self) -> str:
        """What the server printed so far."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def close(self) -> None:
        self.http.close()
        self.process.kill()
        self.process.wait(timeout=30)
        self._log.close()


# -- fixtures: a test module imports them by name (ruff's F401 and F811 then need a noqa) --


@pytest.fixture(scope="session")
def speech_models(tmp_path_factory) -> Callable[[str], Path]:
    """``speech_models(codec)``: the path of that codec's tiny model, written once per session."""
    folder = tmp_path_factory.mktemp("speech-models")

    @functools.cache
    def model(codec: str) -> Path:
        return write_speech_model(folder / f"tiny-{codec}.gguf", codec)

    return model


@pytest.fixture(scope="session")
def llama_server_binary(cache_dir) -> Path:
    return find_llama_server({"PATH": ""}, cache_dir)


def serve(binary: Path, model: Path, **options) -> Iterator[LlamaServer]:
    """For a fixture: ``yield from serve(binary, model)`` runs one server for the fixture's scope."""
    server = LlamaServer(binary, model, **options)
    try:
        yield server
    finally:
        server.close()
