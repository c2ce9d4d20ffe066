"""A toy stage for the training-loop tests; run as a script under torchrun to train it sharded."""

import json
import sys

import torch
from torch import nn

from omnistream.train import TrainConfig, train


class Toy(nn.Module):
    """Three residual MLP blocks and a head: enough structure for FSDP2 to shard per block."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) for _ in range(3))
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        for b in self.blocks:
            x = x + b(x)
        return self.head(x)[:, 0]


class ToyStage:
    """Regress a fixed random nonlinear target from Gaussian inputs; global batch 8, split across ranks."""

    name = "toy"

    def __init__(self, seed: int = 0, batch_size: int = 8, nan_at: int | None = None):
        self.seed, self.batch_size, self.nan_at = seed, batch_size, nan_at
        g = torch.Generator().manual_seed(1234)
        self.w = torch.randn(16, generator=g)

    def module(self):
        torch.manual_seed(self.seed)
        return Toy()

    def batch(self, step, rank, world):
        g = torch.Generator().manual_seed(self.seed * 100_003 + step)
        x = torch.randn(self.batch_size, 16, generator=g)
        y = torch.tanh(0.25 * (x @ self.w))
        share = self.batch_size // world
        return x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]

    def loss(self, module, batch):
        x, y = batch
        loss = (module(x) - y).pow(2).mean()
        if self.nan_at is not None:
            loss = loss * float("nan")
        return {"loss": loss, "abs": (module(x) - y).abs().mean()}

    def items(self, batch):
        return batch[0].shape[0]


if __name__ == "__main__":
    out = sys.argv[1]
    history = train(ToyStage(), out, TrainConfig(steps=30, lr=1e-2, warmup=3, log_every=1, save_every=10,
                                                 progress=False), resume="--resume" in sys.argv)
    import omnistream.train.distributed as dist

    if dist.rank() == 0:
        with open(f"{out}/losses.json", "w") as f:
            json.dump(history.losses["loss"], f)
