"""The speech rules (domain/speech.py): codec probes, prompts, request checks,
tokens to codec frames, and the streaming decode's windows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamagate.domain.audio_codecs import DAC_24KHZ, SNAC_24KHZ, AudioCodec, CodecShape
from llamagate.domain.chat import Sampling
from llamagate.domain.errors import InvalidArgument, NotSpeechModel
from llamagate.domain.speech import (
    CODEC_PROBES,
    CodecVocabulary,
    DecoderSource,
    FrameAssembler,
    SpeechRequest,
    check_speech,
    chunk_frames,
    decoder_source,
    next_window,
    require_speech,
    speech_call,
    speech_prompt,
    vocabulary_from,
    vocabulary_markers,
)

SNAC_VOCAB = CodecVocabulary(SNAC_24KHZ, tuple(128266 + slot * 4096 for slot in range(7)))
DAC_VOCAB = CodecVocabulary(DAC_24KHZ, (151_000, 152_024))


def test_probes_run_in_the_reference_order_and_skip_ids_past_the_vocabulary():
    assert [p.codec for p in CODEC_PROBES] == [AudioCodec.SNAC, AudioCodec.CSM, AudioCodec.WHISPER,
                                                AudioCodec.BICODEC, AudioCodec.DAC]
    snac = CODEC_PROBES[0]
    assert not snac.applies(49152) and snac.applies(156_940) and snac.applies(None)
    assert snac.matches(["<custom_token_2>", "<custom_token_3>"], [])
    assert not snac.matches(["<custom_token_2>", "hello"], [])
    dac = CODEC_PROBES[-1]
    assert dac.matches([], [1, 1]) and not dac.matches([], [1, 5]) and not dac.matches([], [1])


def test_each_codec_has_its_prompt_and_stops_and_only_orpheus_takes_a_voice():
    snac = speech_prompt(AudioCodec.SNAC, "Hi there.", "tara")
    assert snac.text == "<custom_token_3>tara: Hi there.<|eot_id|><custom_token_4>"
    assert snac.stop == ("<custom_token_2>",)
    assert speech_prompt(AudioCodec.SNAC, "Hi").text == "<custom_token_3>Hi<|eot_id|><custom_token_4>"
    dac = speech_prompt(AudioCodec.DAC, "Hi")
    assert dac.text == "<|im_start|>\n<|text_start|>Hi<|text_end|>\n<|audio_start|><|global_features_start|>\n"
    assert dac.stop == ("<|im_end|>", "<|audio_end|>")
    assert speech_prompt(AudioCodec.BICODEC, "Hi").stop == ("<|im_end|>", "</s>")
    with pytest.raises(NotSpeechModel):
        speech_prompt(AudioCodec.WHISPER, "Hi")
    with pytest.raises(InvalidArgument) as caught:
        check_speech(SpeechRequest("Hi", voice="tara"), AudioCodec.DAC)
    assert caught.value.field == "voice"


@pytest.mark.parametrize("codec", [AudioCodec.NONE, AudioCodec.CSM, AudioCodec.WHISPER, AudioCodec.BICODEC])
def test_only_snac_and_dac_models_speak_and_the_others_say_what_they_are(codec):
    with pytest.raises(NotSpeechModel) as caught:
        require_speech(codec, "m")
    assert "model m is" in str(caught.value)
    if codec is AudioCodec.CSM:
        assert "depth decoder" in str(caught.value)
    if codec is AudioCodec.WHISPER:
        assert "audio-input" in str(caught.value)


@pytest.mark.parametrize(("request_", "field"), [
    (SpeechRequest(""), "text"),
    (SpeechRequest("   "), "text"),
    (SpeechRequest("x" * 2001), "text"),
    (SpeechRequest("say <|eot_id|> now"), "text"),
    (SpeechRequest("say <custom_token_4> now"), "text"),
    (SpeechRequest("hi", voice="tara; rm"), "voice"),
    (SpeechRequest("hi", voice="a" * 65), "voice"),
    (SpeechRequest("hi", sampling=Sampling(temperature=-1)), "sampling.temperature"),
    (SpeechRequest("hi", sampling=Sampling(max_tokens=5000)), "sampling.max_tokens"),
])
def test_bad_requests_name_their_field(request_, field):
    with pytest.raises(InvalidArgument) as caught:
        check_speech(request_, AudioCodec.SNAC, slot_context=4096)
    assert caught.value.field == field


def test_text_of_the_limit_and_a_plain_voice_pass():
    check_speech(SpeechRequest("x" * 2000, voice="tara"), AudioCodec.SNAC)
    check_speech(SpeechRequest("Less < more > all, 3 < 4"), AudioCodec.DAC)


def test_the_call_uses_the_codec_sampling_unless_asked_and_fits_a_slot():
    call = speech_call(SpeechRequest("Hi", sampling=Sampling(stop=("END",))), AudioCodec.SNAC, slot_context=1000)
    assert call.max_tokens == 1000 and call.stop == ("<custom_token_2>", "END")
    assert call.sampling.temperature == 0.6 and call.sampling.repetition_penalty == 1.1
    asked = speech_call(SpeechRequest("Hi", sampling=Sampling(temperature=0.0, max_tokens=70), grammar="g"),
                        AudioCodec.DAC)
    assert asked.sampling.temperature == 0.0 and asked.sampling.top_k == 40
    assert asked.max_tokens == 70 and asked.grammar == "g"
    assert speech_call(SpeechRequest("Hi"), AudioCodec.DAC).max_tokens == 4500


def test_markers_locate_each_slot_and_a_broken_run_is_no_speech_model():
    markers = vocabulary_markers(SNAC_24KHZ)
    assert markers[:2] == ("<custom_token_10>", "<custom_token_4105>") and len(markers) == 14
    assert vocabulary_markers(DAC_24KHZ) == ("<|c1_0|>", "<|c1_1023|>", "<|c2_0|>", "<|c2_1023|>")
    ids = [start + offset for start in SNAC_VOCAB.starts for offset in (0, 4095)]
    assert vocabulary_from(SNAC_24KHZ, ids, "m") == SNAC_VOCAB
    with pytest.raises(NotSpeechModel):
        vocabulary_from(SNAC_24KHZ, ids[:-1], "m")  # a marker took several tokens
    with pytest.raises(NotSpeechModel):
        vocabulary_from(DAC_24KHZ, [5, 900, 2000, 3023], "m")  # c1's run is not contiguous


def _tokens(vocabulary: CodecVocabulary, frames: list[list[int]]) -> list[int]:
    return [vocabulary.starts[slot] + code for frame in frames for slot, code in enumerate(frame)]


def _frames(shape: CodecShape):
    slots = len(shape.slot_levels)
    return st.lists(st.lists(st.integers(0, shape.codebook_size - 1), min_size=slots, max_size=slots), max_size=12)


@given(frames=_frames(SNAC_24KHZ), cuts=st.lists(st.integers(0, 100), max_size=6), noise=st.integers(0, 127999))
def test_snac_tokens_in_any_pieces_become_orpheus_levels(frames, cuts, noise):
    tokens = _tokens(SNAC_VOCAB, frames)
    tokens.insert(len(tokens) // 2, noise)  # a non-code token anywhere is passed over
    assembler = FrameAssembler(SNAC_VOCAB)
    points = sorted(min(cut, len(tokens)) for cut in cuts)
    for start, stop in zip([0, *points], [*points, len(tokens)]):
        assembler.feed(tokens[start:stop])
    assert assembler.frames == len(frames) and assembler.dropped == 0
    levels = assembler.codes(0, len(frames))
    assert levels[0] == tuple(f[0] for f in frames)
    assert levels[1] == tuple(c for f in frames for c in (f[1], f[4]))
    assert levels[2] == tuple(c for f in frames for c in (f[2], f[3], f[5], f[6]))
    if frames:
        assert assembler.codes(len(frames) - 1, len(frames))[2] == tuple(frames[-1][i] for i in (2, 3, 5, 6))


@given(frames=_frames(DAC_24KHZ).filter(bool), frame=st.integers(0, 11), code=st.integers(0, 1023))
def test_a_code_out_of_order_drops_what_it_breaks_and_the_rest_stays_whole(frames, frame, code):
    frame = min(frame, len(frames) - 1)
    stray_c2 = _tokens(DAC_VOCAB, frames)
    stray_c2.insert(2 * frame, DAC_VOCAB.starts[1] + code)  # a c2 where a c1 is due: dropped alone
    assembler = FrameAssembler(DAC_VOCAB)
    assembler.feed(stray_c2)
    assert (assembler.frames, assembler.dropped) == (len(frames), 1)
    assert assembler.codes(0, len(frames)) == (tuple(f[0] for f in frames), tuple(f[1] for f in frames))
    second_c1 = _tokens(DAC_VOCAB, frames)
    second_c1.insert(2 * frame + 1, DAC_VOCAB.starts[0] + code)  # a c1 after a c1: the first is dropped
    assembler = FrameAssembler(DAC_VOCAB)
    assembler.feed(second_c1)
    assembler.finish()
    assert (assembler.frames, assembler.dropped) == (len(frames), 1)
    assert assembler.codes(frame, frame + 1) == ((code,), (frames[frame][1],))


def _play(shape: CodecShape, arrivals: list[int]) -> list[tuple[int, int, int, int, int]]:
    """Windows for frames arriving in these batches, then the end: (available, window...)."""
    seen, available, sent = [], 0, 0
    for batch in arrivals:
        available += batch
        while (w := next_window(shape, available, sent, finished=False)) is not None:
            seen.append((available, w.start, w.stop, w.keep_start, w.keep_stop))
            sent = w.keep_stop
    while (w := next_window(shape, available, sent, finished=True)) is not None:
        seen.append((available, w.start, w.stop, w.keep_start, w.keep_stop))
        sent = w.keep_stop
    return seen


@pytest.mark.parametrize("shape", [SNAC_24KHZ, DAC_24KHZ])
@given(arrivals=st.lists(st.integers(0, 40), max_size=30))
def test_windows_send_every_frame_once_in_order_with_full_context(shape, arrivals):
    windows, total, context = _play(shape, arrivals), sum(arrivals), shape.context_frames
    assert [w[3] for w in windows] == [0, *[w[4] for w in windows]][:len(windows)]  # each goes on where the last ended
    assert (windows[-1][4] if windows else 0) == total
    for i, (available, start, stop, keep_start, keep_stop) in enumerate(windows):
        assert keep_start < keep_stop <= available
        assert start == max(0, keep_start - context)
        last = i == len(windows) - 1
        assert stop == min(available, keep_stop + context)
        if not last:  # a streamed window waits for the context after it
            assert stop == keep_stop + context or available == total


@given(sent=st.integers(0, 10_000))
def test_chunks_grow_from_a_short_first_one_to_a_bound(sent):
    for shape in (SNAC_24KHZ, DAC_24KHZ):
        first, size = chunk_frames(shape, 0), chunk_frames(shape, sent)
        assert first * shape.frame_samples / shape.sample_rate <= 0.2
        assert first <= size <= max(first, round(1.5 * shape.sample_rate / shape.frame_samples))
        assert size >= min(sent, chunk_frames(shape, 10**9))


def test_decoder_sources_are_a_hub_file_or_a_path():
    assert decoder_source("onnx-community/snac_24khz-ONNX:onnx/decoder_model.onnx") == DecoderSource(
        repo="onnx-community/snac_24khz-ONNX", file="onnx/decoder_model.onnx")
    assert decoder_source("/opt/dac.onnx") == DecoderSource(path="/opt/dac.onnx")
    assert decoder_source("C:/x.onnx").path == "C:/x.onnx"
    with pytest.raises(InvalidArgument):
        decoder_source(" ")
