"""Fast paths against their torch references (CUDA only; skipped on machines without a GPU)."""

import pytest
import torch

from omnistream.kernels import fla
from omnistream.modules.deltanet import chunk_gated_delta_rule, recurrent_gated_delta_rule

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.skipif(not fla.available(), reason="flash-linear-attention is not installed")
@pytest.mark.parametrize("s", [1, 100, 300])
def test_fla_matches_torch_gated_delta_rule(s):
    g = torch.Generator().manual_seed(s)
    q, k = torch.randn(2, s, 2, 64, generator=g), torch.randn(2, s, 2, 64, generator=g)
    v = torch.randn(2, s, 4, 64, generator=g)
    decay, beta = -torch.rand(2, s, 4, generator=g) * 0.5, torch.rand(2, s, 4, generator=g)
    state = torch.randn(2, 4, 64, 64, generator=g) * 0.1
    ref_fn = recurrent_gated_delta_rule if s == 1 else chunk_gated_delta_rule
    ref, ref_state = ref_fn(q, k, v, decay, beta, state)
    out, out_state = fla.gated_delta_rule(*(t.cuda() for t in (q, k, v, decay, beta, state)))
    assert (out.cpu() - ref).abs().max().item() < 2e-3
    assert (out_state.cpu() - ref_state).abs().max().item() < 2e-3


def test_thinker_on_cuda_matches_cpu():
    from omnistream.config import tiny_qwen35
    from omnistream.thinker import ThinkerLM

    torch.manual_seed(0)
    model = ThinkerLM(tiny_qwen35()).eval()
    ids = torch.randint(0, 250, (2, 90))
    with torch.no_grad():
        cpu = model(ids)[0]
        gpu = model.cuda()(ids.cuda())[0].cpu()
    assert (cpu - gpu).abs().max().item() < 1e-3
