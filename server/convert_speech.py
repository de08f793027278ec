"""Synthesize's messages ↔ the domain's speech types, and the audio's encoding
(PCM 16-bit, float32, or WAV framing: the wire's, not the domain's)."""

from __future__ import annotations

import struct
import sys
from array import array

from llamagate.domain.errors import InvalidArgument
from llamagate.domain.speech import AudioChunk, SpeechDone, SpeechRequest
from llamagate.server.convert_chat import FINISH_TO_PB, sampling
from llamagate.v1 import llamagate_pb2 as pb

_ENCODINGS = (pb.AUDIO_ENCODING_PCM_S16LE, pb.AUDIO_ENCODING_PCM_F32LE, pb.AUDIO_ENCODING_WAV)
_WAV_HEADER_BYTES = 44
_STREAMING_SIZE = 0xFFFFFFFF  # "unknown": what streaming writers put in a RIFF header


def speech_request(request: pb.SynthesizeRequest) -> SpeechRequest:
    return SpeechRequest(text=request.text, voice=request.voice, sampling=sampling(request.sampling),
                         grammar=request.grammar)


class AudioEncoder:
    """One stream's chunks in the encoding the client asked for."""

    def __init__(self, encoding: int) -> None:
        if encoding and encoding not in _ENCODINGS:
            raise InvalidArgument(f"unknown audio encoding {encoding}", field="encoding")
        self._encoding = encoding or pb.AUDIO_ENCODING_PCM_S16LE
        self._started = False

    def chunk(self, chunk: AudioChunk) -> pb.AudioChunk:
        samples = len(chunk.samples) // 4
        if self._encoding == pb.AUDIO_ENCODING_PCM_F32LE:
            data = chunk.samples
        else:
            data = pcm16(chunk.samples)
            if self._encoding == pb.AUDIO_ENCODING_WAV and not self._started:
                data = wav_header(chunk.sample_rate, None) + data
        self._started = True
        return pb.AudioChunk(data=data, sample_rate=chunk.sample_rate, channels=1, first_sample=chunk.first_sample,
                             samples=samples, encoding=pb.AudioEncoding.Name(self._encoding))

    def done(self, done: SpeechDone) -> pb.SynthesisDone:
        header = wav_header(done.sample_rate, done.samples) if self._encoding == pb.AUDIO_ENCODING_WAV else b""
        return pb.SynthesisDone(
            finish_reason=FINISH_TO_PB[done.finish_reason], prompt_tokens=done.prompt_tokens,
            generated_tokens=done.generated_tokens, frames=done.frames, samples=done.samples,
            sample_rate=done.sample_rate, audio_seconds=done.audio_s, dropped_tokens=done.dropped_tokens,
            first_audio_seconds=done.first_audio_s, generate_seconds=done.generate_s,
            decode_seconds=done.decode_s, wav_header=header)


def pcm16(samples_f32: bytes) -> bytes:
    """float32 LE samples → signed 16-bit LE, clipped to [-1, 1]."""
    floats = array("f")
    floats.frombytes(samples_f32)
    if sys.byteorder != "little":
        floats.byteswap()
    ints = array("h", (int(max(-1.0, min(1.0, x)) * 32767.0) for x in floats))
    if sys.byteorder != "little":
        ints.byteswap()
    return ints.tobytes()


def wav_header(sample_rate: int, samples: int | None) -> bytes:
    """A 44-byte RIFF/WAVE header for mono 16-bit PCM; ``samples`` None:
    unknown yet (a stream), sizes 0xFFFFFFFF as streaming writers do."""
    data = _STREAMING_SIZE if samples is None else samples * 2
    riff = _STREAMING_SIZE if samples is None else data + _WAV_HEADER_BYTES - 8
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", riff, b"WAVE", b"fmt ", 16, 1, 1, sample_rate,
                       sample_rate * 2, 2, 16, b"data", data)
