"""Where a codec decoder's file is, and loading it (the ``DecoderLoader`` port).

A Hub file is taken from the Hub cache only: serving never downloads (an
offline machine answers the same), and the error says how to fetch it.
"""

from __future__ import annotations

import os

from huggingface_hub import constants, try_to_load_from_cache

from llamagate.domain.audio_codecs import CodecShape
from llamagate.domain.errors import DecoderUnavailable
from llamagate.domain.ports import CodecDecoder
from llamagate.domain.speech import DecoderSource

INSTALL_HINT = "decoding audio needs onnxruntime: install llamagate[tts] (pip install 'llamagate[tts]')"


class OnnxDecoderLoader:
    def __init__(self, cache_dir: str | None = None, threads: int | None = None) -> None:
        self._cache_dir = cache_dir  # None: huggingface_hub's (HF_HUB_CACHE)
        self._threads = threads

    def open(self, shape: CodecShape, source: DecoderSource) -> CodecDecoder:
        try:  # here, not at import: the core install has neither onnxruntime nor the numpy it brings
            from llamagate.adapters.onnx_codec import OnnxCodecDecoder
        except ImportError as error:
            raise DecoderUnavailable(INSTALL_HINT) from error
        return OnnxCodecDecoder(self.locate(shape, source), shape, threads=self._threads)

    def locate(self, shape: CodecShape, source: DecoderSource) -> str:
        setting = f"LLAMAGATE_{shape.codec.name}_DECODER"
        if source.path:
            path = os.path.expanduser(source.path)
            if not os.path.isfile(path):
                raise DecoderUnavailable(f"the {shape.codec.value} decoder {path} ({setting}) is not a file")
            return path
        found = try_to_load_from_cache(source.repo, source.file, cache_dir=self._cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return found
        cache = self._cache_dir or constants.HF_HUB_CACHE
        raise DecoderUnavailable(
            f"the {shape.codec.value} decoder {source.file} of {source.repo} is not in the Hub cache ({cache}): "
            f"fetch it with `hf download {source.repo} {source.file}`, or set {setting} to a local ONNX file")
