"""Distributed helpers: FSDP2 sharding under torchrun (gloo on CPU, nccl on CUDA), full-state checkpoints.

Without torchrun (no WORLD_SIZE in the environment) every helper is the single-process identity.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

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


CONDITIONAL = ("audio_tower", "visual")  # run only for batches with that medium


def wrap(module: nn.Module, conditional: tuple[str, ...] = CONDITIONAL) -> nn.Module:
    """With FSDP2 when launched (else unchanged): each trainable decoder layer (`*.layers[i]`) its own unit, the rest
    in the root unit, except the `conditional` submodules, which stay replicated (see `sync_replicated`).

    Every rank must run the same all-gathers in the same order: a decoder layer runs once per forward of its
    stack, on every rank; an encoder runs only for batches holding its medium, so it is not sharded at all."""
    init()
    if not td.is_initialized():
        return module
    from torch.distributed.fsdp import fully_shard

    if torch.cuda.is_available():
        module = module.cuda()
    replicated = [p for name, child in module.named_modules() if name.split(".")[-1] in conditional
                  for p in child.parameters()]  # a list: every rank must reduce them in the same order
    for name, child in module.named_modules():
        if name.split(".")[-1] != "layers" or not isinstance(child, nn.ModuleList):
            continue
        if any(part in conditional for part in name.split(".")):
            continue
        for block in child:
            if any(p.requires_grad for p in block.parameters()):
                fully_shard(block)
    fully_shard(module, ignored_params=set(replicated))
    module._replicated = [p for p in replicated if p.requires_grad]
    return module


def sync_replicated(module: nn.Module) -> None:
    """Average the gradients of the replicated (unsharded) parameters over ranks; a rank that did not use one
    (its batch had no such medium) contributes zeros, and a parameter no rank used keeps no gradient, as in one
    process (so the optimizer skips it there too: a zero gradient would still advance Adam's step count)."""
    params = list(getattr(module, "_replicated", ()))
    if not params:
        return
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    td.all_reduce(used)
    for p, anywhere in zip(params, used.tolist()):
        if not anywhere:
            continue
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        td.all_reduce(grad)
        p.grad = grad / world()


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """Clip gradients to a total 2-norm of max_norm (sharded DTensor and replicated plain gradients together);
    returns the norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if not td.is_initialized():
        return float(nn.utils.clip_grad_norm_(params, max_norm))
    from torch.distributed.tensor import DTensor

    square = 0.0
    for group in ([g for g in grads if isinstance(g, DTensor)], [g for g in grads if not isinstance(g, DTensor)]):
        if group:
            norm = nn.utils.get_total_norm(group)
            square += float(norm.full_tensor() if isinstance(norm, DTensor) else norm) ** 2
    total = square ** 0.5
    scale = min(1.0, max_norm / (total + 1e-6))
    if scale < 1.0:
        for g in grads:
            g.mul_(scale)
    return total


def _trainable_names(module: nn.Module) -> list[str]:
    """Names of the parameters the optimiser holds, in its order (every trainable one, as train() builds it)."""
    return [n for n, p in module.named_parameters() if p.requires_grad]


def _rekeyed(opt_state: dict, key: Mapping, kind: type) -> dict:
    """An optimizer state dict with each parameter key k replaced by key[k] (unchanged if its keys are already of
    `kind`)."""
    groups = opt_state["param_groups"]
    if all(isinstance(i, kind) for g in groups for i in g["params"]):
        return opt_state
    return {"state": {key[k]: v for k, v in opt_state["state"].items()},
            "param_groups": [{**g, "params": [key[k] for k in g["params"]]} for g in groups]}


def _by_name(module: nn.Module, opt_state: dict) -> dict:
    """An optimizer state dict keyed by parameter index -> keyed by parameter name."""
    return _rekeyed(opt_state, dict(enumerate(_trainable_names(module))), str)


def _by_index(module: nn.Module, opt_state: dict) -> dict:
    """An optimizer state dict keyed by parameter name -> keyed by index, the layout torch.optim loads."""
    return _rekeyed(opt_state, {n: i for i, n in enumerate(_trainable_names(module))}, int)


def full_state(module: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts on the CPU (gathered to every rank when sharded); the optimizer's
    keyed by parameter name either way, so a checkpoint resumes under any number of ranks."""
    if not td.is_initialized():
        return module.state_dict(), _by_name(module, opt.state_dict())
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(module, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(module: nn.Module, opt: torch.optim.Optimizer, model_state: dict, opt_state: dict) -> None:
    """Load unsharded state dicts into a possibly sharded module and its optimizer (optimizer state keyed by name,
    or by index as older single-process checkpoints hold it)."""
    if not td.is_initialized():
        module.load_state_dict(model_state)
        opt.load_state_dict(_by_index(module, opt_state))
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    opt_state = _by_name(module, opt_state)
    set_state_dict(module, opt, model_state_dict=model_state, optim_state_dict=opt_state,
                   options=StateDictOptions(full_state_dict=True))
