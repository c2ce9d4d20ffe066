"""save_omni / load_omni: a whole Qwen3.5-Omni-layout speaking model (hybrid Thinker + encoders, ARIA Talker,
iSTFT Code2Wav, audio tokenizer) round-trips through one checkpoint and speaks the same."""

import json

import numpy as np
import torch

from omnistream.audio.code2wav import Code2Wav, Code2WavConfig
from omnistream.audio.codec import AudioTokenizer, CodecConfig
from omnistream.config import tiny_audio, tiny_qwen35, tiny_vision
from omnistream.engine.session import SpeechSession, SpeechTokens
from omnistream.positions import TokenIds
from omnistream.talker import Talker
from omnistream.thinker import Thinker
from omnistream.train.talker_stages import demo_talker_config
from omnistream.voice import load_audio_tokenizer
from omnistream.weights import load_omni, save_omni
from reference import randomize

TOKENS = SpeechTokens(im_start_token_id=240, im_end_token_id=241, tts_pad_token_id=242, tts_bos_token_id=243,
                      tts_eos_token_id=244, system_token_id=245, user_token_id=246, assistant_token_id=247)


def build(vocab: int = 256):
    torch.manual_seed(0)
    thinker = Thinker(tiny_qwen35(vocab_size=vocab), tiny_audio(num_downsample=4, n_window=64, n_window_infer=256), 250,
                      tiny_vision(out_hidden_size=64), 251, 252)
    talker = Talker(demo_talker_config(64, 2, TokenIds(250, 251, 252, 253, 254), num_code_groups=4,
                                       codebook_size=64, size="tiny"))
    c2w = Code2Wav(Code2WavConfig.istft_demo(codebook_size=64, num_quantizers=4, hidden_size=32,
                                             num_attention_heads=2, num_key_value_heads=2, intermediate_size=48,
                                             istft_dim=32))
    codec = AudioTokenizer(CodecConfig(num_quantizers=4, codebook_size=64, codebook_dim=16, n_mels=40, mel_width=32,
                                       width=32, mel_layers=1, frame_layers=1), decoder=False)
    for i, m in enumerate((thinker, talker, c2w, codec)):
        randomize(m, seed=i)
    return thinker.eval(), talker.eval(), c2w.eval(), codec.eval()


def speak(thinker, talker, c2w):
    s = SpeechSession(thinker, talker, c2w, TOKENS, speaker="ava", thinker_eos_token_id=241,
                      thinker_max_new_tokens=8, talker_max_new_tokens=40)
    ids = torch.tensor([[240, 246, 10, 30, 31, 32, 241, 10, 240, 247, 10]])
    return s.run(ids)


def test_round_trip_speaks_the_same(tmp_path):
    thinker, talker, c2w, codec = build()
    save_omni(tmp_path, thinker, talker, c2w, TOKENS, codec, dtype=torch.float32)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["thinker_config"]["text_config"]["model_type"] == "qwen3_5_moe_text"
    assert raw["talker_config"]["interleave"] == "aria" and raw["code2wav_config"]["head"] == "istft"
    thinker2, talker2, c2w2, tokens2 = load_omni(tmp_path)
    assert tokens2 == TOKENS
    assert "linear_attention" in thinker2.lm.config.layer_types and thinker2.visual is not None
    a, b = speak(thinker, talker, c2w), speak(thinker2, talker2, c2w2)
    assert a.tokens == b.tokens and torch.equal(a.codes, b.codes) and a.codes.shape[1] > 0
    assert np.abs(a.pcm - b.pcm).max() < 1e-6
    wave = torch.randn(24000) * 0.1
    assert torch.equal(load_audio_tokenizer(tmp_path).encode(wave), codec.encode(wave))


def test_half_precision_halves_the_size(tmp_path):
    thinker, talker, c2w, codec = build()
    save_omni(tmp_path / "fp32", thinker, talker, c2w, TOKENS, codec, dtype=torch.float32)
    save_omni(tmp_path / "fp16", thinker, talker, c2w, TOKENS, codec)
    big = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    small = (tmp_path / "fp16" / "model.safetensors").stat().st_size
    assert small < 0.52 * big
    thinker2, talker2, c2w2, _ = load_omni(tmp_path / "fp16")
    res = speak(thinker2, talker2, c2w2)
    assert res.codes.shape[1] > 0 and np.isfinite(res.pcm).all()


def save_tiny_omni(directory):
    """A tiny random speaking model with its own tokenizer, saved the way `omnistream train export` saves one."""
    from omnistream.train.talker_data import speech_tokens
    from tokenizer_fixture import build_omni_tokenizer

    tok = build_omni_tokenizer(directory, 300)
    thinker, talker, c2w, codec = build(vocab=320)
    ids = [tok.token_to_id(f"<|{n}|>") for n in ("audio_pad", "image_pad", "video_pad", "vision_start",
                                                   "audio_start")]
    thinker.audio_token_id, thinker.image_token_id, thinker.video_token_id = ids[:3]
    talker.config.placeholders = TokenIds(*ids)
    save_omni(directory, thinker, talker, c2w, speech_tokens(tok), codec)
    return directory
