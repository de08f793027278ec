"""Audio codec decoders as ONNX graphs with random weights and the real
architectures (layer types, shapes, strides, channel counts), written with
the ``onnx`` helper API (no torch), plus each decoder's exact receptive field.

- SNAC 24 kHz (hubertsiuzdak/snac_24khz, the Orpheus codec), as
  ``snac/layers.py`` builds it: 3 codebooks of 4096 x 8 at strides (4, 2, 1),
  latent 768, a depthwise decoder of dim 1024, rates (8, 8, 4, 2), NoiseBlocks.
  Inputs and output as onnx-community/snac_24khz-ONNX (transformers.js) names
  them: ``audio_codes.0`` (1, T/4), ``audio_codes.1`` (1, T/2), ``audio_codes.2``
  (1, T) int64 -> ``audio_values`` (1, 1, 512 T) float32.
- DAC 24 kHz 1.5 kbps (ibm-research/DAC.speech.v1.0, the OuteTTS 1.0 codec),
  as descript-audio-codec's ``dac/model/dac.py`` builds it: 2 codebooks of
  1024 x 8, latent 1024, decoder dim 1536, rates (8, 5, 4, 2). Input and
  output as the onnx-community/dac_*-ONNX exports (transformers' DacModel)
  name them: ``audio_codes`` (1, 2, T) int64 -> ``audio_values`` (1, 1, N).
  Descript's transposed convolutions have no ``output_padding``, so the
  stride-5 one yields 5L - 1 steps and the decoder 320 T - 8 samples, not
  320 T: 4 short at each end (see ``edge_shortfall``). The real decoder does
  that; so does this one.

One description of the layers (``decoder_layers``) drives both the graph and
the receptive field, so the two cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from llamagate.domain.audio_codecs import AudioCodec, CodecShape

OPSET = 17


@dataclass(frozen=True)
class DecoderArch:
    codec: AudioCodec
    codebook_size: int
    codebook_dim: int
    vq_strides: tuple[int, ...]  # latent steps per code, by level
    latent_dim: int
    decoder_dim: int
    rates: tuple[int, ...]
    depthwise: bool  # SNAC: depthwise first conv and residual convs
    noise: bool  # SNAC: a NoiseBlock after each upsampling
    output_padding: bool  # SNAC pads odd strides (stride % 2); descript's DAC does not
    stacked_codes: bool  # one (1, levels, T) input (DAC) or one (1, T_i) input per level (SNAC)

    @property
    def hop(self) -> int:
        return math.prod(self.rates)


SNAC_ARCH = DecoderArch(AudioCodec.SNAC, codebook_size=4096, codebook_dim=8, vq_strides=(4, 2, 1), latent_dim=768,
                        decoder_dim=1024, rates=(8, 8, 4, 2), depthwise=True, noise=True, output_padding=True,
                        stacked_codes=False)
DAC_ARCH = DecoderArch(AudioCodec.DAC, codebook_size=1024, codebook_dim=8, vq_strides=(1, 1), latent_dim=1024,
                       decoder_dim=1536, rates=(8, 5, 4, 2), depthwise=False, noise=False, output_padding=False,
                       stacked_codes=True)
ARCHS: dict[AudioCodec, DecoderArch] = {AudioCodec.SNAC: SNAC_ARCH, AudioCodec.DAC: DAC_ARCH}


# -- the layers -------------------------------------------------------------

@dataclass(frozen=True)
class Conv:
    c_in: int
    c_out: int
    kernel: int = 1
    dilation: int = 1
    groups: int = 1
    bias: bool = True
    gain: float = 1.0  # scales the random weights (residual branches, the last conv)

    @property
    def pad(self) -> int:  # "same" padding, as both codecs use
        return (self.kernel - 1) * self.dilation // 2


@dataclass(frozen=True)
class ConvTranspose:
    c_in: int
    c_out: int
    stride: int
    output_padding: int

    @property
    def kernel(self) -> int:
        return 2 * self.stride

    @property
    def pad(self) -> int:
        return math.ceil(self.stride / 2)


@dataclass(frozen=True)
class Snake:
    channels: int


@dataclass(frozen=True)
class Noise:  # x + randn(B, 1, T) * conv1x1(x), no bias
    channels: int


@dataclass(frozen=True)
class Residual:  # x + layers(x)
    layers: tuple[Layer, ...]


@dataclass(frozen=True)
class Tanh:
    pass


Layer = Conv | ConvTranspose | Snake | Noise | Residual | Tanh

# Residual branches and the output conv get smaller random weights so that,
# like a trained codec's, activations neither blow up through the 12 residual
# units nor saturate the final tanh.
RESIDUAL_GAIN = 0.5
OUTPUT_GAIN = 0.05


def decoder_layers(arch: DecoderArch, *, noise: bool) -> list[Layer]:
    """The decoder after the summed codebook projections, layer by layer."""
    latent, dim = arch.latent_dim, arch.decoder_dim
    if arch.depthwise:
        layers: list[Layer] = [Conv(latent, latent, 7, groups=latent), Conv(latent, dim)]
    else:
        layers = [Conv(latent, dim, 7)]
    for i, stride in enumerate(arch.rates):
        c_in, c_out = dim // 2**i, dim // 2 ** (i + 1)
        groups = c_out if arch.depthwise else 1
        layers += [Snake(c_in), ConvTranspose(c_in, c_out, stride, stride % 2 if arch.output_padding else 0)]
        if arch.noise and noise:
            layers.append(Noise(c_out))
        layers += [Residual((Snake(c_out), Conv(c_out, c_out, 7, dilation, groups), Snake(c_out),
                             Conv(c_out, c_out, gain=RESIDUAL_GAIN)))
                   for dilation in (1, 3, 9)]
    c_last = dim // 2 ** len(arch.rates)
    return layers + [Snake(c_last), Conv(c_last, 1, 7, gain=OUTPUT_GAIN), Tanh()]


# -- lengths and the receptive field ----------------------------------------

def output_samples(arch: DecoderArch, steps: int) -> int:
    """Samples the decoder gives for ``steps`` finest-level latent steps."""
    n = steps
    for layer in decoder_layers(arch, noise=False):
        if isinstance(layer, ConvTranspose):
            n = (n - 1) * layer.stride - 2 * layer.pad + layer.kernel + layer.output_padding
    return n


def edge_shortfall(arch: DecoderArch) -> int:
    """Samples the decoder gives fewer than ``hop`` per step (the same for any
    length: 8 for descript's DAC at rates 8, 5, 4, 2; 0 for SNAC)."""
    return arch.hop * 64 - output_samples(arch, 64)


def _shift(mask: np.ndarray, offset: int) -> np.ndarray:
    """out[j] = mask[j + offset], False beyond the ends (zero padding)."""
    out = np.zeros_like(mask)
    n = len(mask)
    lo, hi = max(0, -offset), min(n, n - offset)
    if lo < hi:
        out[lo:hi] = mask[lo + offset:hi + offset]
    return out


def _clean(layers: list[Layer] | tuple[Layer, ...], mask: np.ndarray) -> np.ndarray:
    """Which positions after ``layers`` depend only on clean positions of
    ``mask`` (False: reached by a window's edge, where the window's zero
    padding stands for what a one-shot decode computes)."""
    for layer in layers:
        if isinstance(layer, Conv):
            out = np.ones_like(mask)
            for tap in range(layer.kernel):
                out &= _shift(mask, tap * layer.dilation - layer.pad)
            mask = out
        elif isinstance(layer, ConvTranspose):
            n_out = (len(mask) - 1) * layer.stride - 2 * layer.pad + layer.kernel + layer.output_padding
            full = np.arange(n_out) + layer.pad  # index before the padding crop
            out = np.ones(n_out, dtype=bool)
            for tap in range(layer.kernel):  # output full index f takes input i through tap f - i * stride
                src, rem = np.divmod(full - tap, layer.stride)
                inside = (src >= 0) & (src < len(mask))  # outside the window: missing, as zero padding
                out &= (rem != 0) | (inside & mask[np.clip(src, 0, len(mask) - 1)])
            mask = out
        elif isinstance(layer, Residual):
            mask = mask & _clean(layer.layers, mask)
    return mask


@dataclass(frozen=True)
class ReceptiveField:
    samples: int  # output samples next to a window's edge that differ from a one-shot decode
    steps: int  # the same in finest-level code steps, rounded up
    frames: int  # the same in codec frames, rounded up: the context a window needs each side


def receptive_field(arch: DecoderArch, shape: CodecShape) -> ReceptiveField:
    """How far a window's edges reach into its samples, exactly, from the
    layers: every output sample's dependence on the codes is traced back
    through each convolution's taps (a window's interior edges are treated as
    zero padding, as the decoder does). A decoder short of ``hop`` samples per
    step is padded evenly at both ends (as the adapter does), and those
    padded samples count as reached."""
    steps = 64  # any length well over the reach
    mask = _clean(decoder_layers(arch, noise=False), np.ones(steps, dtype=bool))
    short = steps * arch.hop - len(mask)
    grid = np.concatenate([np.zeros(short // 2, bool), mask, np.zeros(short - short // 2, bool)])
    clean = np.flatnonzero(grid)
    reach = max(int(clean[0]), len(grid) - 1 - int(clean[-1]))
    return ReceptiveField(reach, math.ceil(reach / arch.hop), math.ceil(reach / shape.frame_samples))


# -- the graph -------------------------------------------------------------

class _Graph:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, kind: str) -> str:
        self._count += 1
        return f"{kind}_{self._count}"

    def const(self, kind: str, value: np.ndarray) -> str:
        name = self.name(kind)
        self.weights.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        output = output or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return (self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)

    def layer(self, x: str, layer: Layer) -> str:
        if isinstance(layer, Conv):
            fan_in = layer.c_in // layer.groups * layer.kernel
            inputs = [x, self.const("w", self.normal((layer.c_out, layer.c_in // layer.groups, layer.kernel),
                                                     layer.gain / math.sqrt(fan_in)))]
            if layer.bias:
                inputs.append(self.const("b", self.normal((layer.c_out,), 0.02)))
            return self.node("Conv", inputs, kernel_shape=[layer.kernel], pads=[layer.pad, layer.pad],
                             dilations=[layer.dilation], group=layer.groups)
        if isinstance(layer, ConvTranspose):
            weight = self.normal((layer.c_in, layer.c_out, layer.kernel), 1 / math.sqrt(2 * layer.c_in))
            return self.node("ConvTranspose", [x, self.const("w", weight), self.const("b", self.normal((layer.c_out,), 0.02))],
                             kernel_shape=[layer.kernel], strides=[layer.stride], pads=[layer.pad, layer.pad],
                             output_padding=[layer.output_padding])
        if isinstance(layer, Snake):
            # x + 1/(alpha + 1e-9) * sin(alpha x)^2, alpha per channel, with the
            # ops torch exports it to (the reciprocal folded, as onnxruntime would)
            alpha = self.rng.uniform(0.5, 1.5, (1, layer.channels, 1)).astype(np.float32)
            sine = self.node("Sin", [self.node("Mul", [x, self.const("alpha", alpha)])])
            squared = self.node("Pow", [sine, self.const("two", np.array(2.0, dtype=np.float32))])
            inverse = self.const("inv_alpha", (1.0 / (alpha + 1e-9)).astype(np.float32))
            return self.node("Add", [x, self.node("Mul", [squared, inverse])])
        if isinstance(layer, Noise):
            projected = self.layer(x, Conv(layer.channels, layer.channels, bias=False))
            one_channel = self.node("Slice", [x, self.const("i", np.array([0])), self.const("i", np.array([1])),
                                              self.const("i", np.array([1]))])
            noise = self.node("RandomNormalLike", [one_channel])
            return self.node("Add", [x, self.node("Mul", [noise, projected])])
        if isinstance(layer, Residual):
            y = x
            for inner in layer.layers:
                y = self.layer(y, inner)
            return self.node("Add", [x, y])
        return self.node("Tanh", [x], "audio_values")

    def codes_to_latent(self, arch: DecoderArch, inputs: list[str]) -> str:
        """Per level: repeat each code ``stride`` times along time, look it up
        in the codebook, project 8 -> latent with a 1x1 conv; sum the levels.
        (Repeating the codes before the pointwise lookup and projection equals
        SNAC's repeat_interleave after them.)"""
        total = None
        for level, stride in enumerate(arch.vq_strides):
            if arch.stacked_codes:  # (1, levels, T) -> (1, T)
                codes = self.node("Gather", [inputs[0], self.const("i", np.array(level))], axis=1)
            else:
                codes = inputs[level]
            if stride > 1:  # (1, L) -> (1, L, 1) -> (1, L, stride) -> (1, L * stride)
                tiled = self.node("Expand", [self.node("Unsqueeze", [codes, self.const("i", np.array([2]))]),
                                             self.const("i", np.array([1, 1, stride]))])
                codes = self.node("Reshape", [tiled, self.const("i", np.array([0, -1]))])
            codebook = self.normal((arch.codebook_size, arch.codebook_dim), 1.0)
            vectors = self.node("Gather", [self.const("codebook", codebook), codes])  # (1, T, 8)
            latent = self.layer(self.node("Transpose", [vectors], perm=[0, 2, 1]),
                                Conv(arch.codebook_dim, arch.latent_dim))
            total = latent if total is None else self.node("Add", [total, latent])
        assert total is not None
        return total


def build_decoder(arch: DecoderArch, *, noise: bool, seed: int = 0) -> onnx.ModelProto:
    """The decoder graph with random weights. ``noise``: keep SNAC's
    NoiseBlocks (x + randn * conv1x1(x)): the real decoder has them and they
    cost time, but they make every decode differ, so tests that compare a
    windowed decode with a one-shot one build the graph without them."""
    graph = _Graph(seed)
    if arch.stacked_codes:
        inputs = [helper.make_tensor_value_info("audio_codes", TensorProto.INT64, ["batch", len(arch.vq_strides), "steps"])]
    else:
        inputs = [helper.make_tensor_value_info(f"audio_codes.{i}", TensorProto.INT64, ["batch", f"steps_{i}"])
                  for i in range(len(arch.vq_strides))]
    x = graph.codes_to_latent(arch, [i.name for i in inputs])
    for layer in decoder_layers(arch, noise=noise):
        x = graph.layer(x, layer)
    output = helper.make_tensor_value_info("audio_values", TensorProto.FLOAT, ["batch", 1, "samples"])
    model = helper.make_model(helper.make_graph(graph.nodes, f"{arch.codec.value}_decoder", inputs, [output],
                                                graph.weights),
                              opset_imports=[helper.make_opsetid("", OPSET)], producer_name="llamagate-tests")
    model.ir_version = 8  # what onnxruntime releases of the last years all read
    return model


def write_decoder(codec: AudioCodec, directory: Path, *, noise: bool = False, seed: int = 0) -> Path:
    """The decoder for ``codec`` as ``directory/<codec>[_noise]_decoder.onnx``,
    written once (weights inline: one file, read in one go)."""
    path = directory / f"{codec.value}{'_noise' if noise else ''}_decoder.onnx"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_bytes(build_decoder(ARCHS[codec], noise=noise, seed=seed).SerializeToString())
        partial.replace(path)
    return path


def random_codes(shape: CodecShape, frames: int, rng: np.random.Generator) -> tuple[tuple[int, ...], ...]:
    """Whole frames of random codes, one tuple per level."""
    return tuple(tuple(int(c) for c in rng.integers(0, shape.codebook_size, frames * per))
                 for per in shape.per_frame)


def window(codes: tuple[tuple[int, ...], ...], shape: CodecShape, start: int, stop: int) -> tuple[tuple[int, ...], ...]:
    """Frames [start, stop) of ``codes``."""
    return tuple(level[start * per:stop * per] for level, per in zip(codes, shape.per_frame))
