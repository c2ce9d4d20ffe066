"""The shared training loop: loss falls, resume is exact, checkpoints are checked, FSDP2 follows one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from omnistream.train import TrainConfig, TrainError, learning_rate, train
from train_toy import ToyStage

QUIET = dict(progress=False, log_every=1)


def test_loss_falls_and_curves_are_written(tmp_path):
    h = train(ToyStage(), tmp_path, TrainConfig(steps=40, lr=1e-2, warmup=3, save_every=20, **QUIET))
    assert h.steps == list(range(1, 41))
    first, last = sum(h.losses["loss"][:5]) / 5, sum(h.losses["loss"][-5:]) / 5
    assert last < 0.5 * first
    img = Image.open(tmp_path / "loss.png")
    assert img.size == (800, 480) and len(set(img.getdata())) > 3  # axes and coloured lines, not a blank page
    assert json.loads((tmp_path / "history.json").read_text())["steps"][-1] == 40


def test_zero_steps_keep_the_start_as_the_checkpoint_and_a_later_run_goes_on_from_it(tmp_path):
    stage = ToyStage()
    start = {k: v.clone() for k, v in stage.module().state_dict().items()}
    h = train(ToyStage(), tmp_path, TrainConfig(steps=0, **QUIET))
    kept = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert h.steps == [] and kept["step"] == 0
    assert kept["model"].keys() == start.keys() and all(torch.equal(kept["model"][k], v) for k, v in start.items())
    assert train(ToyStage(), tmp_path, TrainConfig(steps=3, **QUIET)).steps == [1, 2, 3]


def test_resume_continues_bit_for_bit(tmp_path):
    cfg = dict(lr=1e-2, warmup=3, save_every=5, **QUIET)
    whole = train(ToyStage(), tmp_path / "a", TrainConfig(steps=12, **cfg))
    train(ToyStage(), tmp_path / "b", TrainConfig(steps=12, **cfg), stop_at=7)  # a stop after step 7
    state7 = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert state7["step"] == 7
    resumed = train(ToyStage(), tmp_path / "b", TrainConfig(steps=12, **cfg))
    assert resumed.losses["loss"] == whole.losses["loss"]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    lrs = [learning_rate(cfg, s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_bad_runs_are_explained(tmp_path):
    with pytest.raises(TrainError, match="steps must be 0 or more"):
        TrainConfig(steps=-1)
    with pytest.raises(TrainError, match="loss is nan at step 0"):
        train(ToyStage(nan_at=0), tmp_path / "nan", TrainConfig(steps=3, **QUIET))
    train(ToyStage(), tmp_path / "c", TrainConfig(steps=2, **QUIET))
    other = ToyStage()
    other.name = "other"
    with pytest.raises(TrainError, match="checkpoint of stage 'toy', not 'other'"):
        train(other, tmp_path / "c", TrainConfig(steps=4, **QUIET))
    ckpt = tmp_path / "c" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(TrainError, match="cannot resume from .*checkpoint.pt"):
        train(ToyStage(), tmp_path / "c", TrainConfig(steps=4, **QUIET))


def test_fsdp2_under_torchrun_follows_the_single_process_curve(tmp_path):
    single = train(ToyStage(), tmp_path / "one", TrainConfig(steps=30, lr=1e-2, warmup=3, save_every=10,
                                                             **QUIET)).losses["loss"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29517", str(Path(__file__).parent / "train_toy.py"),
                          str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    sharded = json.loads((tmp_path / "two" / "losses.json").read_text())
    assert len(sharded) == 30
    assert max(abs(a - b) for a, b in zip(single, sharded)) < 1e-4
    ckpt = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 30 and set(ckpt["model"]) == set(ToyStage().module().state_dict())


def test_a_checkpoint_resumes_under_another_number_of_ranks(tmp_path):
    """Stopped alone at step 10, resumed under torchrun with 2 ranks, resumed alone again: the same curve as one
    uninterrupted run (the optimizer state is saved keyed by parameter name, which both layouts load)."""
    cfg = dict(steps=30, lr=1e-2, warmup=3, save_every=10, **QUIET)
    single = train(ToyStage(), tmp_path / "one", TrainConfig(**cfg)).losses["loss"]
    train(ToyStage(), tmp_path / "mixed", TrainConfig(**cfg), stop_at=10)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29519", str(Path(__file__).parent / "train_toy.py"),
                          str(tmp_path / "mixed"), "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    mixed = json.loads((tmp_path / "mixed" / "losses.json").read_text())
    assert len(mixed) == 30 and max(abs(a - b) for a, b in zip(single, mixed)) < 1e-4
    ckpt = torch.load(tmp_path / "mixed" / "checkpoint.pt", weights_only=False)
    assert all(isinstance(name, str) for name in ckpt["optimizer"]["state"])
    again = train(ToyStage(), tmp_path / "mixed", TrainConfig(**cfg))  # alone again, from the 2-rank checkpoint
    assert again.losses["loss"] == mixed
