"""Synthesize end to end: a real gRPC channel, the real llama-server running
tiny speech models (tests/tts_models.py), and SNAC and DAC decoders with
random weights and the real architectures under onnxruntime
(tests/codec_graphs.py). llama-server's ``grammar`` (token references)
makes the model emit an exact codec token sequence, so the audio can be
checked against a one-shot decode of the same codes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import wave
from array import array

import grpc
import numpy as np
import pytest
from codec_graphs import write_decoder
from conftest import RunningService
from e2e import engine, error_details, wait_until
from tts_models import llama_server_binary, speech_models  # noqa: F401 (fixtures)

from llamagate.adapters.onnx_codec import OnnxCodecDecoder
from llamagate.domain.audio_codecs import DAC_24KHZ, SNAC_24KHZ, AudioCodec, CodecShape
from llamagate.domain.speech import CodecVocabulary, FrameAssembler
from llamagate.server.settings import Settings
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc

pytestmark = pytest.mark.engine

# Where the tiny models' code tokens lie (tests/tts_models.py): Orpheus' custom tokens, OuteTTS' c1/c2 runs.
SNAC_VOCAB = CodecVocabulary(SNAC_24KHZ, tuple(128266 + slot * 4096 for slot in range(7)))
DAC_VOCAB = CodecVocabulary(DAC_24KHZ, (276, 1300))
DAC_AUDIO_END = 273


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decoders")
    return {AudioCodec.SNAC: write_decoder(AudioCodec.SNAC, folder), AudioCodec.DAC: write_decoder(AudioCodec.DAC, folder)}


def _service(**env: str) -> RunningService:
    return RunningService(Settings.from_env({**os.environ, **env}))


@pytest.fixture(scope="module")
def service(decoders, llama_cpp_tree, speech_models):  # noqa: F811
    running = _service(LLAMAGATE_SNAC_DECODER=str(decoders[AudioCodec.SNAC]),
                       LLAMAGATE_DAC_DECODER=str(decoders[AudioCodec.DAC]))
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.LlamaGateServiceStub(channel)
        for codec in ("snac", "dac", "csm", "whisper"):
            load_as(stub, speech_models(codec), codec)
    yield running
    running.close()


@pytest.fixture(scope="module")
def stub(service):
    with grpc.insecure_channel(service.address) as channel:
        yield pb_grpc.LlamaGateServiceStub(channel)


def load_as(stub, path, name: str) -> pb.ModelInfo:
    request = pb.LoadModelRequest(path=str(path), model=name, options=pb.LoadOptions(context_length=2048))
    return list(stub.LoadModel(request, timeout=300))[-1].model


def frames_of(shape: CodecShape, count: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(c) for c in rng.integers(0, shape.codebook_size, len(shape.slot_levels))] for _ in range(count)]


def exact(tokens: list[int], tail: str = "") -> str:
    """A grammar that lets the model emit exactly these tokens (then an end token)."""
    return "root ::= " + " ".join(f"<[{t}]>" for t in tokens) + tail


def tokens_of(vocabulary: CodecVocabulary, frames: list[list[int]]) -> list[int]:
    return [vocabulary.starts[slot] + code for frame in frames for slot, code in enumerate(frame)]


def one_shot(path, vocabulary: CodecVocabulary, frames: list[list[int]]) -> np.ndarray:
    assembler = FrameAssembler(vocabulary)
    assembler.feed(tokens_of(vocabulary, frames))
    decoder = OnnxCodecDecoder(str(path), vocabulary.shape)
    try:
        return np.frombuffer(decoder.decode(assembler.codes(0, len(frames))), dtype="<f4")
    finally:
        decoder.close()


def synthesize(stub, model: str, grammar: str, encoding=pb.AUDIO_ENCODING_PCM_F32LE, **fields):
    request = pb.SynthesizeRequest(model=model, text="Hello there.", grammar=grammar, encoding=encoding,
                                   sampling=pb.Sampling(max_tokens=1500), **fields)
    events = list(stub.Synthesize(request, timeout=300))
    assert all(e.WhichOneof("event") == "audio" for e in events[:-1]) and events[-1].WhichOneof("event") == "done"
    return [e.audio for e in events[:-1]], events[-1].done


def test_speech_models_are_told_apart_by_their_vocabulary(stub, smollm2_path):
    codecs = {m.info.id: m.info.audio_codec for m in stub.ListModels(pb.ListModelsRequest()).models}
    assert codecs == {"snac": pb.AUDIO_CODEC_SNAC, "dac": pb.AUDIO_CODEC_DAC, "csm": pb.AUDIO_CODEC_CSM,
                      "whisper": pb.AUDIO_CODEC_WHISPER}
    assert "audio-input" in stub.GetStatus(pb.GetStatusRequest(model="whisper")).model.audio
    text = load_as(stub, smollm2_path, "text")
    assert text.audio_codec == pb.AUDIO_CODEC_NONE and "text model" in text.audio
    try:
        for model, says in (("text", "a text model"), ("whisper", "audio-input"), ("csm", "depth decoder")):
            with pytest.raises(grpc.RpcError) as caught:
                synthesize(stub, model, "")
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and says in caught.value.details()
            assert error_details(caught.value)["ErrorInfo"].reason == "NOT_A_SPEECH_MODEL"
    finally:
        stub.UnloadModel(pb.UnloadModelRequest(model="text"))


def test_orpheus_tokens_stream_as_snac_audio_equal_to_a_one_shot_decode(stub, decoders):
    frames = frames_of(SNAC_24KHZ, 14, seed=1)
    chunks, done = synthesize(stub, "snac", exact(tokens_of(SNAC_VOCAB, frames)), voice="tara")

    assert len(chunks) >= 2  # audio came while the model still spoke
    assert [c.first_sample for c in chunks] == list(np.cumsum([0] + [c.samples for c in chunks[:-1]]))
    assert {(c.sample_rate, c.channels, c.encoding) for c in chunks} == {(24_000, 1, pb.AUDIO_ENCODING_PCM_F32LE)}
    samples = np.frombuffer(b"".join(c.data for c in chunks), dtype="<f4")
    assert len(samples) == done.samples == 14 * 2048 == len(frames) * 4 * SNAC_24KHZ.hop_length  # codes x hop
    assert (done.frames, done.sample_rate, done.dropped_tokens) == (14, 24_000, 0)
    assert done.generated_tokens >= 14 * 7 and done.audio_seconds == pytest.approx(14 * 2048 / 24_000)
    assert np.all(np.abs(samples) <= 1.0) and np.std(samples) > 0
    # Every window held the decoder's receptive field on both sides: equal everywhere, boundaries too.
    np.testing.assert_allclose(samples, one_shot(decoders[AudioCodec.SNAC], SNAC_VOCAB, frames), atol=1e-4)


def test_outetts_tokens_stream_as_dac_audio_and_end_at_audio_end(stub, decoders):
    frames = frames_of(DAC_24KHZ, 40, seed=2)
    grammar = exact(tokens_of(DAC_VOCAB, frames), f" <[{DAC_AUDIO_END}]>")
    chunks, done = synthesize(stub, "dac", grammar)

    samples = np.frombuffer(b"".join(c.data for c in chunks), dtype="<f4")
    assert len(samples) == done.samples == 40 * 320 and done.frames == 40
    assert done.finish_reason == pb.FINISH_REASON_STOP  # the <|audio_end|> stop, before the length
    assert {c.sample_rate for c in chunks} == {24_000} and np.all(np.abs(samples) <= 1.0) and np.std(samples) > 0
    np.testing.assert_allclose(samples, one_shot(decoders[AudioCodec.DAC], DAC_VOCAB, frames), atol=1e-4)


def test_wav_framing_parses_with_the_standard_library_once_its_header_is_final(stub):
    frames = frames_of(SNAC_24KHZ, 6, seed=3)
    chunks, done = synthesize(stub, "snac", exact(tokens_of(SNAC_VOCAB, frames)), encoding=pb.AUDIO_ENCODING_WAV)
    data = bytearray(b"".join(c.data for c in chunks))
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and len(done.wav_header) == 44
    data[:44] = done.wav_header  # what `llamagate say` does to a file once the stream ended
    with wave.open(io.BytesIO(bytes(data))) as audio:
        assert (audio.getnchannels(), audio.getsampwidth(), audio.getframerate()) == (1, 2, 24_000)
        assert audio.getnframes() == 6 * 2048 == done.samples
        pcm = array("h", audio.readframes(audio.getnframes()))
    assert len(pcm) == 6 * 2048 and max(abs(v) for v in pcm) > 0


def test_bad_requests_are_invalid_arguments_naming_the_field(stub):
    for fields, field in (({"text": "x" * 2001}, "text"), ({"text": "hi <|eot_id|>"}, "text"),
                          ({"voice": "tara"}, "voice")):
        request = pb.SynthesizeRequest(model="snac" if field != "voice" else "dac", **{"text": "hi", **fields})
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Synthesize(request, timeout=60))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        violation = error_details(caught.value)["BadRequest"].field_violations[0]
        assert violation.field == field


def test_cancelling_a_synthesis_frees_llama_servers_slot(stub):
    info = stub.GetStatus(pb.GetStatusRequest(model="snac")).model
    frames = frames_of(SNAC_24KHZ, 200, seed=4)  # 1,400 tokens: tens of seconds if not cancelled
    request = pb.SynthesizeRequest(model="snac", text="A long story.", grammar=exact(tokens_of(SNAC_VOCAB, frames)),
                                   sampling=pb.Sampling(max_tokens=1500))
    call = stub.Synthesize(request, timeout=300)
    assert next(call).WhichOneof("event") == "audio"
    child = engine(info.pid)
    assert any(s["is_processing"] for s in child.get("/slots").json())

    call.cancel()

    assert wait_until(lambda: not any(s["is_processing"] for s in child.get("/slots").json()))
    decoded = max(s.get("n_decoded", 0) for s in child.get("/slots").json())
    assert decoded < 1400  # it stopped early, not at the end of the sequence
    assert stub.ListModels(pb.ListModelsRequest()).models[0].in_flight == 0


def test_a_missing_decoder_is_a_failed_precondition_naming_what_to_fetch(speech_models, llama_cpp_tree):  # noqa: F811
    service = _service(LLAMAGATE_SNAC_DECODER="/nonexistent/snac_decoder.onnx", LLAMAGATE_DAC_DECODER="")
    try:
        with grpc.insecure_channel(service.address) as channel:
            stub = pb_grpc.LlamaGateServiceStub(channel)
            load_as(stub, speech_models("snac"), "snac")
            load_as(stub, speech_models("dac"), "dac")
            for model, says in (("snac", "/nonexistent/snac_decoder.onnx"), ("dac", "LLAMAGATE_DAC_DECODER")):
                with pytest.raises(grpc.RpcError) as caught:
                    list(stub.Synthesize(pb.SynthesizeRequest(model=model, text="hi"), timeout=60))
                assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert says in caught.value.details()
                assert error_details(caught.value)["ErrorInfo"].reason == "DECODER_UNAVAILABLE"
    finally:
        service.close()


def llamagate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llamagate.server.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_llamagate_say_writes_a_wav_file_with_exact_sizes_and_leaves_none_on_error(service, tmp_path):
    frames = frames_of(SNAC_24KHZ, 5, seed=5)
    grammar = tmp_path / "orpheus.gbnf"
    grammar.write_text(exact(tokens_of(SNAC_VOCAB, frames)))
    out = tmp_path / "hello.wav"

    said = llamagate("say", "Hello there.", "--model", "snac", "--voice", "tara", "--grammar", str(grammar),
                     "--out", str(out), "--address", service.address)

    assert said.returncode == 0, said.stderr
    assert said.stdout.strip() == str(out) and "s of audio at 24000 Hz" in said.stderr
    with wave.open(str(out)) as audio:
        assert (audio.getnchannels(), audio.getsampwidth(), audio.getframerate()) == (1, 2, 24_000)
        assert audio.getnframes() == 5 * 2048
        assert len(audio.readframes(audio.getnframes())) == 5 * 2048 * 2

    refused = llamagate("say", "Hello.", "--model", "csm", "--out", str(tmp_path / "csm.wav"),
                        "--address", service.address)
    assert refused.returncode == 1 and "FAILED_PRECONDITION" in refused.stderr
    assert not (tmp_path / "csm.wav").exists()
