"""`omnistream demo` on a tiny random model saved like the shipped one: it runs end to end, and bad input exits 2."""

import numpy as np
import pytest
import soundfile as sf
from audio_fixtures import espeak_speech

from omnistream import cli
from test_save_omni import save_tiny_omni


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    directory = save_tiny_omni(tmp_path_factory.mktemp("demo"))
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
             (["--checkpoint", str(tmp_path)], "--checkpoint needs a directory with config.json")]
    for extra, message in cases:
        argv = ["demo", "--checkpoint", str(demo_dir), "--out", str(tmp_path / "never.wav")] + extra
        code, io = run(argv, capsys)
        assert code == 2 and message in io.err, io.err
        assert not (tmp_path / "never.wav").exists()


def test_demo_without_the_demo_model_says_how_to_get_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "DEMO_CHECKPOINT", tmp_path / "checkpoints" / "demo")
    code, io = run(["demo", "--checkpoint", str(tmp_path / "checkpoints" / "demo")], capsys)
    assert code == 2 and "make demo-model" in io.err and "--checkpoint DIR" in io.err, io.err
