"""`load_omni` + `omnistream generate --speak`: a saved full Qwen3-Omni checkpoint speaks like transformers."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_fixtures import espeak_speech
from tokenizer_fixture import build_tokenizer

from omnistream import cli
from omnistream.config import ConfigError
from omnistream.engine.session import AudioChunk, SpeechSession, TextDelta
from omnistream.processor import Tokenizer
from omnistream.weights import load_omni
from reference import randomize
from test_session import THINKER_TOKENS, TALKER_TOKENS, hf_omni_config, reference

VOCAB = 320
TIMING_ROWS = ("preprocessing", "thinker first token", "talker first frame", "MTP per frame", "Code2Wav per frame",
               "first audio packet", "RTF")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny full model saved with save_pretrained, plus a tokenizer whose ids the config's special ids use."""
    from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as om

    directory = tmp_path_factory.mktemp("omni")
    backend = build_tokenizer(directory, VOCAB - 8)
    backend.add_tokens(["system", "user", "assistant"])  # one id per role, as in the release vocabulary
    backend.save(str(directory / "tokenizer.json"))
    tok = Tokenizer(directory)
    assert tok.vocab_size <= VOCAB - 3
    cfg = hf_omni_config()
    cfg.thinker_config.text_config.vocab_size = VOCAB
    cfg.im_start_token_id = tok.token_to_id("<|im_start|>")
    cfg.im_end_token_id = tok.token_to_id("<|im_end|>")
    cfg.user_token_id = tok.encode("<|im_start|>user\n")[1]
    cfg.assistant_token_id = tok.encode("<|im_start|>assistant\n")[1]
    cfg.system_token_id = tok.encode("<|im_start|>system\n")[1]
    cfg.tts_pad_token_id, cfg.tts_bos_token_id, cfg.tts_eos_token_id = VOCAB - 3, VOCAB - 2, VOCAB - 1
    for part in (cfg.thinker_config, cfg.talker_config):  # the tokenizer's own audio markers
        part.audio_token_id = tok.token_to_id("<|audio_pad|>")
        part.audio_start_token_id = tok.token_to_id("<|audio_start|>")
    torch.manual_seed(0)
    hf = om.Qwen3OmniMoeForConditionalGeneration(cfg)
    randomize(hf, seed=11)
    with torch.no_grad():
        for name, p in hf.code2wav.named_parameters():
            if name.endswith(("layer_scale.scale", "gamma")):
                p.add_(1.0)
    hf.set_attn_implementation("eager")
    hf.set_experts_implementation("eager")
    hf = hf.float().eval()
    hf.save_pretrained(directory)
    return hf, directory, tok


def test_load_omni_matches_reference_generate(saved):
    hf, directory, tok = saved
    thinker, talker, c2w, tokens = load_omni(directory)
    assert tokens.im_start_token_id == tok.token_to_id("<|im_start|>")
    ids = torch.tensor([tok.encode_chat([{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Hello, world!"}])])
    eos = tokens.im_end_token_id
    ref_tokens, ref_codes, ref_wav = reference(hf, ids, "Ethan", eos=eos)
    s = SpeechSession(thinker, talker, c2w, tokens, speaker="Ethan", thinker_eos_token_id=eos,
                      thinker_max_new_tokens=THINKER_TOKENS, talker_max_new_tokens=TALKER_TOKENS)
    events = list(s.speak(ids))
    assert [e.token_id for e in events if isinstance(e, TextDelta)] == ref_tokens
    assert ref_codes.shape[-1] >= 2
    assert torch.equal(s.codes, ref_codes)
    pcm = np.concatenate([e.pcm for e in events if isinstance(e, AudioChunk)])
    assert pcm.shape == tuple(ref_wav.shape) and np.abs(pcm - ref_wav.numpy()).max() < 1e-4


def test_cli_speak_writes_wav_and_timings(saved, tmp_path, capsys):
    _, directory, _ = saved
    out = tmp_path / "out.wav"
    assert cli.main(["generate", "--checkpoint", str(directory), "--prompt", "Hello, world!", "--speak", str(out),
                     "--max-new-tokens", str(THINKER_TOKENS), "--max-audio-frames", str(TALKER_TOKENS)]) == 0
    captured = capsys.readouterr()
    pcm, rate = sf.read(out, dtype="float32")
    assert rate == 24000 and pcm.ndim == 1 and pcm.size > 0
    frames = int(next(line for line in captured.err.splitlines() if line.startswith("audio")).split()[1])
    _, talker, c2w, _ = load_omni(directory)
    assert frames >= 1 and pcm.size == c2w.config.num_samples(frames)
    for row in TIMING_ROWS:
        assert row in captured.err
    assert captured.out.endswith("\n")


def test_cli_unknown_voice_lists_known_voices(saved, tmp_path, capsys):
    _, directory, _ = saved
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--checkpoint", str(directory), "--prompt", "Hi", "--speak", str(tmp_path / "x.wav"),
                  "--voice", "nosuch"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "chelsie, ethan" in err
    assert not (tmp_path / "x.wav").exists()


def test_text_only_checkpoint_cannot_speak(saved, tmp_path, capsys):
    _, directory, _ = saved
    raw = json.loads((directory / "config.json").read_text())
    other = tmp_path / "textonly"
    other.mkdir()
    for f in directory.iterdir():
        if f.name != "config.json":
            (other / f.name).symlink_to(f)
    del raw["talker_config"], raw["code2wav_config"]
    (other / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="cannot speak"):
        load_omni(other)
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--checkpoint", str(other), "--prompt", "Hi", "--speak", str(tmp_path / "x.wav")])
    assert e.value.code == 2 and "cannot speak" in capsys.readouterr().err


def _run(argv, capsys):
    """cli.main's exit status and stderr."""
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_cli_speaks_about_an_audio_prompt(saved, tmp_path, capsys, speech_wav):
    _, directory, _ = saved
    out = tmp_path / "a.wav"
    code, err = _run(["generate", "--checkpoint", str(directory), "--prompt", "What was said?", "--audio",
                      str(speech_wav), "--speak", str(out), "--max-new-tokens", "5", "--max-audio-frames", "6"], capsys)
    assert code == 0, err
    pcm, rate = sf.read(out, dtype="float32")
    frames = int(next(line for line in err.splitlines() if line.startswith("audio")).split()[1])
    assert rate == 24000 and frames >= 1 and pcm.size == load_omni(directory)[2].config.num_samples(frames)


@pytest.fixture(scope="module")
def with_codec(saved, tmp_path_factory):
    """The saved checkpoint plus a random audio tokenizer whose codes the tiny Code2Wav consumes."""
    from omnistream.audio.codec import AudioTokenizer, CodecConfig
    from omnistream.voice import save_audio_tokenizer

    _, directory, _ = saved
    other = tmp_path_factory.mktemp("with_codec")
    for f in directory.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    torch.manual_seed(3)
    codec = AudioTokenizer(CodecConfig(num_quantizers=4, codebook_size=64, codebook_dim=16, n_mels=40, mel_width=32,
                                       width=32, mel_layers=1, frame_layers=1, decoder_width=32), decoder=False)
    save_audio_tokenizer(codec, other)
    return other


def test_cli_voice_clone_speaks_and_bad_clips_are_explained(saved, with_codec, tmp_path, capsys, speech_wav):
    _, plain, _ = saved
    base = ["generate", "--checkpoint", str(with_codec), "--prompt", "Hi", "--max-new-tokens", "5",
            "--max-audio-frames", "6"]
    out = tmp_path / "clone.wav"
    code, err = _run(base + ["--speak", str(out), "--voice-clone", str(speech_wav), "--voice-description",
                             "a calm voice"], capsys)
    assert code == 0, err
    assert sf.read(out)[0].size > 0
    short = tmp_path / "short.wav"
    sf.write(short, sf.read(speech_wav, dtype="float32")[0][:4000], sf.info(speech_wav).samplerate)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    cases = [(short, "at least 1.0 s"), (corrupt, "corrupt.wav"), (empty, "empty.wav")]
    for clip, message in cases:
        target = tmp_path / f"never-{clip.stem}.wav"
        code, err = _run(base + ["--speak", str(target), "--voice-clone", str(clip)], capsys)
        assert code == 2 and message in err and not target.exists(), err
    code, err = _run(["generate", "--checkpoint", str(plain), "--prompt", "Hi", "--speak", str(tmp_path / "n.wav"),
                      "--voice-clone", str(speech_wav)], capsys)
    assert code == 2 and "no audio tokenizer" in err
    code, err = _run(base + ["--speak", str(tmp_path / "n.wav"), "--voice-clone", str(speech_wav), "--voice",
                             "ethan"], capsys)
    assert code == 2 and "cannot be used together" in err


def test_role_ids_must_match_the_tokenizer(saved, tmp_path, capsys):
    _, directory, tok = saved
    other = tmp_path / "roles"
    other.mkdir()
    for f in directory.iterdir():
        if f.name != "config.json":
            (other / f.name).symlink_to(f)
    raw = json.loads((directory / "config.json").read_text())
    raw["user_token_id"] = raw["user_token_id"] + 1
    (other / "config.json").write_text(json.dumps(raw))
    code, err = _run(["generate", "--checkpoint", str(other), "--prompt", "Hi", "--speak", str(tmp_path / "x.wav")],
                     capsys)
    assert code == 2 and "user_token_id" in err and "could not find the user turns" in err


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory):
    """About 2.5 s of espeak-ng speech written as a 22050 Hz wav."""
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    sf.write(path, espeak_speech("The quick brown fox jumps over the lazy dog.", sample_rate=22050), 22050)
    return path
