"""Speech from a loaded model (SPEC §16): which codec it emits, and the
stream that turns its codec tokens into audio as they come.

The engine generates the tokens; the decoder (a ``CodecDecoder``, loaded on
the first synthesis and kept while the model is) turns whole frames into
samples in a worker thread, window by window (``domain.speech.next_window``),
so audio flows while the model still speaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass

from llamagate.domain.audio_codecs import SHAPES, AudioCodec, CodecShape
from llamagate.domain.chat import FinishReason, Timings, Usage
from llamagate.domain.errors import DecoderUnavailable, EngineRejected
from llamagate.domain.ports import CodecDecoder, DecoderLoader, Tokenizer
from llamagate.domain.speech import (
    CODEC_PROBES,
    AudioChunk,
    CodecVocabulary,
    DecoderSource,
    DecodeWindow,
    FrameAssembler,
    SpeechDone,
    SpeechEvent,
    TokenChunk,
    next_window,
    vocabulary_from,
    vocabulary_markers,
)

log = logging.getLogger(__name__)

_SAMPLE_BYTES = 4  # float32


async def detect_codec(tokenizer: Tokenizer, vocab_size: int | None) -> AudioCodec:
    """The codec the model emits, by the reference's probes in its order."""
    for probe in CODEC_PROBES:
        if not probe.applies(vocab_size):
            continue
        try:
            texts = [await tokenizer.detokenize([token]) for token in probe.ids]
            counts = [len(await tokenizer.tokenize(marker)) for marker in probe.markers]
        except EngineRejected:  # an id this vocabulary lacks: not this codec
            continue
        if probe.matches(texts, counts):
            return probe.codec
    return AudioCodec.NONE


class Speaker:
    """What a loaded speech model needs to speak: its codec's shape, where its
    code tokens lie, and the decoder, opened once on first use and closed
    with the model."""

    def __init__(self, shape: CodecShape, vocabulary: CodecVocabulary, loader: DecoderLoader | None,
                 source: DecoderSource | None) -> None:
        self.shape = shape
        self.vocabulary = vocabulary
        self._loader = loader
        self._source = source
        self._decoder: CodecDecoder | None = None
        self._opening: asyncio.Lock = asyncio.Lock()

    async def decoder(self) -> CodecDecoder:
        """Raises DecoderUnavailable naming what to fetch or install."""
        async with self._opening:  # one load, however many syntheses ask at once
            if self._decoder is None:
                if self._loader is None or self._source is None:
                    raise DecoderUnavailable(
                        f"no decoder is configured for the {self.shape.codec.value} codec: set "
                        f"LLAMAGATE_{self.shape.codec.name}_DECODER to an ONNX file or OWNER/REPO:FILE (docs/tts.md)")
                self._decoder = await asyncio.to_thread(self._loader.open, self.shape, self._source)
        return self._decoder

    def close(self) -> None:
        decoder, self._decoder = self._decoder, None
        if decoder is not None:
            decoder.close()


async def speaker_for(tokenizer: Tokenizer, codec: AudioCodec, model: str, loader: DecoderLoader | None,
                      sources: Mapping[AudioCodec, DecoderSource]) -> Speaker | None:
    """A Speaker for a model that emits a codec llamagate decodes; None otherwise."""
    shape = SHAPES.get(codec)
    if shape is None:
        return None
    ids = await tokenizer.tokenize("".join(vocabulary_markers(shape)))
    return Speaker(shape, vocabulary_from(shape, ids, model), loader, sources.get(codec))


@dataclass
class _Tally:
    finish: FinishReason = FinishReason.STOP
    usage: Usage | None = None
    timings: Timings | None = None
    tokens: int = 0
    decode_s: float = 0.0
    first_audio_s: float = 0.0

    def saw(self, chunk: TokenChunk) -> None:
        self.tokens += len(chunk.tokens)
        self.finish = chunk.finish_reason or self.finish
        self.usage = chunk.usage or self.usage
        self.timings = chunk.timings or self.timings


async def speak(tokens: AsyncGenerator[TokenChunk, None], speaker: Speaker, decoder: CodecDecoder,
                clock: Callable[[], float]) -> AsyncGenerator[SpeechEvent, None]:
    """Audio chunks as the model's codec frames come, then SpeechDone.
    ``clock()``: seconds since the request came. Closed early (a cancel), it
    closes ``tokens`` at once, which frees the engine's slot."""
    shape, assembler, tally = speaker.shape, FrameAssembler(speaker.vocabulary), _Tally()
    sent = 0
    async with contextlib.aclosing(tokens):
        async for chunk in tokens:
            tally.saw(chunk)
            assembler.feed(chunk.tokens)
            while (window := next_window(shape, assembler.frames, sent, finished=False)) is not None:
                yield await _decoded(window, assembler, decoder, shape, tally, clock)
                sent = window.keep_stop
    assembler.finish()
    while (window := next_window(shape, assembler.frames, sent, finished=True)) is not None:
        yield await _decoded(window, assembler, decoder, shape, tally, clock)
        sent = window.keep_stop
    yield _done(tally, assembler, shape)


async def _decoded(window: DecodeWindow, assembler: FrameAssembler, decoder: CodecDecoder, shape: CodecShape, tally: _Tally,
                   clock: Callable[[], float]) -> AudioChunk:
    started = clock()
    samples = await asyncio.to_thread(decoder.decode, assembler.codes(window.start, window.stop))
    tally.decode_s += clock() - started
    if not tally.first_audio_s:
        tally.first_audio_s = clock()
    return AudioChunk(samples[window.kept_bytes(shape, _SAMPLE_BYTES)], window.keep_start * shape.frame_samples,
                      shape.sample_rate)


def _done(tally: _Tally, assembler: FrameAssembler, shape: CodecShape) -> SpeechDone:
    usage, timings = tally.usage or Usage(), tally.timings or Timings()
    if assembler.dropped:
        log.info("speech: %d code tokens out of order were dropped", assembler.dropped)
    return SpeechDone(
        finish_reason=tally.finish,
        prompt_tokens=usage.prompt_tokens or timings.prompt_n,
        generated_tokens=usage.completion_tokens or timings.predicted_n or tally.tokens,
        frames=assembler.frames,
        samples=assembler.frames * shape.frame_samples,
        sample_rate=shape.sample_rate,
        dropped_tokens=assembler.dropped,
        first_audio_s=tally.first_audio_s,
        generate_s=timings.predicted_ms / 1000,
        decode_s=tally.decode_s,
    )
