"""The codec decoders under onnxruntime (adapters/onnx_codec.py), on SNAC and
DAC decoder graphs with random weights and the real architectures
(tests/codec_graphs.py): sample counts, ranges, what the streaming decoder
relies on (a window decoded with ``context_frames`` each side equals the
one-shot decode), and every bad input."""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from codec_graphs import ARCHS, edge_shortfall, output_samples, random_codes, receptive_field, window, write_decoder
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from llamagate.adapters.onnx_codec import OnnxCodecDecoder
from llamagate.domain.audio_codecs import SHAPES, AudioCodec, CodecShape
from llamagate.domain.errors import DecoderUnavailable, Internal

CODECS = [AudioCodec.SNAC, AudioCodec.DAC]
# The one-shot stream each codec's window tests cut from: about a second of
# audio (SNAC 12 frames of 2048 samples, DAC 60 frames of 320), several
# receptive fields long, so windows have interior edges.
STREAM_FRAMES = {AudioCodec.SNAC: 12, AudioCodec.DAC: 60}
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[AudioCodec, Path]:
    """Noise-free graphs: SNAC's NoiseBlocks add fresh random noise to every
    decode, so no two decodes (windowed or not) would agree."""
    directory = tmp_path_factory.mktemp("codec_graphs")
    return {codec: write_decoder(codec, directory) for codec in CODECS}


@pytest.fixture(scope="module")
def decoders(graphs) -> dict[AudioCodec, OnnxCodecDecoder]:
    return {codec: OnnxCodecDecoder(str(path), SHAPES[codec]) for codec, path in graphs.items()}


@pytest.fixture(scope="module")
def streams(decoders) -> dict[AudioCodec, tuple[tuple[tuple[int, ...], ...], np.ndarray]]:
    """Each codec's codes and their one-shot decode."""
    rng = np.random.default_rng(14)
    out = {}
    for codec, decoder in decoders.items():
        codes = random_codes(SHAPES[codec], STREAM_FRAMES[codec], rng)
        out[codec] = codes, samples(decoder.decode(codes))
    return out


def samples(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4")


@pytest.mark.parametrize("codec", CODECS)
def test_one_shot_decode_gives_frame_samples_per_frame_within_one(codec, streams):
    shape, arch = SHAPES[codec], ARCHS[codec]
    codes, audio = streams[codec]
    frames = STREAM_FRAMES[codec]
    assert len(audio) == frames * shape.frame_samples == len(codes[-1]) * shape.hop_length
    assert arch.hop == shape.hop_length
    assert np.all(np.abs(audio) <= 1.0)
    assert audio.std() > 0.05 and np.mean(np.abs(audio) > 0.99) < 0.01  # a signal, not silence nor a square wave


@pytest.mark.parametrize("codec", CODECS)
def test_context_frames_are_the_decoders_receptive_field(codec):
    """The domain's numbers against the exact trace through the layers."""
    assert receptive_field(ARCHS[codec], SHAPES[codec]).frames == SHAPES[codec].context_frames


@pytest.mark.parametrize("codec", CODECS)
def test_receptive_field_bounds_what_one_code_changes(codec, decoders, streams):
    """Changing one finest-level code changes samples up to the traced reach
    from its step's samples and none beyond (the trace is neither too short,
    which would break streaming, nor loose by a step)."""
    shape, arch = SHAPES[codec], ARCHS[codec]
    codes, audio = streams[codec]
    step = len(codes[-1]) // 2
    changed = [list(level) for level in codes]
    changed[-1][step] = (changed[-1][step] + 1) % shape.codebook_size
    moved = np.flatnonzero(samples(decoders[codec].decode(tuple(map(tuple, changed)))) != audio)
    reach = receptive_field(arch, shape).samples
    left, right = step * shape.hop_length - moved[0], moved[-1] - ((step + 1) * shape.hop_length - 1)
    assert reach - shape.hop_length < max(left, right) <= reach


@pytest.mark.parametrize("codec", CODECS)
def test_output_lengths_follow_the_architecture(codec):
    arch = ARCHS[codec]
    for steps in (1, 7, 64):
        assert output_samples(arch, steps) == steps * arch.hop - edge_shortfall(arch)
    # descript's DAC lacks output_padding: its stride-5 upsampling loses a step
    assert edge_shortfall(arch) == (8 if codec is AudioCodec.DAC else 0)


@pytest.mark.parametrize("codec", CODECS)
@settings(max_examples=5)
@given(data=st.data())
def test_a_window_with_context_reproduces_the_one_shot_decode(codec, decoders, streams, data):
    shape = SHAPES[codec]
    codes, audio = streams[codec]
    frames = STREAM_FRAMES[codec]
    a = data.draw(st.integers(0, frames - 1), label="first frame")
    b = data.draw(st.integers(a + 1, frames), label="end frame")
    start, stop = max(0, a - shape.context_frames), min(frames, b + shape.context_frames)  # clipped at the ends
    decoded = samples(decoders[codec].decode(window(codes, shape, start, stop)))
    assert len(decoded) == (stop - start) * shape.frame_samples
    kept = decoded[(a - start) * shape.frame_samples:(b - start) * shape.frame_samples]
    np.testing.assert_allclose(kept, audio[a * shape.frame_samples:b * shape.frame_samples], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("codec", CODECS)
def test_a_window_without_context_differs_at_its_edges(codec, decoders, streams):
    """What the context is for: cut bare, a window's edge samples are not the stream's."""
    shape = SHAPES[codec]
    codes, audio = streams[codec]
    a, b = shape.context_frames, STREAM_FRAMES[codec] - shape.context_frames
    decoded = samples(decoders[codec].decode(window(codes, shape, a, b)))
    reference = audio[a * shape.frame_samples:b * shape.frame_samples]
    edge = shape.frame_samples // 2
    assert np.abs(decoded[:edge] - reference[:edge]).max() > 100 * TOLERANCE
    assert np.abs(decoded[-edge:] - reference[-edge:]).max() > 100 * TOLERANCE


def test_decodes_from_several_threads_at_once_agree(decoders):
    decoder, shape = decoders[AudioCodec.SNAC], SHAPES[AudioCodec.SNAC]
    inputs = [random_codes(shape, 2, np.random.default_rng(seed)) for seed in range(4)]
    alone = [decoder.decode(codes) for codes in inputs]
    together: list[bytes] = [b""] * len(inputs)

    def run(i: int) -> None:
        together[i] = decoder.decode(inputs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for one, other in zip(alone, together):
        np.testing.assert_allclose(samples(one), samples(other), rtol=0, atol=TOLERANCE)


def test_no_codes_decode_to_no_samples(decoders):
    assert decoders[AudioCodec.DAC].decode(((), ())) == b""


# -- bad inputs -----------------------------------------------------------

@pytest.mark.parametrize("codec", CODECS)
def test_codes_that_are_not_whole_frames_are_a_bug(codec, decoders):
    shape, decoder = SHAPES[codec], decoders[codec]
    good = random_codes(shape, 2, np.random.default_rng(0))
    with pytest.raises(Internal, match=f"{shape.levels} levels, got {shape.levels - 1}"):
        decoder.decode(good[:-1])
    with pytest.raises(Internal, match="not whole frames"):
        decoder.decode((*good[:-1], good[-1][:-1]))
    for bad_code in (shape.codebook_size, -1):
        with pytest.raises(Internal, match=rf"code {bad_code} at level 0 is outside \[0, {shape.codebook_size}\)"):
            decoder.decode(((bad_code, *good[0][1:]), *good[1:]))


def test_a_file_that_is_no_onnx_graph_is_unavailable(tmp_path):
    path = tmp_path / "decoder_model.onnx"
    path.write_bytes(b"<!doctype html> a Hub error page saved as the model")
    with pytest.raises(DecoderUnavailable, match=f"{path} is not a readable ONNX graph of the snac decoder"):
        OnnxCodecDecoder(str(path), SHAPES[AudioCodec.SNAC])
    with pytest.raises(DecoderUnavailable, match=f"the dac decoder {tmp_path / 'absent.onnx'} does not exist"):
        OnnxCodecDecoder(str(tmp_path / "absent.onnx"), SHAPES[AudioCodec.DAC])


def tiny_graph(path: Path, inputs: list[onnx.ValueInfoProto]) -> str:
    """A graph whose output is its first input as float: decodes fast, to any length but the right one."""
    output = helper.make_tensor_value_info("audio_values", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Cast", [inputs[0].name], ["audio_values"], to=TensorProto.FLOAT)],
                              "tiny", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return str(path)


SNAC_INPUTS = "audio_codes.0 int64 (1, T0), audio_codes.1 int64 (1, T1), audio_codes.2 int64 (1, T2)"
DAC_INPUTS = "audio_codes int64 (1, 2, T)"


@pytest.mark.parametrize(("codec", "inputs"), [
    (AudioCodec.SNAC, [("x", TensorProto.FLOAT, [1, 80, "t"])]),
    (AudioCodec.SNAC, [(f"audio_codes.{i}", TensorProto.INT64, [1, 1, "t"]) for i in range(3)]),  # rank
    (AudioCodec.SNAC, [(f"audio_codes.{i}", TensorProto.INT64, [1, "t"]) for i in range(2)]),  # count
    (AudioCodec.DAC, [("audio_codes", TensorProto.INT64, [1, 32, "t"])]),  # descript/dac_24khz's 32 codebooks
    (AudioCodec.DAC, [("audio_codes", TensorProto.INT32, [1, 2, "t"])]),  # type
    (AudioCodec.DAC, [("codes", TensorProto.INT64, [1, 2, "t"])]),  # name
])
def test_a_graph_with_other_inputs_is_not_the_codecs_decoder(tmp_path, codec, inputs):
    path = tiny_graph(tmp_path / "other.onnx", [helper.make_tensor_value_info(*i) for i in inputs])
    expected = SNAC_INPUTS if codec is AudioCodec.SNAC else DAC_INPUTS
    with pytest.raises(DecoderUnavailable, match=re.escape(f"{path} is not a {codec.value} decoder: it takes ")
                       + ".*" + re.escape(f"; a {codec.value} decoder takes {expected}")):
        OnnxCodecDecoder(path, SHAPES[codec])


def test_one_codecs_decoder_is_refused_for_the_other(graphs):
    with pytest.raises(DecoderUnavailable, match="not a dac decoder: it takes audio_codes.0"):
        OnnxCodecDecoder(str(graphs[AudioCodec.SNAC]), SHAPES[AudioCodec.DAC])
    with pytest.raises(DecoderUnavailable, match="not a snac decoder: it takes audio_codes tensor"):
        OnnxCodecDecoder(str(graphs[AudioCodec.DAC]), SHAPES[AudioCodec.SNAC])


def test_a_decoder_giving_the_wrong_sample_count_is_a_bug(tmp_path):
    shape: CodecShape = SHAPES[AudioCodec.DAC]
    path = tiny_graph(tmp_path / "short.onnx", [helper.make_tensor_value_info("audio_codes", TensorProto.INT64,
                                                                             ["b", 2, "t"])])
    decoder = OnnxCodecDecoder(path, shape)
    with pytest.raises(Internal, match="gave 6 samples for 3 frames, not 960"):
        decoder.decode(random_codes(shape, 3, np.random.default_rng(0)))


def test_a_closed_decoder_refuses_to_decode(graphs):
    decoder = OnnxCodecDecoder(str(graphs[AudioCodec.SNAC]), SHAPES[AudioCodec.SNAC])
    decoder.close()
    decoder.close()  # idempotent
    with pytest.raises(Internal, match="closed"):
        decoder.decode(random_codes(SHAPES[AudioCodec.SNAC], 1, np.random.default_rng(0)))


def test_without_onnxruntime_the_decoder_says_what_to_install(graphs, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    with pytest.raises(DecoderUnavailable, match=r"install llamagate\[tts\]"):
        OnnxCodecDecoder(str(graphs[AudioCodec.SNAC]), SHAPES[AudioCodec.SNAC])
