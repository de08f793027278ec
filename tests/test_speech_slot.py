"""Synthesis through a model slot, against fakes of every port: codec
detection at load, chunks as frames come, the decoder's life, cancels and
failures. The real llama-server and ONNX decoders: test_speech_e2e.py."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from array import array
from dataclasses import dataclass, field

import pytest
from fakes import (
    FakeDecoderLoader,
    FakeInspector,
    FakeLauncher,
    FakeMemory,
    FakeVocabulary,
    dac_vocabulary,
    model_facts,
    snac_vocabulary,
)
from stories import play
from test_slot import error_of, until

from llamagate.application.slot import ModelSlot, SlotSettings
from llamagate.domain.audio_codecs import DAC_24KHZ, AudioCodec
from llamagate.domain.chat import FinishReason, Timings, Usage
from llamagate.domain.errors import DecoderUnavailable, EngineFailed, NotSpeechModel
from llamagate.domain.load_options import LoadOptions
from llamagate.domain.restart_policy import RestartPolicy
from llamagate.domain.speech import AudioChunk, DecoderSource, SpeechDone, SpeechRequest, TokenChunk

MODEL = "/models/orpheus.gguf"
HELLO = SpeechRequest("Hello there.")


@dataclass
class World:
    launcher: FakeLauncher = field(default_factory=FakeLauncher)
    decoders: FakeDecoderLoader = field(default_factory=FakeDecoderLoader)
    sources: dict = field(default_factory=lambda: {AudioCodec.SNAC: DecoderSource(path="snac.onnx"),
                                                   AudioCodec.DAC: DecoderSource(path="dac.onnx")})

    def __post_init__(self) -> None:
        settings = SlotSettings(restart=RestartPolicy(enabled=False), decoders=self.sources)
        self.slot = ModelSlot(FakeInspector(model_facts(MODEL)), self.launcher, FakeMemory(), settings,
                              decoders=self.decoders)

    async def load(self, vocabulary: FakeVocabulary | None) -> None:
        self.launcher.vocabulary = vocabulary
        [_ async for _ in self.slot.load(MODEL, LoadOptions(context_length=4096))]

    @property
    def chat(self):
        return self.launcher.alive()[-1].chat


def run(story, **parts) -> None:
    play(World(**parts), story, lambda w: w.slot.close())


def snac_frames(frames: list[list[int]]) -> list[int]:
    return [128266 + slot * 4096 + code for frame in frames for slot, code in enumerate(frame)]


def floats(chunks: list[AudioChunk]) -> list[float]:
    values = array("f")
    for chunk in chunks:
        values.frombytes(chunk.samples)
    return list(values)


def test_a_speech_model_is_detected_at_load_and_a_text_model_is_not():
    async def story(w: World) -> None:
        await w.load(snac_vocabulary())
        assert w.slot.status().audio_codec is AudioCodec.SNAC
        await w.load(dac_vocabulary())
        assert w.slot.status().audio_codec is AudioCodec.DAC
        await w.load(None)
        assert w.slot.status().audio_codec is AudioCodec.NONE
        error = await error_of(anext(w.slot.synthesize(HELLO)))
        assert isinstance(error, NotSpeechModel) and "a text model" in str(error)
        assert w.chat.token_calls == []
    run(story)


def test_frames_are_decoded_as_they_come_and_joined_they_are_the_whole():
    frames = [[f % 4096, 1, 2, 3, 4, 5, 6] for f in range(0, 4096, 97)]  # 43 frames, level 0 codes known
    async def story(w: World) -> None:
        await w.load(snac_vocabulary())
        script = [TokenChunk(tuple(snac_frames(frames[i:i + 3]))) for i in range(0, len(frames), 3)]
        w.chat.token_script = [TokenChunk((128009,)), *script, TokenChunk(
            (), FinishReason.STOP, Usage(9, 301, 310), Timings(predicted_n=301, predicted_ms=1500.0))]
        events = [e async for e in w.slot.synthesize(SpeechRequest("Hello", voice="tara"))]
        chunks, done = events[:-1], events[-1]
        assert isinstance(done, SpeechDone) and all(isinstance(c, AudioChunk) for c in chunks)
        assert len(chunks) > 2  # streamed, not decoded once at the end
        assert [c.first_sample for c in chunks] == [0, *[c.first_sample + len(c.samples) // 4 for c in chunks]][:-1]
        expected = [f[0] / 4096 for f in frames for _ in range(2048)]
        assert floats(chunks) == pytest.approx(expected)
        assert (done.frames, done.samples, done.sample_rate) == (43, 43 * 2048, 24_000)
        assert (done.prompt_tokens, done.generated_tokens, done.generate_s) == (9, 301, 1.5)
        assert w.chat.token_calls[0].prompt == "<custom_token_3>tara: Hello<|eot_id|><custom_token_4>"
        decoder = w.decoders.opened[0]
        # every window holds its context: decoded frames beyond what it sends, but never past what came
        assert sum(len(codes[0]) for codes in decoder.calls) > 43
    run(story)


def test_the_decoder_opens_once_per_model_and_closes_with_it():
    async def story(w: World) -> None:
        await w.load(snac_vocabulary())
        w.chat.token_script = [TokenChunk(tuple(snac_frames([[1] * 7] * 5))), TokenChunk((), FinishReason.STOP)]
        for _ in range(2):
            events = [e async for e in w.slot.synthesize(HELLO)]
            assert isinstance(events[-1], SpeechDone) and events[-1].frames == 5
        assert len(w.decoders.opened) == 1 and not w.decoders.opened[0].closed
        await w.slot.unload()
        assert w.decoders.opened[0].closed
    run(story)


def test_a_missing_decoder_is_said_before_any_token_is_generated():
    async def story(w: World) -> None:
        await w.load(dac_vocabulary())
        error = await error_of(anext(w.slot.synthesize(HELLO)))
        assert isinstance(error, DecoderUnavailable) and "missing" in str(error)
        assert w.chat.token_calls == []
    run(story, sources={AudioCodec.DAC: DecoderSource(path="missing")})


def test_dac_codes_between_markup_tokens_become_frames():
    async def story(w: World) -> None:
        await w.load(dac_vocabulary())
        pairs = [(n, 1023 - n) for n in range(40)]
        tokens = []
        for c1, c2 in pairs:  # OuteTTS puts word and feature tokens between frames
            tokens += [151_000 + c1, 152_024 + c2, 150_500]
        w.chat.token_script = [TokenChunk(tuple(tokens)), TokenChunk((150_001,), FinishReason.STOP)]
        events = [e async for e in w.slot.synthesize(HELLO)]
        done = events[-1]
        assert isinstance(done, SpeechDone) and done.frames == 40 and done.samples == 40 * DAC_24KHZ.frame_samples
        assert floats(events[:-1]) == pytest.approx([c1 / 1024 for c1, _ in pairs for _ in range(320)])
    run(story)


def test_a_cancelled_synthesis_closes_the_engine_stream_even_while_decoding():
    async def story(w: World) -> None:
        await w.load(snac_vocabulary())
        w.chat.token_script = [TokenChunk(tuple(snac_frames([[1] * 7] * 10))) for _ in range(50)]
        hold = threading.Event()
        events = w.slot.synthesize(HELLO)
        reading = asyncio.ensure_future(anext(events))
        await until(lambda: bool(w.decoders.opened) and w.chat.streaming == 1)
        w.decoders.opened[0].hold = hold
        await until(lambda: bool(w.decoders.opened[0].calls))  # a decode is under way in its thread
        try:
            reading.cancel()  # as gRPC cancels the handler: while it waits for the decode's thread
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            await events.aclose()
            assert w.chat.streaming == 0  # the engine's stream is closed: its slot is free
            assert w.slot.in_flight == 0
        finally:
            hold.set()
    run(story)


def test_an_engine_dying_mid_speech_fails_the_stream_with_the_reason():
    async def story(w: World) -> None:
        await w.load(snac_vocabulary())
        w.chat.token_script = [TokenChunk(tuple(snac_frames([[1] * 7]))) for _ in range(5)]  # too few for audio
        w.chat.hold = asyncio.Event()
        chat, events = w.chat, w.slot.synthesize(HELLO)
        pending = asyncio.ensure_future(anext(events))
        await until(lambda: chat.streaming == 1)
        w.launcher.alive()[-1].crash()
        error = await error_of(pending)
        assert isinstance(error, EngineFailed) and "exited unexpectedly" in str(error)
        assert chat.streaming == 0 and w.slot.in_flight == 0
    run(story)
