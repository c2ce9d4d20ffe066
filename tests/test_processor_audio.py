"""Audio prompts: placeholder expansion, timestamps, positions, and `omnistream generate --audio` vs transformers."""

import json
import random

import pytest
import soundfile as sf
import torch

from audio_fixtures import harmonic_speechlike
from omnistream import cli
from omnistream.audio.encoder import num_audio_tokens
from omnistream.audio.features import log_mel
from omnistream.audio.io import load_audio
from omnistream.config import AudioConfig, tiny_omni
from omnistream.processor import AUDIO_PAD, Processor, TokenizerError, Tokenizer, text_position_ids
from reference import hf_thinker
from tokenizer_fixture import build_tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Qwen3-Omni thinker saved by transformers, with a tokenizer whose audio ids match its config."""
    path = tmp_path_factory.mktemp("omni")
    build_tokenizer(path, 320)
    tok = Tokenizer(path)
    ids = {"audio_token_id": tok.token_to_id(AUDIO_PAD), "audio_start_token_id": tok.token_to_id("<|audio_start|>"),
           "image_token_id": tok.token_to_id("<think>"), "video_token_id": tok.token_to_id("</think>"),
           "vision_start_token_id": tok.token_to_id("<|endoftext|>")}  # ids no prompt here contains
    hf = hf_thinker(tiny_omni(vocab_size=320), seed=11, token_ids=ids)
    hf.save_pretrained(path)
    wav = path / "speech.wav"
    sf.write(wav, harmonic_speechlike(2.3, 16000, seed=0), 16000)
    return path, hf, tok, wav


def audio_config(path):
    return AudioConfig.from_hf(json.loads((path / "config.json").read_text()))


def test_placeholders_expand_to_the_encoder_token_count(checkpoint):
    path, _, tok, wav = checkpoint
    cfg = audio_config(path)
    prompt = Processor(tok, cfg)([{"role": "user", "content": [{"type": "audio", "audio": str(wav)},
                                                               {"type": "text", "text": "What is this?"}]}])
    assert (prompt.input_ids == tok.token_to_id(AUDIO_PAD)).sum().item() == num_audio_tokens(230, cfg) == 30
    assert prompt.audio_lengths == [230]
    feats, _ = log_mel([load_audio(str(wav))], n_mels=cfg.num_mel_bins)
    assert torch.equal(prompt.audio_features, feats)


def test_timestamps_split_long_audio(checkpoint, tmp_path):
    path, _, tok, _ = checkpoint
    cfg = audio_config(path)
    wav = tmp_path / "long.wav"
    sf.write(wav, harmonic_speechlike(3.5, 16000, seed=1), 16000)
    prompt = Processor(tok, cfg, timestamp_every=1.0)([{"role": "user", "content": [{"type": "audio",
                                                                                     "audio": str(wav)}]}])
    ids = prompt.input_ids[0].tolist()
    pad = tok.token_to_id(AUDIO_PAD)
    text = tok.decode([t if t != pad else tok.encode("#")[0] for t in ids], skip_special_tokens=False)
    assert "#" * 13 + "<1.0 seconds>" + "#" * 13 + "<2.0 seconds>" + "#" * 13 + "<3.0 seconds>" + "#" * 7 in text
    assert ids.count(pad) == num_audio_tokens(350, cfg)
    with pytest.raises(TokenizerError, match="multiple of the encoder chunk"):
        Processor(tok, cfg, timestamp_every=1.5 + 1e-3)


def test_random_timestamps_for_training(checkpoint):
    path, _, tok, _ = checkpoint
    cfg = audio_config(path)
    proc = Processor(tok, cfg, timestamp_random_gap=(1.0, 3.0), rng=random.Random(5))
    marks = [proc.timestamp_frames(6000) for _ in range(20)]
    gaps = {b - a for m in marks for a, b in zip([0] + m, m)}
    assert gaps <= {100, 200, 300} and len(gaps) > 1  # whole chunks, drawn from the range
    assert all(m and m[-1] < 6000 for m in marks)
    ids = proc.audio_tokens(6000)
    assert ids.count(tok.token_to_id(AUDIO_PAD)) == num_audio_tokens(6000, cfg)


def test_audio_needs_an_audio_model(checkpoint):
    _, _, tok, wav = checkpoint
    with pytest.raises(TokenizerError, match="no audio encoder"):
        Processor(tok)([{"role": "user", "content": [{"type": "audio", "audio": str(wav)}]}])


def test_text_positions_match_reference_rope_index(checkpoint):
    _, hf, tok, _ = checkpoint
    pad = tok.token_to_id(AUDIO_PAD)
    ids = torch.tensor([[0, 0, 5, 6, pad, pad, pad, 7], [1, 2, 3, pad, pad, 4, 5, 6]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    ref, _ = hf.get_rope_index(ids, attention_mask=mask, audio_seqlens=torch.tensor([300, 200]))
    assert torch.equal(text_position_ids(mask), ref.long())


def test_generate_with_audio_matches_transformers(checkpoint, capsys):
    path, hf, tok, wav = checkpoint
    messages = [{"role": "user", "content": [{"type": "audio", "audio": str(wav)}, {"type": "text", "text": "Hi"}]}]
    prompt = Processor(tok, audio_config(path))(messages)
    frames = prompt.audio_lengths[0]
    with torch.no_grad():
        out = hf.generate(input_ids=prompt.input_ids, input_features=prompt.audio_features,
                          feature_attention_mask=torch.ones(1, frames, dtype=torch.long),
                          attention_mask=torch.ones_like(prompt.input_ids), max_new_tokens=12, min_new_tokens=12,
                          do_sample=False)[0, prompt.input_ids.shape[1]:].tolist()
    stops = [i for i, t in enumerate(out) if t in tok.eos_ids]
    want = tok.decode(out[: stops[0] + 1] if stops else out)
    assert cli.main(["generate", "--checkpoint", str(path), "--audio", str(wav), "--prompt", "Hi",
                     "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == want + "\n"


def test_bad_audio_file_is_a_clear_cli_error(checkpoint, tmp_path, capsys):
    path, _, _, _ = checkpoint
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00not really a wave file")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["generate", "--checkpoint", str(path), "--audio", str(broken), "--prompt", "Hi"])
    assert exit_.value.code == 2
    assert "broken.wav" in capsys.readouterr().err
