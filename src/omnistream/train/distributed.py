"""Distributed helpers: FSDP2 sharding under torchrun (gloo on CPU, nccl on CUDA), full-state checkpoints.

Without torchrun (no WORLD_SIZE in the environment) every helper is the single-process identity.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as td
from torch import nn


def launched() -> bool:
    """Whether this process was started by torchrun with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> None:
    """Join the process group torchrun set up (gloo on CPU, nccl when CUDA is present); idempotent."""
    if launched() and not td.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        td.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def rank() -> int:
    """This process's rank (0 alone)."""
    return td.get_rank() if td.is_initialized() else 0


def world() -> int:
    """Number of ranks (1 alone)."""
    return td.get_world_size() if td.is_initialized() else 1


def barrier() -> None:
    """Wait for every rank."""
    if td.is_initialized():
        td.barrier()


def mean(x: torch.Tensor) -> float:
    """Mean of a scalar over ranks."""
    if td.is_initialized():
        x = x.clone()
        td.all_reduce(x)
        x /= world()
    return float(x)


def wrap(module: nn.Module) -> nn.Module:
    """Shard every direct child with parameters, then the root, with FSDP2 when launched; else unchanged."""
    init()
    if not td.is_initialized():
        return module
    from torch.distributed.fsdp import fully_shard

    if torch.cuda.is_available():
        module = module.cuda()
    for child in module.modules():
        if child is not module and isinstance(child, nn.ModuleList):
            for block in child:
                if any(p.requires_grad for p in block.parameters()):
                    fully_shard(block)
    fully_shard(module)
    return module


def full_state(module: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts on the CPU (gathered to every rank when sharded)."""
    if not td.is_initialized():
        return module.state_dict(), opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(module, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(module: nn.Module, opt: torch.optim.Optimizer, model_state: dict, opt_state: dict) -> None:
    """Load unsharded state dicts into a possibly sharded module and its optimizer."""
    if not td.is_initialized():
        module.load_state_dict(model_state)
        opt.load_state_dict(opt_state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(module, opt, model_state_dict=model_state, optim_state_dict=opt_state,
                   options=StateDictOptions(full_state_dict=True))
