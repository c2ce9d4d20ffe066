"""The static-shape decode step (eager and under torch.compile) equals the dynamic decode path."""

import torch

from omnistream.config import tiny_qwen35
from omnistream.engine import generate
from omnistream.thinker import ThinkerLM


def twin_models():
    torch.manual_seed(0)
    a = ThinkerLM(tiny_qwen35()).eval()
    b = ThinkerLM(tiny_qwen35()).eval()
    b.load_state_dict(a.state_dict())
    return a, b


def padded_batch():
    ids = torch.randint(0, 250, (2, 11))
    mask = torch.ones_like(ids)
    mask[0, :6] = 0
    return ids, mask


def test_static_step_equals_dynamic_decode_on_a_padded_batch():
    model, _ = twin_models()
    ids, mask = padded_batch()
    dyn, stat = model.new_cache(2, 40), model.new_cache(2, 40)
    with torch.no_grad():
        tok = model.prefill(ids, dyn, mask).argmax(-1)
        model.prefill(ids, stat, mask)
        for _ in range(12):
            ref = model.decode(tok, dyn)
            slot = stat.reserve(torch.ones(2, 1, dtype=torch.bool))
            got = model.static_step(tok.view(-1, 1), stat, torch.tensor([slot]))
            stat.next_pos.add_(1)
            assert (got - ref).abs().max().item() < 1e-5
            tok = ref.argmax(-1)


def test_compiled_decode_generates_the_same_tokens():
    eager, compiled = twin_models()
    compiled.compile_decode()
    ids, mask = padded_batch()
    want = generate(eager, ids, mask, max_new_tokens=10).tokens
    assert generate(compiled, ids, mask, max_new_tokens=10).tokens.tolist() == want.tolist()
