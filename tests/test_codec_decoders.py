"""Where a codec decoder's file is found (adapters/codec_decoders.py): a local
path, or a file of a Hub repo as the Hub cache holds it, never downloaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from codec_graphs import write_decoder

from llamagate.adapters.codec_decoders import OnnxDecoderLoader
from llamagate.domain.audio_codecs import SNAC_24KHZ, AudioCodec
from llamagate.domain.errors import DecoderUnavailable
from llamagate.domain.speech import DEFAULT_DECODERS, DecoderSource

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_with(cache: Path, repo: str, file: str, data: bytes) -> Path:
    """A Hub cache holding ``file`` of ``repo`` at main, laid out as huggingface_hub lays it out."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    path = root / "snapshots" / COMMIT / file
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path


def test_a_hub_file_missing_from_the_cache_names_the_command_that_fetches_it(tmp_path):
    loader = OnnxDecoderLoader(cache_dir=str(tmp_path))
    with pytest.raises(DecoderUnavailable) as caught:
        loader.locate(SNAC_24KHZ, DEFAULT_DECODERS[AudioCodec.SNAC])
    message = str(caught.value)
    assert "hf download onnx-community/snac_24khz-ONNX onnx/decoder_model.onnx" in message
    assert "LLAMAGATE_SNAC_DECODER" in message and str(tmp_path) in message


def test_a_cached_hub_file_is_found_and_loads(tmp_path):
    graph = write_decoder(AudioCodec.SNAC, tmp_path / "built").read_bytes()
    source = DEFAULT_DECODERS[AudioCodec.SNAC]
    cached = cache_with(tmp_path / "hub", source.repo, source.file, graph)
    loader = OnnxDecoderLoader(cache_dir=str(tmp_path / "hub"))
    assert loader.locate(SNAC_24KHZ, source) == str(cached)
    decoder = loader.open(SNAC_24KHZ, source)
    try:
        assert len(decoder.decode(((1,), (2, 3), (4, 5, 6, 7)))) == 2048 * 4
    finally:
        decoder.close()


def test_a_configured_path_that_is_no_file_is_said_with_its_setting(tmp_path):
    loader = OnnxDecoderLoader(cache_dir=str(tmp_path))
    for path in (tmp_path / "absent.onnx", tmp_path):
        with pytest.raises(DecoderUnavailable) as caught:
            loader.locate(SNAC_24KHZ, DecoderSource(path=str(path)))
        assert str(path) in str(caught.value) and "LLAMAGATE_SNAC_DECODER" in str(caught.value)


def test_without_numpy_and_onnxruntime_the_service_imports_and_a_decoder_asks_for_the_extra(tmp_path):
    """The core install has neither: speech is refused, nothing else is touched."""
    script = f"""
import sys
sys.modules["numpy"] = None  # as if not installed
sys.modules["onnxruntime"] = None
import llamagate.server.app
from llamagate.adapters.codec_decoders import OnnxDecoderLoader
from llamagate.domain.audio_codecs import SNAC_24KHZ
from llamagate.domain.errors import DecoderUnavailable
from llamagate.domain.speech import DecoderSource
try:
    OnnxDecoderLoader().open(SNAC_24KHZ, DecoderSource(path={str(tmp_path)!r}))
except DecoderUnavailable as error:
    print(error)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pip install 'llamagate[tts]'" in done.stdout
