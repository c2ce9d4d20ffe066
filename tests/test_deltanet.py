"""Gated delta rule: chunked == recurrent == a float64 naive loop; layer state carries across chunk boundaries."""

import pytest
import torch

from omnistream.cache import DeltaNetState
from omnistream.modules.deltanet import GatedDeltaNet, chunk_gated_delta_rule, recurrent_gated_delta_rule


def naive_float64(q, k, v, g, beta, state=None):
    """The gated delta rule written from its definition, one token and one head at a time, in float64."""
    b, s, hk, dk = q.shape
    hv, dv = v.shape[2:]
    rep = hv // hk
    out = torch.zeros(b, s, hv, dv, dtype=torch.float64)
    st = torch.zeros(b, hv, dk, dv, dtype=torch.float64) if state is None else state.double().clone()
    for bi in range(b):
        for h in range(hv):
            S = st[bi, h]
            for t in range(s):
                qt, kt = q[bi, t, h // rep].double(), k[bi, t, h // rep].double()
                qt = qt / torch.sqrt((qt * qt).sum() + 1e-6) / dk ** 0.5
                kt = kt / torch.sqrt((kt * kt).sum() + 1e-6)
                S = torch.exp(g[bi, t, h].double()) * S
                S = S + beta[bi, t, h].double() * torch.outer(kt, v[bi, t, h].double() - S.T @ kt)
                out[bi, t, h] = S.T @ qt
            st[bi, h] = S
    return out, st


def random_inputs(b=2, s=150, hk=2, hv=4, dk=16, dv=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(b, s, hk, dk, generator=g), torch.randn(b, s, hk, dk, generator=g)
    v = torch.randn(b, s, hv, dv, generator=g)
    decay = -torch.rand(b, s, hv, generator=g) * 0.5
    beta = torch.rand(b, s, hv, generator=g)
    return q, k, v, decay, beta


@pytest.mark.parametrize("s", [1, 3, 64, 150])
def test_chunked_equals_recurrent_equals_naive(s):
    q, k, v, g, beta = random_inputs(s=s)
    init = torch.randn(2, 4, 16, 8) * 0.3
    ref, ref_state = naive_float64(q, k, v, g, beta, init)
    for fn in (chunk_gated_delta_rule, recurrent_gated_delta_rule):
        out, state = fn(q, k, v, g, beta, init)
        assert (out.double() - ref).abs().max().item() < 1e-5
        assert (state.double() - ref_state).abs().max().item() < 1e-5


@pytest.mark.parametrize("s,chunk", [(1, 64), (43, 64), (100, 64), (129, 64), (150, 16)])
def test_even_chunks_without_state_equal_naive(s, chunk):
    """No incoming state (training): the fewest equal chunks, the first without state terms, still exact."""
    q, k, v, g, beta = random_inputs(s=s)
    ref, ref_state = naive_float64(q, k, v, g, beta)
    out, state = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=chunk)
    assert (out.double() - ref).abs().max().item() < 1e-5
    assert (state.double() - ref_state).abs().max().item() < 1e-5


def test_chunked_gradients_equal_recurrent():
    """What training differentiates: the chunked form's gradients equal the token loop's."""
    inputs = random_inputs(s=100)
    grads = []
    for fn in (chunk_gated_delta_rule, recurrent_gated_delta_rule):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        out, state = fn(*leaves)
        (out.pow(2).sum() + state.sum()).backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        assert (a - b).abs().max().item() < 1e-4 * max(1.0, b.abs().max().item())


def test_state_carried_across_chunks():
    q, k, v, g, beta = random_inputs(s=200)
    whole, whole_state = chunk_gated_delta_rule(q, k, v, g, beta)
    state, outs = None, []
    for a, b in ((0, 7), (7, 71), (71, 72), (72, 200)):
        out, state = chunk_gated_delta_rule(q[:, a:b], k[:, a:b], v[:, a:b], g[:, a:b], beta[:, a:b], state)
        outs.append(out)
    assert (torch.cat(outs, 1) - whole).abs().max().item() < 1e-5
    assert (state - whole_state).abs().max().item() < 1e-5


def test_layer_in_pieces_equals_whole():
    torch.manual_seed(0)
    layer = GatedDeltaNet(32, 2, 4, 8, 8).eval()
    x = torch.randn(2, 90, 32)
    state = DeltaNetState(2, layer.conv_dim, 4, 4, 8, 8, torch.float32, "cpu")
    with torch.no_grad():
        whole = layer(x)
        pieces = [layer(x[:, a:b], state) for a, b in ((0, 2), (2, 3), (3, 67), (67, 90))]
    assert (torch.cat(pieces, 1) - whole).abs().max().item() < 1e-5
