"""`omnistream demo` on a tiny random model saved like the shipped one: it runs end to end, and bad input exits 2."""

import numpy as np
import pytest
import soundfile as sf
from audio_fixtures import espeak_speech
from tokenizer_fixture import build_tokenizer

from omnistream import cli
from omnistream.positions import TokenIds
from omnistream.processor import Tokenizer
from omnistream.weights import save_omni
from test_save_omni import TOKENS, build

EXTRA = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|tts_pad|>", "<|tts_bos|>",
         "<|tts_eos|>")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("demo")
    backend = build_tokenizer(directory, 300, EXTRA)
    backend.add_tokens(["system", "user", "assistant"])
    backend.save(str(directory / "tokenizer.json"))
    tok = Tokenizer(directory)
    thinker, talker, c2w, codec = build(vocab=320)
    names = ("audio_pad", "image_pad", "video_pad", "vision_start", "audio_start")
    ids = [tok.token_to_id(f"<|{n}|>") for n in names]
    thinker.audio_token_id, thinker.image_token_id, thinker.video_token_id = ids[:3]
    talker.config.placeholders = TokenIds(*ids)
    tokens = type(TOKENS)(im_start_token_id=tok.token_to_id("<|im_start|>"),
                          im_end_token_id=tok.token_to_id("<|im_end|>"),
                          tts_pad_token_id=tok.token_to_id("<|tts_pad|>"), tts_bos_token_id=tok.token_to_id("<|tts_bos|>"),
                          tts_eos_token_id=tok.token_to_id("<|tts_eos|>"),
                          system_token_id=tok.encode("<|im_start|>system\n")[1],
                          user_token_id=tok.encode("<|im_start|>user\n")[1],
                          assistant_token_id=tok.encode("<|im_start|>assistant\n")[1])
    save_omni(directory, thinker, talker, c2w, tokens, codec)
    sf.write(directory / "question.wav", espeak_speech("What is two plus three?", sample_rate=24000), 24000)
    return directory


def run(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


def test_demo_answers_the_bundled_question(demo_dir, tmp_path, capsys):
    out = tmp_path / "answer.wav"
    code, io = run(["demo", "--checkpoint", str(demo_dir), "--out", str(out), "--max-new-tokens", "6",
                    "--max-audio-frames", "20"], capsys)
    assert code == 0, io.err
    pcm, rate = sf.read(out)
    assert rate == 24000 and pcm.size > 0 and np.isfinite(pcm).all()
    for row in ("thinker first token", "talker first frame", "first audio packet", "RTF"):
        assert row in io.err


def test_demo_explains_bad_input(demo_dir, tmp_path, capsys):
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(32000, dtype=np.float32), 16000)
    text = tmp_path / "notes.txt"
    text.write_text("not audio")
    cases = [(["--audio", str(tmp_path / "missing.wav")], "no such file"),
             (["--audio", str(text)], "notes.txt"),
             (["--audio", str(silent)], "has no speech"),
             (["--checkpoint", str(tmp_path)], "no model at")]
    for extra, message in cases:
        argv = ["demo", "--checkpoint", str(demo_dir), "--out", str(tmp_path / "never.wav")] + extra
        code, io = run(argv, capsys)
        assert code == 2 and message in io.err, io.err
        assert not (tmp_path / "never.wav").exists()
