"""Voice prompts for zero-shot cloning: clip checks, silence trimming, codes, codec checkpoint save/load."""

import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_fixtures import espeak_speech
from safetensors.torch import save_file

from omnistream.audio.codec import AudioTokenizer, CodecConfig
from omnistream.audio.io import AudioInputError
from omnistream.voice import (VoiceCloneError, VoicePrompt, check_voice_prompt, encode_voice_clip,
                              load_audio_tokenizer, save_audio_tokenizer)
from omnistream.weights import CheckpointError

ESPEAK_RATE = 22050
FPS = 12.5  # codec frames per second: 24000 / 1920
CONFIG = CodecConfig(num_quantizers=4, codebook_size=64, hop=1920, codebook_dim=16, n_mels=32, mel_width=32,
                     width=48, decoder_width=32)


@pytest.fixture(scope="module")
def tokenizer():
    torch.manual_seed(0)
    return AudioTokenizer(CONFIG, decoder=False).eval()


@pytest.fixture(scope="module")
def speech():
    """About 2.8 s of espeak-ng speech at 22050 Hz (load_audio resamples it to 24 kHz)."""
    return espeak_speech("The quick brown fox jumps over the lazy dog.", sample_rate=ESPEAK_RATE)


def write_wav(path, x, rate=ESPEAK_RATE):
    sf.write(str(path), x, rate, subtype="FLOAT")
    return path


def sounding_seconds(x, rate=ESPEAK_RATE):
    """Span from the first to the last sample above -60 dB of the peak."""
    idx = np.flatnonzero(np.abs(x) > 1e-3 * np.abs(x).max())
    return (idx[-1] - idx[0]) / rate


def test_good_clip_by_path_and_bytes(tmp_path, tokenizer, speech):
    path = write_wav(tmp_path / "ref.wav", speech)
    prompt = encode_voice_clip(path, tokenizer, description_ids=[5, 7])
    q, t = prompt.codes.shape
    assert q == 4 and prompt.codes.dtype == torch.long
    assert 0 <= prompt.codes.min() and prompt.codes.max() < 64
    assert abs(t - sounding_seconds(speech) * FPS) <= 2, (t, sounding_seconds(speech))
    assert prompt.description_ids == [5, 7] and str(path) in prompt.source
    buf = io.BytesIO()
    sf.write(buf, speech, ESPEAK_RATE, format="WAV", subtype="FLOAT")
    assert torch.equal(encode_voice_clip(buf.getvalue(), tokenizer).codes, prompt.codes)
    check_voice_prompt(prompt, num_code_groups=4, codebook_size=64)  # fits a matching talker: no error


def test_trimming_removes_added_silence(tmp_path, tokenizer, speech):
    plain = encode_voice_clip(write_wav(tmp_path / "a.wav", speech), tokenizer)
    silence = np.zeros(ESPEAK_RATE * 2, np.float32)  # 2 s before and after
    padded_wave = np.concatenate([silence, speech, silence])
    padded = encode_voice_clip(write_wav(tmp_path / "b.wav", padded_wave), tokenizer)
    t = padded.codes.shape[1]
    assert abs(t - plain.codes.shape[1]) <= 1
    assert t <= len(padded_wave) / ESPEAK_RATE * FPS - 45  # ~50 of the padded clip's frames are silence
    # a -70 dBFS hiss (not digital silence) around the speech is trimmed too
    hiss = (10 ** (-70 / 20) * np.random.default_rng(0).standard_normal(len(padded_wave))).astype(np.float32)
    noisy = encode_voice_clip(padded_wave + hiss, tokenizer, sample_rate=ESPEAK_RATE)
    assert abs(noisy.codes.shape[1] - plain.codes.shape[1]) <= 1


@pytest.mark.parametrize("case, cause_message", [
    ("empty file", "empty (0 bytes)"),
    ("zero-length wav", "empty (0 samples)"),
    ("corrupt bytes", "could not be decoded"),
])
def test_unreadable_clips(tmp_path, tokenizer, case, cause_message):
    if case == "empty file":
        source = tmp_path / "empty.wav"
        source.write_bytes(b"")
    elif case == "zero-length wav":
        source = write_wav(tmp_path / "zero.wav", np.zeros(0, np.float32))
    else:
        source = b"RIFF not really a wave file" * 40
    with pytest.raises(VoiceCloneError, match="voice clip") as info:
        encode_voice_clip(source, tokenizer)
    assert isinstance(info.value.__cause__, AudioInputError)
    assert cause_message in str(info.value)
    if not isinstance(source, bytes):
        assert str(source) in str(info.value)


def test_nan_array(tokenizer):
    wave = np.zeros(48000, np.float32)
    wave[100] = np.nan
    with pytest.raises(VoiceCloneError, match="non-finite") as info:
        encode_voice_clip(wave, tokenizer, sample_rate=24000)
    assert isinstance(info.value.__cause__, AudioInputError) and "(48000,)" in str(info.value)


def test_too_short_and_too_long(tokenizer, speech):
    with pytest.raises(VoiceCloneError, match=r"lasts 0\.40 s; voice cloning needs at least 1\.0 s"):
        encode_voice_clip(speech[: int(0.4 * ESPEAK_RATE)], tokenizer, sample_rate=ESPEAK_RATE)
    with pytest.raises(VoiceCloneError, match="max_seconds=2.0"):
        encode_voice_clip(speech, tokenizer, sample_rate=ESPEAK_RATE, max_seconds=2.0)
    # 1.5 s in all but only ~0.5 s of speech once the silence is trimmed
    short = np.concatenate([np.zeros(ESPEAK_RATE, np.float32), speech[: ESPEAK_RATE // 2]])
    with pytest.raises(VoiceCloneError, match=r"after trimming silence \(1\.50 s in all\)"):
        encode_voice_clip(short, tokenizer, sample_rate=ESPEAK_RATE)


@pytest.mark.parametrize("level_db", [None, -90.0])  # digital silence, -90 dBFS white noise
def test_no_speech(tokenizer, level_db):
    wave = np.zeros(3 * 24000, np.float32)
    if level_db is not None:
        wave = (10 ** (level_db / 20) * np.random.default_rng(1).standard_normal(len(wave))).astype(np.float32)
    with pytest.raises(VoiceCloneError, match="has no speech") as info:
        encode_voice_clip(wave, tokenizer, sample_rate=24000)
    message = str(info.value)
    assert "dBFS" in message and "-60 dBFS" in message
    if level_db is not None:
        assert "RMS -90.0 dBFS" in message
    else:
        assert "RMS -inf dBFS" in message


def test_voice_prompt_validation_and_talker_check():
    with pytest.raises(VoiceCloneError, match="torch.long"):
        VoicePrompt(torch.zeros(4, 10))
    with pytest.raises(VoiceCloneError, match=r"\(1, 4, 10\)"):
        VoicePrompt(torch.zeros(1, 4, 10, dtype=torch.long))
    with pytest.raises(VoiceCloneError, match="non-negative ints"):
        VoicePrompt(torch.zeros(4, 10, dtype=torch.long), description_ids=[1, -2])
    prompt = VoicePrompt(torch.arange(40).view(4, 10), source="ref.wav")
    with pytest.raises(VoiceCloneError, match="ref.wav: codes have 4 codebooks per frame but the talker predicts 16"):
        check_voice_prompt(prompt, num_code_groups=16, codebook_size=2048)
    with pytest.raises(VoiceCloneError, match=r"span \[0, 39\] .* have 32 entries"):
        check_voice_prompt(prompt, num_code_groups=4, codebook_size=32)


def test_save_load_round_trip_empty_dir(tmp_path, tokenizer, speech):
    path = save_audio_tokenizer(AudioTokenizer(CONFIG, decoder=True).eval(), tmp_path / "ckpt")  # decoder dropped
    loaded = load_audio_tokenizer(tmp_path / "ckpt")
    assert loaded.decoder is None and not loaded.training and loaded.config == CONFIG
    assert path.name == "audio_tokenizer.safetensors"
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text()) == {"codec_config": CONFIG.__dict__}
    save_audio_tokenizer(tokenizer, tmp_path / "ckpt")  # overwrites file and config
    loaded = load_audio_tokenizer(tmp_path / "ckpt")
    a = encode_voice_clip(speech, tokenizer, sample_rate=ESPEAK_RATE).codes
    assert torch.equal(encode_voice_clip(speech, loaded, sample_rate=ESPEAK_RATE).codes, a)


def test_save_load_into_sharded_checkpoint(tmp_path, tokenizer, speech):
    save_file({"model.embed_tokens.weight": torch.zeros(3, 2)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"lm_head.weight": torch.zeros(3, 2)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                            "lm_head.weight": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_omni_moe", "hidden_size": 2}))
    save_audio_tokenizer(tokenizer, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "qwen3_omni_moe" and config["hidden_size"] == 2
    assert config["codec_config"]["num_quantizers"] == 4
    loaded = load_audio_tokenizer(tmp_path)
    a = encode_voice_clip(speech, tokenizer, sample_rate=ESPEAK_RATE).codes
    assert torch.equal(encode_voice_clip(speech, loaded, sample_rate=ESPEAK_RATE).codes, a)


def test_codec_tensors_inside_a_shard(tmp_path, tokenizer):
    tensors = {"audio_tokenizer." + k: v for k, v in tokenizer.state_dict().items()}
    tensors["thinker.lm_head.weight"] = torch.zeros(3, 2)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"codec_config": CONFIG.__dict__}))
    loaded = load_audio_tokenizer(tmp_path)
    assert torch.equal(loaded.quantizer.codebooks, tokenizer.quantizer.codebooks)


def test_missing_or_broken_codec(tmp_path, tokenizer):
    save_file({"model.embed_tokens.weight": torch.zeros(3, 2)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_omni_moe"}))
    with pytest.raises(CheckpointError, match=r"has no audio tokenizer \(codec encoder\): voice cloning needs one"):
        load_audio_tokenizer(tmp_path)
    path = save_audio_tokenizer(tokenizer, tmp_path)
    path.unlink()  # config says there is a codec but its tensors are gone
    with pytest.raises(CheckpointError, match=r"has no audio tokenizer .*no 'audio_tokenizer\.\*' tensors"):
        load_audio_tokenizer(tmp_path)
    state = {"audio_tokenizer." + k: v for k, v in tokenizer.state_dict().items() if k != "encoder.proj.bias"}
    state["audio_tokenizer.decoder.extra"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"missing: encoder\.proj\.bias(.|\n)*unexpected: decoder\.extra"):
        load_audio_tokenizer(tmp_path)
    save_audio_tokenizer(tokenizer, tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"audio_tokenizer\.safetensors: (unreadable|.*truncated)"):
        load_audio_tokenizer(tmp_path)
