"""How fast the codec decoders turn codes into speech (issue 14): seconds of
audio decoded per second of wall time (the baseline: real time, 1.0x), for
the SNAC 24 kHz and DAC 24 kHz decoders as ONNX graphs with random weights
and the real architectures (tests/codec_graphs.py; SNAC with its NoiseBlocks,
whose cost is real) run by llamagate's onnxruntime adapter, in one run,
round by round interleaved (these machines are noisy: only numbers taken
side by side mean something):

  1. one-shot: all the codes in one decode;
  2. streaming: as Synthesize decodes while codes arrive, windows of new
     frames (the service's schedule by default, or ``--snac-windows``;
     printed) each decoded with ``context_frames`` of context on both sides
     (clipped at the stream's ends); the rate counts new audio only, so the
     context's cost shows;
  3. the torch reference (the ``snac`` and ``descript-audio-codec``
     packages, random weights), where torch and they happen to be installed.

Target: SNAC at least 1.5x real time, one-shot and streaming.

    .venv/bin/python bench/tts_decode.py [--seconds 6] [--rounds 5] [--check]

The last line is the verdict; ``--check`` exits 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from codec_graphs import random_codes, window, write_decoder

from llamagate.adapters.onnx_codec import OnnxCodecDecoder
from llamagate.domain.audio_codecs import SHAPES, AudioCodec, CodecCodes, CodecShape
from llamagate.domain.speech import chunk_frames

TARGET = 1.5
CODECS = (AudioCodec.SNAC, AudioCodec.DAC)


def schedule(shape: CodecShape, frames: int, sizes: tuple[int, ...] | None) -> tuple[int, ...]:
    """New frames per window until ``frames``: ``sizes`` (the last repeating),
    or by default the service's own schedule (chunks doubling from 0.15 s of
    audio to 1.5 s, llamagate.domain.speech.chunk_frames)."""
    out: list[int] = []
    while sum(out) < frames:
        sent = sum(out)
        size = sizes[min(len(out), len(sizes) - 1)] if sizes else chunk_frames(shape, sent)
        out.append(min(size, frames - sent))
    return tuple(out)


def windows(sizes: tuple[int, ...], frames: int, context: int) -> list[tuple[int, int, int, int]]:
    """(decode start, decode stop, keep start, keep stop) frames, in order."""
    out, start = [], 0
    for size in sizes:
        out.append((max(0, start - context), min(frames, start + size + context), start, start + size))
        start += size
    return out


def stream(decode: Callable[[CodecCodes], bytes], codes: CodecCodes, shape: CodecShape,
           plan: list[tuple[int, int, int, int]]) -> tuple[bytes, float]:
    """The streamed audio and the seconds its first chunk took."""
    chunks, first = [], 0.0
    began = time.perf_counter()
    for lo, hi, keep_lo, keep_hi in plan:
        audio = decode(window(codes, shape, lo, hi))
        offset = (keep_lo - lo) * shape.frame_samples * 4
        chunks.append(audio[offset:offset + (keep_hi - keep_lo) * shape.frame_samples * 4])
        first = first or time.perf_counter() - began
    return b"".join(chunks), first


def one_shot(decode: Callable[[CodecCodes], bytes], codes: CodecCodes) -> tuple[bytes, float]:
    return decode(codes), 0.0


def torch_reference(codec: AudioCodec) -> tuple[Callable[[CodecCodes], bytes] | None, str]:
    """A decode function of the torch package with random weights, or why there is none."""
    package = {AudioCodec.SNAC: "snac", AudioCodec.DAC: "dac"}[codec]
    try:
        torch = importlib.import_module("torch")
        module = importlib.import_module(package)
    except ImportError as exc:
        return None, f"skipped ({exc.name} is not installed)"
    torch.set_num_threads(os.cpu_count() or 1)
    if codec is AudioCodec.SNAC:  # hubertsiuzdak/snac_24khz's config.json
        model = module.SNAC(sampling_rate=24000, encoder_dim=48, encoder_rates=[2, 4, 8, 8], decoder_dim=1024,
                            decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=4096, codebook_dim=8,
                            vq_strides=[4, 2, 1], noise=True, depthwise=True).eval()
    else:  # ibm-research/DAC.speech.v1.0, 24 kHz 1.5 kbps
        model = module.DAC(encoder_dim=64, encoder_rates=[2, 4, 5, 8], latent_dim=1024, decoder_dim=1536,
                           decoder_rates=[8, 5, 4, 2], n_codebooks=2, codebook_size=1024, codebook_dim=8,
                           sample_rate=24000).eval()

    def decode(codes: CodecCodes) -> bytes:
        with torch.inference_mode():
            levels = [torch.tensor([level], dtype=torch.long) for level in codes]
            if codec is AudioCodec.SNAC:
                audio = model.decode(levels)
            else:
                audio = model.decode(model.quantizer.from_codes(torch.stack(levels, dim=1))[0])
        samples = audio.numpy().astype("<f4").reshape(-1)
        short = len(codes[-1]) * SHAPES[codec].hop_length - len(samples)  # descript's DAC: 8, as the adapter pads
        return np.pad(samples, (short // 2, short - short // 2)).tobytes()

    return decode, f"{package} {getattr(module, '__version__', '')} on torch {torch.__version__}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="audio per decode")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    for codec in CODECS:
        parser.add_argument(f"--{codec.value}-windows", default=None,
                            help=f"new {codec.value} frames per streamed window, e.g. 4,8,16,32 (the last repeats; "
                                 f"default: the service's schedule)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tts_decode") as tmp:
        cases: dict[str, Callable[[], tuple[float, float]]] = {}
        for codec in CODECS:
            shape = SHAPES[codec]
            frames = max(1, round(args.seconds * shape.sample_rate / shape.frame_samples))
            codes = random_codes(shape, frames, np.random.default_rng(14))
            seconds = frames * shape.frame_samples / shape.sample_rate
            began = time.perf_counter()
            decoder = OnnxCodecDecoder(str(write_decoder(codec, Path(tmp), noise=codec is AudioCodec.SNAC)), shape,
                                       threads=args.threads)
            given = getattr(args, f"{codec.value}_windows")
            sizes = schedule(shape, frames, tuple(int(n) for n in given.split(",")) if given else None)
            plan = windows(sizes, frames, shape.context_frames)
            decoded = sum(hi - lo for lo, hi, _, _ in plan)
            print(f"{codec.value}: {frames} frames ({seconds:.2f} s of audio), graph written and loaded in "
                  f"{time.perf_counter() - began:.1f} s; streamed in windows of {list(sizes)} new frames "
                  f"+ {shape.context_frames} context each side: {decoded} frames decoded for {frames} "
                  f"({decoded / frames:.2f}x)", flush=True)
            decoder.decode(window(codes, shape, 0, min(frames, 4)))  # warm-up: allocations, thread pool
            cases[f"{codec.value} onnxruntime one-shot"] = partial(_timed, partial(one_shot, decoder.decode, codes),
                                                                   seconds)
            cases[f"{codec.value} onnxruntime streaming"] = partial(
                _timed, partial(stream, decoder.decode, codes, shape, plan), seconds)
            reference, note = torch_reference(codec)
            print(f"{codec.value} torch reference: {note}", flush=True)
            if reference is not None:
                cases[f"{codec.value} torch one-shot"] = partial(_timed, partial(one_shot, reference, codes), seconds)

        results: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, case in cases.items():
                results[name].append(case())

    speeds = {}
    for name, runs in results.items():
        rates = [rate for rate, _ in runs]
        speeds[name] = statistics.median(rates)
        first = statistics.median(first for _, first in runs)
        print(f"{name:34s} {speeds[name]:6.2f}x real time (median of {len(rates)}; {min(rates):.2f}-{max(rates):.2f})"
              + (f"; first chunk after {first * 1000:.0f} ms" if first else ""))
    snac = {mode: speeds[f"snac onnxruntime {mode}"] for mode in ("one-shot", "streaming")}
    ok = all(speed >= TARGET for speed in snac.values())
    print(f"verdict: {'PASS' if ok else 'FAIL'}: SNAC decodes {snac['one-shot']:.2f}x real time one-shot, "
          f"{snac['streaming']:.2f}x streaming (target >= {TARGET}x on {os.cpu_count()} cores)")
    return 1 if args.check and not ok else 0


def _timed(run: Callable[[], tuple[bytes, float]], seconds: float) -> tuple[float, float]:
    """(seconds of audio per second of wall time, first chunk's seconds)."""
    began = time.perf_counter()
    audio, first = run()
    elapsed = time.perf_counter() - began
    assert len(audio) == round(seconds * 24_000) * 4, (len(audio), seconds)  # every sample, once
    return seconds / elapsed, first


if __name__ == "__main__":
    sys.exit(main())
