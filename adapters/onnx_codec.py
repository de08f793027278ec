"""An audio codec's neural decoder run by onnxruntime (the ``llamagate[tts]``
extra) from an ONNX file: the CodecDecoder port.

The graphs it takes are named as the published exports name them:
- SNAC (onnx-community/snac_24khz-ONNX, transformers.js): one int64 input
  per codebook level, ``audio_codes.0`` (1, T/4), ``audio_codes.1`` (1, T/2),
  ``audio_codes.2`` (1, T);
- DAC (onnx-community/dac_*-ONNX, transformers' DacModel): one int64 input
  ``audio_codes`` (1, codebooks, T);
and both give ``audio_values`` (1, 1, samples) float32.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np

from llamagate.adapters.codec_decoders import INSTALL_HINT
from llamagate.domain.audio_codecs import AudioCodec, CodecCodes, CodecShape
from llamagate.domain.errors import DecoderUnavailable, Internal

INPUT = "audio_codes"
OUTPUT = "audio_values"

# Samples a decoder gives fewer than ``frame_samples`` per frame, half at
# each end of the decode. Descript's DAC decoder (which OuteTTS runs, and
# transformers' DacModel exports) has no output_padding in its transposed
# convolutions: the stride-5 one gives 5 L - 1 steps, so rates (8, 5, 4, 2)
# give 320 T - 8 samples, the content centred (4 missing at each end). Zeros
# in their place keep every frame 320 samples long and every window on the
# one-shot decode's sample grid. (An export with output_padding gives 320 T:
# also accepted.)
EDGE_SHORTFALL: dict[AudioCodec, int] = {AudioCodec.DAC: 8}


def _onnxruntime() -> Any:
    try:  # by name: onnxruntime ships no type information, and the core install lacks it
        return importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise DecoderUnavailable(INSTALL_HINT) from exc


def _session_options(ort: Any, threads: int | None) -> Any:
    """Chosen by measuring the decoders of tests/codec_graphs.py on the 2-core CI machine."""
    options = ort.SessionOptions()
    # The time goes to convolutions and Snake's elementwise ops, which no
    # level rewrites; ORT_ENABLE_ALL's layout changes cost ~5% (SNAC, 2 s,
    # one thread), so the level below it.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # a chain of convolutions: nothing to run beside
    options.intra_op_num_threads = threads or _cores()
    options.inter_op_num_threads = 1
    # Idle pool threads sleep instead of spinning: llama-server generates the
    # next codes on the same cores while a window decodes. On a busy machine
    # spinning made SNAC's streamed decode 1.5x slower; on an idle one it
    # gains ~7%.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Every window has another length: a memory plan made for one length is
    # wasted on the next (measured: no gain). The arena stays: without it
    # decodes ran ~15% slower.
    options.enable_mem_pattern = False
    options.log_severity_level = 3  # errors only: the optimiser's notes are not the operator's business
    return options


def _cores() -> int:
    """The cores this process may run on (a container's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity
        return os.cpu_count() or 1


class OnnxCodecDecoder:
    """One loaded decoder. ``decode`` may be called from several threads at
    once (several Synthesize streams): onnxruntime's ``InferenceSession.run``
    is thread-safe, and nothing else here changes after loading. ``close``
    drops the session; a decode already running keeps its own reference."""

    def __init__(self, path: str, shape: CodecShape, *, threads: int | None = None) -> None:
        ort = _onnxruntime()
        self.shape = shape
        if not os.path.isfile(path):
            raise DecoderUnavailable(f"the {shape.codec.value} decoder {path} does not exist")
        try:
            session = ort.InferenceSession(path, sess_options=_session_options(ort, threads),
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail, InvalidProtobuf, InvalidGraph, ...
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DecoderUnavailable(f"{path} is not a readable ONNX graph of the {shape.codec.value} decoder: "
                                     f"{reason}") from exc
        self._stacked = _check_inputs(path, shape, session.get_inputs())
        outputs = [o.name for o in session.get_outputs()]
        self._output = OUTPUT if OUTPUT in outputs else outputs[0]
        self._session: Any = session

    def decode(self, codes: CodecCodes) -> bytes:
        session = self._session
        if session is None:
            raise Internal(f"the {self.shape.codec.value} decoder was closed")
        frames, arrays = _arrays(codes, self.shape)
        if frames == 0:
            return b""
        if self._stacked:
            feed = {INPUT: np.stack(arrays)[np.newaxis]}
        else:
            feed = {f"{INPUT}.{i}": level[np.newaxis] for i, level in enumerate(arrays)}
        try:
            (samples,) = session.run([self._output], feed)
        except Exception as exc:
            raise Internal(f"the {self.shape.codec.value} decoder failed on {frames} frames: {exc}") from exc
        samples = np.asarray(samples, dtype="<f4").reshape(-1)
        expected = frames * self.shape.frame_samples
        short = expected - len(samples)
        if short and short == EDGE_SHORTFALL.get(self.shape.codec):
            samples = np.pad(samples, (short // 2, short - short // 2))
        elif short:
            raise Internal(f"the {self.shape.codec.value} decoder gave {len(samples)} samples for {frames} frames, "
                           f"not {expected} ({self.shape.frame_samples} a frame): a decoder of another codec?")
        return samples.tobytes()

    def close(self) -> None:
        self._session = None


def _check_inputs(path: str, shape: CodecShape, inputs: list[Any]) -> bool:
    """Whether the graph takes the levels stacked in one input (the levels
    run at one rate: DAC) rather than one input per level (SNAC), as the
    exports do; DecoderUnavailable when the graph takes anything else."""
    name = shape.codec.value
    stacked = len(set(shape.per_frame)) == 1
    if stacked:
        expected = f"{INPUT} int64 (1, {shape.levels}, T)"
        dims = inputs[0].shape if len(inputs) == 1 else []
        ok = (len(inputs) == 1 and inputs[0].name == INPUT and inputs[0].type == "tensor(int64)" and len(dims) == 3
              and (dims[1] == shape.levels or not isinstance(dims[1], int)))  # a fixed count must be ours
    else:
        expected = ", ".join(f"{INPUT}.{n} int64 (1, T{n})" for n in range(shape.levels))
        ok = (sorted(i.name for i in inputs) == [f"{INPUT}.{n}" for n in range(shape.levels)]
              and all(i.type == "tensor(int64)" and len(i.shape) == 2 for i in inputs))
    if not ok:
        got = ", ".join(f"{i.name} {i.type} {tuple(i.shape)}" for i in inputs) or "nothing"
        raise DecoderUnavailable(f"{path} is not a {name} decoder: it takes {got}; a {name} decoder takes {expected}")
    return stacked


def _arrays(codes: CodecCodes, shape: CodecShape) -> tuple[int, list[np.ndarray]]:
    """Whole frames in ``codes`` and the codes as arrays; Internal when they
    are not whole frames of the codec's codes (they come from llamagate's own
    parsing of the model's tokens, so a mismatch is a bug)."""
    name = shape.codec.value
    if len(codes) != shape.levels:
        raise Internal(f"{name} codes come in {shape.levels} levels, got {len(codes)}")
    frames, rest = divmod(len(codes[0]), shape.per_frame[0])
    arrays = []
    for level, (level_codes, per) in enumerate(zip(codes, shape.per_frame)):
        if rest or len(level_codes) != frames * per:
            raise Internal(f"{name} codes are not whole frames: levels hold {shape.per_frame} codes a frame, "
                           f"got {[len(c) for c in codes]} codes")
        array = np.asarray(level_codes, dtype=np.int64)
        bad = array[(array < 0) | (array >= shape.codebook_size)]
        if bad.size:
            raise Internal(f"{name} code {bad[0]} at level {level} is outside [0, {shape.codebook_size})")
        arrays.append(array)
    return frames, arrays
