"""The training loop every stage shares: AdamW, warm-up + cosine schedule, clipping, resumable checkpoints.

A stage (see stages.py) says which module trains, what batch a step sees and what loss it pays. Batches are a
pure function of (seed, step, rank), so a run stopped at any step and resumed from its checkpoint continues
bit for bit as if it had never stopped. Under torchrun the module is sharded with FSDP2 (distributed.py) and
each rank takes its share of every global batch; the loss curve follows the single-process one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from . import distributed as dist
from .plot import plot_curves

CHECKPOINT = "checkpoint.pt"


class TrainError(ValueError):
    """A training request that cannot run: bad settings, a checkpoint from another stage, an unusable resume."""


@dataclass
class TrainConfig:
    """Optimiser and bookkeeping settings of one run."""

    steps: int = 100
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup: int = 10
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    save_every: int = 50
    precision: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU; or "fp32" / "bf16"
    progress: bool = True

    def __post_init__(self):
        if self.steps < 0:
            raise TrainError(f"steps must be 0 or more, got {self.steps}")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise TrainError(f"lr must be a positive number, got {self.lr}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise TrainError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.save_every < 1 or self.log_every < 1:
            raise TrainError("save_every and log_every must be at least 1")


class Stage(Protocol):
    """One training stage: its trainable module, its batches and its loss."""

    name: str

    def module(self) -> nn.Module:
        """The module whose trainable parameters this stage optimises (frozen parts have requires_grad False)."""
        ...

    def batch(self, step: int, rank: int, world: int) -> Any:
        """This rank's share of the global batch of `step`; deterministic in (stage seed, step, rank, world)."""
        ...

    def loss(self, module: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Losses of one batch; 'loss' is the one optimised, the others are logged."""
        ...

    def items(self, batch: Any) -> int:
        """Items (or tokens) in a batch, for the throughput shown."""
        ...


@dataclass
class History:
    """Logged losses per step and the wall time of the run so far."""

    steps: list[int] = field(default_factory=list)
    losses: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, step: int, values: dict[str, float]) -> None:
        self.steps.append(step)
        for k, v in values.items():
            self.losses.setdefault(k, []).append(v)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(cfg.steps - cfg.warmup, 1)
    cos = 0.5 * (1 + math.cos(math.pi * min(step - cfg.warmup, span) / span))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


def _autocast(cfg: TrainConfig, device: torch.device):
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _save(path: Path, stage: Stage, module: nn.Module, opt: torch.optim.Optimizer, step: int, history: History,
          cfg: TrainConfig) -> None:
    model_state, opt_state = dist.full_state(module, opt)
    if dist.rank() == 0:
        tmp = path.with_suffix(".tmp")
        torch.save({"stage": stage.name, "step": step, "model": model_state, "optimizer": opt_state,
                    "history": asdict(history), "config": asdict(cfg)}, tmp)
        tmp.replace(path)  # never a half-written checkpoint
    dist.barrier()


def _resume(path: Path, stage: Stage, module: nn.Module, opt: torch.optim.Optimizer) -> tuple[int, History]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which and why
        raise TrainError(f"cannot resume from {path}: {type(e).__name__}: {e}") from e
    if state.get("stage") != stage.name:
        raise TrainError(f"{path} is a checkpoint of stage {state.get('stage')!r}, not {stage.name!r}; "
                         f"use another --out directory")
    dist.load_full_state(module, opt, state["model"], state["optimizer"])
    h = state["history"]
    return state["step"], History(h["steps"], h["losses"], h["seconds"])


def train(stage: Stage, out: str | Path, cfg: TrainConfig, resume: bool = True, stop_at: int | None = None) -> History:
    """Run `stage` up to cfg.steps optimiser steps, checkpointing into `out` (resuming from it when asked).

    `stop_at` ends the run early after that step, with a checkpoint, as a stop would; the schedule is unchanged.
    With cfg.steps 0 the checkpoint is the stage's start as it is (a warm start's model taken as this stage's)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    module = stage.module()
    if torch.cuda.is_available() and not dist.launched():
        module = module.cuda()
    module = dist.wrap(module)
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise TrainError(f"stage {stage.name!r} has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    path = out / CHECKPOINT
    start, history = (0, History())
    if resume and path.exists():
        start, history = _resume(path, stage, module, opt)
    if cfg.steps == 0 and start == 0:
        _save(path, stage, module, opt, 0, history, cfg)
    device = next(module.parameters()).device
    bar = None
    if cfg.progress and dist.rank() == 0:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=stage.name, unit="step", dynamic_ncols=True)
    t0, items, sums, count = time.perf_counter(), 0, {}, 0
    module.train()
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    for step in range(start, end):
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, step)
        batch = stage.batch(step, dist.rank(), dist.world())
        with _autocast(cfg, device):
            losses = stage.loss(module, batch)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise TrainError(f"stage {stage.name!r}: loss is {loss.item()} at step {step}; lower the lr "
                             f"(now {learning_rate(cfg, step):.2e}) or check the data")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        dist.sync_replicated(module)
        norm = dist.clip_grad_norm(params, cfg.grad_clip)
        opt.step()
        items += stage.items(batch) * dist.world()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + dist.mean(v.detach().float())
        sums["grad_norm"] = sums.get("grad_norm", 0.0) + norm
        count += 1
        done = step + 1
        if done % cfg.log_every == 0 or done == end:
            history.add(done, {k: v / count for k, v in sums.items()})
            elapsed = time.perf_counter() - t0
            if bar is not None:
                bar.set_postfix(loss=f"{sums['loss'] / count:.4f}", items_s=f"{items / max(elapsed, 1e-9):.1f}")
            sums, count = {}, 0
        if bar is not None:
            bar.update(1)
        if done % cfg.save_every == 0 or done == end:
            history.seconds += time.perf_counter() - t0
            t0, items = time.perf_counter(), 0
            _save(path, stage, module, opt, done, history, cfg)
            if dist.rank() == 0:
                plot_curves(history.steps, history.losses, out / "loss.png", title=stage.name)
                (out / "history.json").write_text(json.dumps(asdict(history)))
    if bar is not None:
        bar.close()
    return history
