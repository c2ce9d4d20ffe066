"""MoE: batched dispatch (one-token and sorted paths) == a per-expert loop; router and aux loss behave."""

import pytest
import torch
import torch.nn.functional as F

from omnistream.modules.moe import SparseMoE, load_balancing_loss


def loop_reference(moe: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    """Every token through each of its top-k experts, one at a time."""
    flat = x.reshape(-1, x.shape[-1])
    _, weights, idx = moe.gate(flat)
    out = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        for j in range(idx.shape[1]):
            e = int(idx[t, j])
            gate, up = (moe.experts.gate_up_proj[e] @ flat[t]).chunk(2)
            out[t] += weights[t, j] * (moe.experts.down_proj[e] @ (F.silu(gate) * up))
    if moe.shared_expert is not None:
        out += torch.sigmoid(moe.shared_expert_gate(flat)) * moe.shared_expert(flat)
    return out.view_as(x)


@pytest.mark.parametrize("tokens", [1, 3, 40])  # 1 takes the one-token path, others the sorted path
@pytest.mark.parametrize("shared", [0, 24])
def test_dispatch_equals_loop(tokens, shared):
    torch.manual_seed(tokens)
    moe = SparseMoE(16, num_experts=8, top_k=3, intermediate_size=12, shared_intermediate_size=shared)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(1, tokens, 16)
    with torch.no_grad():
        out, logits = moe(x)
        ref = loop_reference(moe, x)
    assert logits.shape == (tokens, 8)
    assert (out - ref).abs().max().item() < 1e-5


def test_renormalisation_flag():
    torch.manual_seed(0)
    for renorm in (True, False):
        moe = SparseMoE(8, 6, 2, 4, renormalize=renorm)
        torch.nn.init.normal_(moe.gate.weight)
        _, w, _ = moe.gate(torch.randn(5, 8))
        sums = w.sum(-1)
        assert torch.allclose(sums, torch.ones(5)) == renorm


def test_aux_loss_is_one_when_balanced_and_larger_when_skewed():
    skew = torch.zeros(32, 4)
    skew[:, 0] = 5.0
    balanced = torch.eye(4).repeat(8, 1) * 5.0
    assert load_balancing_loss([skew], 4, 1) > load_balancing_loss([balanced], 4, 1)
    assert abs(load_balancing_loss([balanced], 4, 1).item() - 1.0) < 1e-6
