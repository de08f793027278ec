"""A tiny vision projector GGUF with random weights, for real vision tests.

Its family is "gemma3": a SigLIP ViT (the encoder SmolVLM's "idefics3"
projector has too, built by the same llama.cpp graph code), then average
pooling, an RMS norm and one linear layer into the text model's embeddings;
only tiny: llama-server loads it in no time and an image costs a handful of
prompt tokens.

Why not idefics3 itself: llama.cpp frames idefics3 images with
``<fake_token_around_image>`` and ``<global-img>``, looked up as single tokens
of the text model's vocabulary (tools/mtmd/mtmd.cpp). SmolVLM's text model has
them; SmolLM2 does not, so with SmolLM2 such a projector loads and /props says
vision, yet every image is refused with 400 "Invalid token". gemma3's
markers (``<start_of_image>``, ``<end_of_image>``) are tokenized as ordinary
text, so it works with any text model (llama.cpp tests a "tinygemma3" so).

The weights are noise, so what the model "sees" is meaningless; what is real
is everything around it: the file loads, the server reports vision, an image
travels through the API and is embedded.

Names and keys are those llama.cpp's tools/mtmd loader reads (clip-impl.h:
KEY_* and TN_*; clip.cpp: load_hparams, load_tensors; models/siglip.cpp:
the graph), laid out as llama.cpp's converter writes a real one.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFType, GGUFWriter

SMOLLM2_EMBEDDING = 576  # llama.embedding_length of SmolLM2-135M: mtmd refuses any other width

IMAGE_SIZE = 32  # every image is resized to this square (mtmd's fixed-size preprocessor)
PATCH_SIZE = 8  # 4 x 4 patches
POOL = 2  # average pooling: 2 x 2 patches become one token, so 4 image tokens
HIDDEN = 32
HEADS = 2
FEED_FORWARD = 64  # must differ from HIDDEN: equal widths would trip llama.cpp's legacy up/down swap check
LAYERS = 2
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE // POOL) ** 2


def write_projector(path: Path, *, text_embedding: int = SMOLLM2_EMBEDDING, seed: int = 0) -> Path:
    """Write the projector to ``path`` and return it.

    Any image is resized to IMAGE_SIZE square: ``IMAGE_TOKENS`` tokens,
    between the two markers.
    """
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(path, "clip")
    _write_metadata(writer, text_embedding)
    for name, shape in _tensor_shapes(text_embedding).items():
        # numpy shapes are ggml's ne reversed; weights as small as a real
        # init, norms at 1, so activations stay finite.
        if name.endswith(("ln1.weight", "ln2.weight", "post_ln.weight", "soft_emb_norm.weight")):
            data = np.ones(shape, dtype=np.float32)
        else:
            data = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        writer.add_tensor(name, data, raw_dtype=GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _write_metadata(writer: GGUFWriter, text_embedding: int) -> None:
    writer.add_type(GGUFType.MMPROJ)
    writer.add_name("llamagate tiny idefics3 test projector")
    writer.add_file_type(0)  # all F32
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type("gemma3")
    writer.add_vision_projection_dim(text_embedding)
    writer.add_vision_image_size(IMAGE_SIZE)
    writer.add_vision_patch_size(PATCH_SIZE)
    writer.add_vision_embedding_length(HIDDEN)
    writer.add_vision_feed_forward_length(FEED_FORWARD)
    writer.add_vision_block_count(LAYERS)
    writer.add_vision_head_count(HEADS)
    writer.add_vision_attention_layernorm_eps(1e-6)
    writer.add_vision_projector_scale_factor(POOL)  # the pooling kernel; gemma3's own is 4
    writer.add_vision_use_gelu(True)
    writer.add_vision_image_mean([0.5, 0.5, 0.5])
    writer.add_vision_image_std([0.5, 0.5, 0.5])


def _tensor_shapes(text_embedding: int) -> dict[str, tuple[int, ...]]:
    patches = (IMAGE_SIZE // PATCH_SIZE) ** 2
    shapes: dict[str, tuple[int, ...]] = {
        "v.patch_embd.weight": (HIDDEN, 3, PATCH_SIZE, PATCH_SIZE),  # the patchifying conv2d
        "v.patch_embd.bias": (HIDDEN,),
        "v.position_embd.weight": (patches, HIDDEN),
        "v.post_ln.weight": (HIDDEN,),
        "v.post_ln.bias": (HIDDEN,),
        "mm.soft_emb_norm.weight": (HIDDEN,),
        "mm.input_projection.weight": (HIDDEN, text_embedding),  # applied transposed (models/siglip.cpp)
    }
    for layer in range(LAYERS):
        block = f"v.blk.{layer}"
        for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
            shapes[f"{block}.{part}.weight"] = (HIDDEN, HIDDEN)
            shapes[f"{block}.{part}.bias"] = (HIDDEN,)
        for norm in ("ln1", "ln2"):
            shapes[f"{block}.{norm}.weight"] = (HIDDEN,)
            shapes[f"{block}.{norm}.bias"] = (HIDDEN,)
        shapes[f"{block}.ffn_up.weight"] = (FEED_FORWARD, HIDDEN)
        shapes[f"{block}.ffn_up.bias"] = (FEED_FORWARD,)
        shapes[f"{block}.ffn_down.weight"] = (HIDDEN, FEED_FORWARD)
        shapes[f"{block}.ffn_down.bias"] = (HIDDEN,)
    return shapes


def tiny_png(width: int = 16, height: int = 16) -> bytes:
    """An RGB gradient PNG (no imaging library needed): the image a test sends."""
    rows = b"".join(
        b"\x00" + bytes(channel for x in range(width) for channel in (x * 255 // width, y * 255 // height, 128))
        for y in range(height)
    )  # each row starts with its filter type, 0 = none

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
