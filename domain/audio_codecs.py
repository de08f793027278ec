"""The audio codecs a speech model may emit, and the shape of each one's codes
(SPEC §16).

A codec *frame* is the smallest run of codes the decoder turns into a
whole number of samples: one Orpheus group of 7 SNAC tokens (4 latent steps
of 512 samples), one DAC step of 2 codebooks (320 samples). Codes travel as
one tuple per codebook level; level ``i`` holds ``per_frame[i]`` codes per
frame (SNAC's coarse levels run at 1/4 and 1/2 of the finest one's rate).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TypeAlias

# One tuple of codes per codebook level (ragged: level i has per_frame[i] per frame).
CodecCodes: TypeAlias = tuple[tuple[int, ...], ...]


class AudioCodec(Enum):
    NONE = "none"  # a text model
    SNAC = "snac"  # Orpheus: <custom_token_N>, 7 per frame over 3 levels
    CSM = "csm"  # Sesame CSM: its depth decoder does not run in llama-server
    WHISPER = "whisper"  # audio in, text out: not a speech output model
    BICODEC = "bicodec"  # Spark-TTS: semantic and global tokens
    DAC = "dac"  # OuteTTS 1.0: <|c1_N|><|c2_N|> per frame


@dataclass(frozen=True)
class CodecShape:
    """What a decoder of the codec takes and gives."""

    codec: AudioCodec
    sample_rate: int
    frame_samples: int  # samples one frame decodes to
    per_frame: tuple[int, ...]  # codes per frame, by level
    codebook_size: int  # codes lie in [0, codebook_size)
    hop_length: int  # samples per code of the finest level
    # Frames each side of a window that reach into its samples through the
    # decoder's convolutions (its receptive field, rounded up to frames):
    # with this much context, a window's samples equal a one-shot decode's.
    context_frames: int
    # The level each token of a frame belongs to, in the order the model
    # emits them (codes of one level keep that order).
    slot_levels: tuple[int, ...] = ()

    @property
    def levels(self) -> int:
        return len(self.per_frame)


# hubertsiuzdak/snac_24khz: hop 512, vq_strides (4, 2, 1), 4096 codes per
# codebook. Receptive field ±4757 samples, 9.3 latent steps (traced through
# every layer's taps by tests/codec_graphs.receptive_field, confirmed by
# perturbing one code): 3 Orpheus frames of 4 steps cover it.
SNAC_24KHZ = CodecShape(codec=AudioCodec.SNAC, sample_rate=24_000, frame_samples=2048, per_frame=(1, 2, 4),
                        codebook_size=4096, hop_length=512, context_frames=3,
                        slot_levels=(0, 1, 2, 2, 1, 2, 2))  # Orpheus' order

# ibm-research/DAC.speech.v1.0, 24 kHz 1.5 kbps: hop 320 (75 steps a
# second), 2 codebooks of 1024. Receptive field ±3137 samples, 9.8 steps
# (traced as SNAC's, the 4 samples the decoder lacks at each end included).
DAC_24KHZ = CodecShape(codec=AudioCodec.DAC, sample_rate=24_000, frame_samples=320, per_frame=(1, 1),
                       codebook_size=1024, hop_length=320, context_frames=10,
                       slot_levels=(0, 1))

SHAPES: dict[AudioCodec, CodecShape] = {AudioCodec.SNAC: SNAC_24KHZ, AudioCodec.DAC: DAC_24KHZ}
