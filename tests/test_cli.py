"""`omnistream generate`: streamed stdout equals offline greedy generation; user errors exit 2 without a traceback."""

import io
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from tokenizer_fixture import build_tokenizer

from omnistream import cli
from omnistream.config import tiny_qwen35
from omnistream.engine import generate
from omnistream.processor import Tokenizer
from omnistream.thinker import ThinkerLM
from omnistream.weights import load_thinker, save_thinker

PROMPT = "Hello, 世界! How are you?"
SUMMARY = re.compile(r"first token after [\d.]+ ms \(preprocessing \+ prefill of \d+ tokens\); "
                     r"generated \d+ tokens, decode [\d.]+ tokens/s")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt")
    build_tokenizer(directory, 320)
    torch.manual_seed(0)
    model = ThinkerLM(tiny_qwen35(vocab_size=320, eos_token_id=Tokenizer(directory).token_to_id("<|im_end|>")))
    for p in model.parameters():
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.1)
    save_thinker(model, directory)
    return directory


def offline(directory, prompt=PROMPT, system=None, raw=False, max_new_tokens=24):
    """Greedy `engine.generate` for the same prompt, cut after the first eos id: (text, token count)."""
    tok = Tokenizer(directory)
    model, _ = load_thinker(directory)
    if raw:
        ids = tok.encode(prompt)
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        ids = tok.encode_chat(messages)
    stops = tok.stop_ids(model.config.eos_token_ids)
    result = generate(model, torch.tensor([ids]), max_new_tokens=max_new_tokens, stop_tokens=stops)
    tokens = result.tokens[0, :result.lengths[0]].tolist()
    return tok.decode(tokens), tokens


def args(directory, *extra):
    return ["generate", "--checkpoint", str(directory), "--prompt", PROMPT, "--max-new-tokens", "24", *extra]


@pytest.mark.parametrize("extra, kw", [([], {}), (["--system", "Be brief."], {"system": "Be brief."}),
                                       (["--raw"], {"raw": True})])
def test_streamed_stdout_equals_greedy_generate(checkpoint, capsys, extra, kw):
    text, tokens = offline(checkpoint, **kw)
    assert len(tokens) > 4 and text.strip()
    assert cli.main(args(checkpoint, *extra)) == 0
    out, err = capsys.readouterr()
    assert out == text + "\n"
    assert SUMMARY.search(err) and f"generated {len(tokens)} tokens" in err


def test_text_is_flushed_piece_by_piece(checkpoint, monkeypatch):
    class Recorder(io.StringIO):
        def __init__(self):
            super().__init__()
            self.flushed = []

        def flush(self):
            self.flushed.append(self.getvalue())

    out = Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    cli.main(args(checkpoint))
    text, _ = offline(checkpoint)
    assert out.getvalue() == text + "\n"
    assert len(set(out.flushed)) > 4  # the text grew over many flushes, not in one write at the end


def test_stops_at_the_tokenizer_eos_token(checkpoint, tmp_path, capsys):
    _, tokens = offline(checkpoint, max_new_tokens=24)
    cut = next(i for i in range(2, len(tokens)) if tokens[i] not in tokens[:i])  # first new token after two
    for name in os.listdir(checkpoint):
        shutil.copy(checkpoint / name, tmp_path / name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["eos_token"] = Tokenizer(tmp_path).backend.id_to_token(tokens[cut])
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert cli.main(args(tmp_path)) == 0
    out, err = capsys.readouterr()
    assert out == Tokenizer(tmp_path).decode(tokens[:cut + 1]) + "\n"
    assert f"generated {cut + 1} tokens" in err


@pytest.mark.parametrize("case, extra, message", [
    ("missing dir", [], "checkpoint directory .*nope does not exist"),
    ("no config", [], "has no config.json"),
    ("no tokenizer", [], "has no tokenizer.json"),
    ("empty prompt", ["--prompt", "  "], "--prompt is empty"),
    ("bad temperature", ["--temperature", "-1"], "temperature must be >= 0"),
    ("no new tokens", ["--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
    ("transcribe no clip", ["--transcribe"], "--transcribe writes down one clip: give exactly one --audio"),
    ("transcribe two clips", ["--transcribe", "--audio", "a.wav", "--audio", "b.wav"], "exactly one --audio"),
])
def test_user_errors_exit_2_with_a_message(checkpoint, tmp_path, capsys, case, extra, message):
    directory = checkpoint
    if case == "missing dir":
        directory = tmp_path / "nope"
    elif case == "no config":
        shutil.copy(checkpoint / "tokenizer.json", tmp_path / "tokenizer.json")
        directory = tmp_path
    elif case == "no tokenizer":
        shutil.copy(checkpoint / "config.json", tmp_path / "config.json")
        directory = tmp_path
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args(directory, *extra))
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("omnistream: error: ") and re.search(message, err), err
    assert "Traceback" not in err


def test_unknown_dtype_exits_2(checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args(checkpoint, "--dtype", "int8"))
    assert exit_info.value.code == 2
    assert "invalid choice: 'int8'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_without_cuda_exits_2(checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args(checkpoint, "--device", "cuda"))
    assert exit_info.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_python_dash_m_entry_point(checkpoint):
    text, _ = offline(checkpoint, max_new_tokens=8)
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run([sys.executable, "-m", "omnistream", *args(checkpoint)[:-2], "--max-new-tokens", "8"],
                          capture_output=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode("utf-8") == text + "\n"
    assert SUMMARY.search(done.stderr.decode())
