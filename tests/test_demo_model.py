"""The shipped demo model end to end: `omnistream demo` answers each bundled spoken question (held-out voices and
questions) right, in text and as a 24 kHz wav, and prints the latency table."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from omnistream import cli
from omnistream.eval.metrics import answer_correct
from omnistream.processor import THINK_CLOSE

DEMO = Path(cli.DEMO_CHECKPOINT)
QUESTIONS = json.loads((DEMO / "questions.json").read_text(encoding="utf-8"))


def test_the_shipped_model_fits_its_budget():
    assert sum(f.stat().st_size for f in DEMO.iterdir()) <= 40e6
    assert [q["language"] for q in QUESTIONS] == ["en", "zh", "es"]


@pytest.mark.parametrize("question", QUESTIONS, ids=[q["language"] for q in QUESTIONS])
def test_the_demo_answers_its_bundled_question(question, tmp_path, capsys):
    out = tmp_path / "answer.wav"
    try:
        code = cli.main(["demo", "--audio", str(DEMO / question["audio"]), "--out", str(out)])
    except SystemExit as e:
        code = e.code
    io = capsys.readouterr()
    assert code == 0, io.err
    said = io.out.split(THINK_CLOSE)[-1].strip()
    assert THINK_CLOSE in io.out and answer_correct(said, question["answer"], question["language"]), (io.out, question)
    pcm, rate = sf.read(out)
    assert rate == 24000 and pcm.size > rate // 2 and np.isfinite(pcm).all() and np.abs(pcm).max() > 1e-3
    for row in ("thinker first token", "talker first frame", "first audio packet", "RTF"):
        assert row in io.err
