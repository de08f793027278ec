"""Speech synthesis rules (SPEC §16): which codec a model emits, the prompt
each codec's models were trained on, and how the model's tokens become codec
codes.

Detection asks the model's own tokenizer (the ``Tokenizer`` port) in the
reference's order; the probes are data here, the asking is the
application's. Codes come from token ids, never from parsed text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from llamagate.domain.audio_codecs import SHAPES, AudioCodec, CodecCodes, CodecShape
from llamagate.domain.chat import FinishReason, ResolvedSampling, Sampling, Timings, Usage
from llamagate.domain.errors import InvalidArgument, NotSpeechModel
from llamagate.domain.generation import resolve_sampling
from llamagate.domain.request_checks import check_sampling

MAX_TEXT_CHARS = 2000  # a paragraph: longer text is split by the caller, sentence by sentence
MAX_VOICE_CHARS = 64
_VOICE = re.compile(r"[A-Za-z0-9_.-]+")
# Special-token markup in the text would be parsed as the codec's control
# tokens (llama-server parses specials in a prompt) and derail the prompt.
_MARKUP = re.compile(r"<\|[^<>|]{1,64}\|>|<custom_token_\d+>|</?s>")


@dataclass(frozen=True)
class CodecProbe:
    """One codec's test: ``ids`` must each detokenize to text starting with
    ``prefix``; ``markers`` must each be one token."""

    codec: AudioCodec
    ids: tuple[int, ...] = ()
    prefix: str = ""
    markers: tuple[str, ...] = ()

    def applies(self, vocab_size: int | None) -> bool:
        """Whether asking makes sense: ids past the vocabulary's end are no token."""
        return vocab_size is None or all(0 <= i < vocab_size for i in self.ids)

    def matches(self, detokenized: Sequence[str], counts: Sequence[int]) -> bool:
        """``detokenized``: the text of each of ``ids``; ``counts``: the tokens each of ``markers`` took."""
        return (all(text.startswith(self.prefix) for text in detokenized) and len(detokenized) == len(self.ids)
                and len(counts) == len(self.markers) and all(count == 1 for count in counts))


# The reference's order: the first that matches names the codec.
CODEC_PROBES: tuple[CodecProbe, ...] = (
    CodecProbe(AudioCodec.SNAC, ids=(128258, 128259), prefix="<custom_token_"),
    CodecProbe(AudioCodec.CSM, markers=("<|AUDIO|>", "<|audio_eos|>")),
    CodecProbe(AudioCodec.WHISPER, markers=("<|startoftranscript|>",)),
    CodecProbe(AudioCodec.BICODEC, markers=("<|bicodec_semantic_0|>", "<|bicodec_global_0|>")),
    CodecProbe(AudioCodec.DAC, markers=("<|c1_0|>", "<|c2_0|>")),
)

# What a model of each codec is, in words (ModelInfo, errors).
_ROLE = {
    AudioCodec.NONE: "a text model: it emits no audio codec",
    AudioCodec.CSM: ("a CSM speech model: its audio codes come from a depth decoder that does not run in "
                     "llama-server, so llamagate cannot synthesize with it"),
    AudioCodec.WHISPER: "an audio-input (speech recognition) model: it takes audio and writes text, it does not speak",
    AudioCodec.BICODEC: "a BiCodec (Spark-TTS) speech model",
    AudioCodec.SNAC: "a SNAC (Orpheus) speech model, 24 kHz",
    AudioCodec.DAC: "a DAC (OuteTTS 1.0) speech model, 24 kHz",
}


def describe(codec: AudioCodec) -> str:
    return _ROLE[codec]


def speaks(codec: AudioCodec) -> bool:
    """Whether the codec's models emit speech llamagate can decode."""
    return codec in SHAPES


def require_speech(codec: AudioCodec, model: str) -> CodecShape:
    """The codec's shape, or NotSpeechModel saying what the model is instead."""
    shape = SHAPES.get(codec)
    if shape is None:
        raise NotSpeechModel(f"model {model} is {describe(codec)}; Synthesize needs a SNAC or DAC speech model")
    return shape


# --- the prompt ------------------------------------------------------------


@dataclass(frozen=True)
class SpeechPrompt:
    text: str
    stop: tuple[str, ...]


def speech_prompt(codec: AudioCodec, text: str, voice: str = "") -> SpeechPrompt:
    """The completion prompt the codec's models were trained on (SPEC §16);
    ``voice`` prefixes the text the way Orpheus names its speakers."""
    if codec is AudioCodec.SNAC:
        spoken = f"{voice}: {text}" if voice else text
        return SpeechPrompt(f"<custom_token_3>{spoken}<|eot_id|><custom_token_4>", ("<custom_token_2>",))
    if codec is AudioCodec.BICODEC:
        return SpeechPrompt(f"<|task_tts|><|start_content|>{text}<|end_content|><|start_global_token|>",
                            ("<|im_end|>", "</s>"))
    if codec is AudioCodec.DAC:
        return SpeechPrompt(f"<|im_start|>\n<|text_start|>{text}<|text_end|>\n<|audio_start|>"
                            "<|global_features_start|>\n", ("<|im_end|>", "<|audio_end|>"))
    raise NotSpeechModel(f"{describe(codec)}: no speech prompt")


# --- the request -----------------------------------------------------------

# Tokens a synthesis may take unless the request says: about 30 s of audio
# (Orpheus: 7 tokens per 85 ms; OuteTTS: ~150 tokens a second with its word markup).
DEFAULT_MAX_TOKENS = {AudioCodec.SNAC: 2500, AudioCodec.DAC: 4500}


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    voice: str = ""
    sampling: Sampling = field(default_factory=Sampling)  # max_tokens: the codec's default when unset
    grammar: str = ""  # GBNF over the codec's tokens (llama.cpp token references), constraining what is emitted


def check_speech(request: SpeechRequest, codec: AudioCodec, slot_context: int = 0) -> None:
    """Raise InvalidArgument naming the first bad field."""
    check_sampling(request.sampling, slot_context)
    text = request.text
    if not text.strip():
        raise InvalidArgument("is empty: send the text to speak", field="text")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidArgument(f"has {len(text)} characters; at most {MAX_TEXT_CHARS} are spoken at once: "
                              "split it into sentences and send each", field="text")
    markup = _MARKUP.search(text)
    if markup is not None:
        raise InvalidArgument(f"contains special-token markup {markup.group(0)!r}, which would be read as "
                              "the model's control tokens", field="text")
    if request.voice:
        if codec is not AudioCodec.SNAC:
            raise InvalidArgument(f"{describe(codec)} takes no voice name", field="voice")
        if len(request.voice) > MAX_VOICE_CHARS or not _VOICE.fullmatch(request.voice):
            raise InvalidArgument(f"must be a name of letters, digits, '_', '.' or '-', at most "
                                  f"{MAX_VOICE_CHARS} characters", field="voice")


# The samplers each codec's authors recommend (Orpheus' and OuteTTS 1.0's
# model cards); a request's own values win.
_SPEECH_SAMPLING = {
    AudioCodec.SNAC: ResolvedSampling(temperature=0.6, top_p=0.95, top_k=0, min_p=0.0, repetition_penalty=1.1,
                                      presence_penalty=0.0, repeat_last_n=64),
    AudioCodec.DAC: ResolvedSampling(temperature=0.4, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.1,
                                     presence_penalty=0.0, repeat_last_n=64),
}


@dataclass(frozen=True)
class TokenCall:
    """One raw completion as the engine is asked for it; its tokens come back as ids."""

    prompt: str  # special-token markup in it is read as those tokens
    sampling: ResolvedSampling
    max_tokens: int
    stop: tuple[str, ...] = ()
    grammar: str = ""


@dataclass(frozen=True)
class TokenChunk:
    tokens: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    timings: Timings | None = None


def speech_call(request: SpeechRequest, codec: AudioCodec, slot_context: int = 0) -> TokenCall:
    """The completion that makes the model speak ``request`` (checked by ``check_speech``)."""
    prompt = speech_prompt(codec, request.text, request.voice)
    asked = request.sampling.max_tokens
    limit = asked if asked is not None else DEFAULT_MAX_TOKENS[codec]
    if slot_context:
        limit = min(limit, slot_context)
    return TokenCall(prompt.text, resolve_sampling(request.sampling, _SPEECH_SAMPLING[codec]), limit,
                     prompt.stop + request.sampling.stop, request.grammar)


# --- tokens to codes -------------------------------------------------------


def vocabulary_markers(shape: CodecShape) -> tuple[str, ...]:
    """The first and last code token of each slot of a frame, in slot order:
    their ids locate each slot's contiguous run of code tokens."""
    markers: list[str] = []
    for slot in range(len(shape.slot_levels)):
        markers += [_code_token(shape, slot, 0), _code_token(shape, slot, shape.codebook_size - 1)]
    return tuple(markers)


def _code_token(shape: CodecShape, slot: int, code: int) -> str:
    if shape.codec is AudioCodec.SNAC:  # Orpheus: custom_token_10 on, 4096 per position
        return f"<custom_token_{10 + slot * shape.codebook_size + code}>"
    return f"<|c{slot + 1}_{code}|>"  # OuteTTS: <|c1_N|>, <|c2_N|>


@dataclass(frozen=True)
class CodecVocabulary:
    """Where each slot's code tokens start: code ``c`` of slot ``s`` is token ``starts[s] + c``."""

    shape: CodecShape
    starts: tuple[int, ...]

    def slot_code(self, token: int) -> tuple[int, int] | None:
        """(slot, code) of a code token; None for any other token."""
        size = self.shape.codebook_size
        for slot, start in enumerate(self.starts):
            if start <= token < start + size:
                return slot, token - start
        return None


def vocabulary_from(shape: CodecShape, ids: Sequence[int], model: str) -> CodecVocabulary:
    """The vocabulary from what ``vocabulary_markers`` tokenized to; raises
    NotSpeechModel when a marker is not one token or a slot's run is not contiguous."""
    markers = vocabulary_markers(shape)
    if len(ids) != len(markers):
        raise NotSpeechModel(f"model {model}: its code tokens ({markers[0]} …) are not single tokens of its vocabulary")
    starts = tuple(ids[2 * slot] for slot in range(len(shape.slot_levels)))
    for slot, start in enumerate(starts):
        if ids[2 * slot + 1] - start != shape.codebook_size - 1:
            raise NotSpeechModel(f"model {model}: the tokens {markers[2 * slot]} … {markers[2 * slot + 1]} are "
                                 "not one contiguous run of its vocabulary")
    return CodecVocabulary(shape, starts)


class FrameAssembler:
    """Collects a stream's code tokens into whole frames.

    Tokens that are no code (OuteTTS' word and feature markup, stop tokens)
    pass unseen. A code token out of its frame's order (a malformed
    sequence) drops the partial frame; a slot-0 token starts a new one.
    """

    def __init__(self, vocabulary: CodecVocabulary) -> None:
        self._vocabulary = vocabulary
        self._shape = vocabulary.shape
        self._levels: list[list[int]] = [[] for _ in self._shape.per_frame]
        self._partial: list[int] = []
        self.frames = 0
        self.dropped = 0  # code tokens thrown away as out of order

    def feed(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            found = self._vocabulary.slot_code(token)
            if found is not None:
                self._take(*found)

    def _take(self, slot: int, code: int) -> None:
        if slot != len(self._partial):
            self.dropped += len(self._partial) + (slot != 0)
            self._partial = []
            if slot != 0:
                return
        self._partial.append(code)
        if len(self._partial) == len(self._shape.slot_levels):
            for level, frame_code in zip(self._shape.slot_levels, self._partial):
                self._levels[level].append(frame_code)
            self._partial = []
            self.frames += 1

    def codes(self, start: int, stop: int) -> CodecCodes:
        """The codes of frames [start, stop), by level."""
        return tuple(tuple(level[start * n:stop * n]) for level, n in zip(self._levels, self._shape.per_frame))

    def finish(self) -> None:
        """The stream ended: a partial frame is dropped."""
        self.dropped += len(self._partial)
        self._partial = []


# --- streaming decode -------------------------------------------------------


@dataclass(frozen=True)
class DecodeWindow:
    """Decode frames [start, stop); of what that gives, send frames [keep_start, keep_stop)."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int

    def kept_bytes(self, shape: CodecShape, sample_bytes: int) -> slice:
        """Where the kept frames' samples lie in the window's decoded bytes."""
        per_frame = shape.frame_samples * sample_bytes
        return slice((self.keep_start - self.start) * per_frame, (self.keep_stop - self.start) * per_frame)


FIRST_CHUNK_S = 0.15  # audio in the first chunk: the time to first sound stays short
LARGEST_CHUNK_S = 1.5  # later chunks grow to this: fewer windows, less context decoded twice


def chunk_frames(shape: CodecShape, sent: int) -> int:
    """Frames the next chunk sends, ``sent`` frames having gone: it doubles
    from ``FIRST_CHUNK_S`` of audio up to ``LARGEST_CHUNK_S``, and is never
    smaller than what went before (so context is a shrinking share of the work)."""
    frame_s = shape.frame_samples / shape.sample_rate
    first = max(1, round(FIRST_CHUNK_S / frame_s))
    largest = max(first, round(LARGEST_CHUNK_S / frame_s))
    return min(largest, max(first, sent))


def next_window(shape: CodecShape, available: int, sent: int, *, finished: bool) -> DecodeWindow | None:
    """The next window to decode, ``available`` frames having come and
    ``sent`` gone out; None until enough frames came (a chunk and the
    context after it), or once all went out. Each window holds up to
    ``context_frames`` of context on each side of what it sends, so the
    joined chunks equal a one-shot decode of the whole."""
    if sent >= available:
        return None
    context = shape.context_frames
    size = chunk_frames(shape, sent)
    if finished:
        size = available - sent
    elif available < sent + size + context:
        return None
    keep_stop = sent + size
    return DecodeWindow(max(0, sent - context), min(available, keep_stop + context), sent, keep_stop)


# --- what a synthesis reports ------------------------------------------------


@dataclass(frozen=True)
class AudioChunk:
    """Samples, float32 little-endian mono; ``first_sample``: where they start in the whole."""

    samples: bytes
    first_sample: int
    sample_rate: int


@dataclass(frozen=True)
class SpeechDone:
    finish_reason: FinishReason
    prompt_tokens: int
    generated_tokens: int
    frames: int
    samples: int
    sample_rate: int
    dropped_tokens: int  # code tokens out of order, thrown away
    first_audio_s: float  # from the request to the first chunk
    generate_s: float  # the engine's time generating tokens
    decode_s: float  # the decoder's time

    @property
    def audio_s(self) -> float:
        return self.samples / self.sample_rate if self.sample_rate else 0.0


SpeechEvent = AudioChunk | SpeechDone


# --- where decoders come from ---------------------------------------------

_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class DecoderSource:
    """A codec decoder's ONNX file: a local ``path``, or ``file`` of the Hub
    repo ``repo`` as the Hub cache holds it (never fetched while serving)."""

    path: str = ""
    repo: str = ""
    file: str = ""

    def __str__(self) -> str:
        return self.path or f"{self.repo}:{self.file}"


def decoder_source(text: str) -> DecoderSource:
    """``OWNER/REPO:FILE`` (a file in the Hub cache) or a local path."""
    repo, colon, file = text.partition(":")
    if colon and file and _REPO.fullmatch(repo):
        return DecoderSource(repo=repo, file=file)
    if not text.strip():
        raise InvalidArgument("is empty: give a path to an ONNX file or OWNER/REPO:FILE", field="decoder")
    return DecoderSource(path=text)


# The published ONNX export of the SNAC 24 kHz decoder (transformers.js'
# layout). OuteTTS 1.0's codec, ibm-research/DAC.speech.v1.0, has no
# published decoder export: the operator names one (docs/tts.md).
DEFAULT_DECODERS: dict[AudioCodec, DecoderSource] = {
    AudioCodec.SNAC: DecoderSource(repo="onnx-community/snac_24khz-ONNX", file="onnx/decoder_model.onnx"),
}
