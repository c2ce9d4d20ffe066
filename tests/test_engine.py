"""Generation: sampling rules, stop tokens, streaming, and errors for bad prompts."""

import pytest
import torch

from omnistream.config import tiny_qwen35
from omnistream.engine import SamplingParams, generate, sample, stream
from omnistream.sampling import apply_repetition_penalty
from omnistream.thinker import InputError, ThinkerLM


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = ThinkerLM(tiny_qwen35(max_position_embeddings=64)).eval()
    for p in m.parameters():
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.1)
    return m


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = torch.randn(4, 50)
    greedy = logits.argmax(-1)
    assert torch.equal(sample(logits, SamplingParams(temperature=1.0, top_k=1)), greedy)
    assert torch.equal(sample(logits, SamplingParams(temperature=1.0, top_p=1e-6)), greedy)


def test_top_k_and_top_p_only_pick_allowed_tokens():
    logits = torch.tensor([[4.0, 3.0, 2.0, -5.0, -6.0]]).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    picked = sample(logits, SamplingParams(temperature=1.0, top_k=2), generator=g)
    assert set(picked.tolist()) == {0, 1}
    probs = logits[0].softmax(-1)  # 0.705, 0.259, 0.035...: top_p 0.9 keeps tokens 0, 1
    assert probs[:2].sum() < 0.97
    picked = sample(logits, SamplingParams(temperature=1.0, top_p=0.9), generator=g)
    assert set(picked.tolist()) == {0, 1}


def test_repetition_penalty_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = torch.randn(2, 30)
    ids = torch.tensor([[1, 5, 5, 7], [0, 2, 29, 3]])
    seen = torch.zeros(2, 30, dtype=torch.bool).scatter_(1, ids, True)
    ref = RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    assert torch.allclose(apply_repetition_penalty(logits, seen, 1.3), ref)


def test_seeded_sampling_is_reproducible_and_stream_equals_generate(model):
    ids = torch.randint(0, 250, (1, 6))
    params = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.1, seed=7)
    a = generate(model, ids, max_new_tokens=15, sampling=params).tokens
    b = torch.stack(list(stream(model, ids, max_new_tokens=15, sampling=params)), 1)
    assert a.tolist() == b.tolist()
    greedy = generate(model, ids, max_new_tokens=15).tokens
    assert a.shape == greedy.shape == (1, 15)


def test_stop_tokens_end_each_row(model):
    ids = torch.randint(0, 250, (2, 5))
    free = generate(model, ids, max_new_tokens=10).tokens
    stop = int(free[0, 3])
    res = generate(model, ids, max_new_tokens=10, stop_tokens=[stop])
    first = free[0].tolist().index(stop)
    assert res.lengths[0] == first + 1
    assert res.tokens[0, : first + 1].tolist() == free[0, : first + 1].tolist()


def test_cache_is_reusable_across_requests(model):
    cache = model.new_cache(1, 40)
    ids = torch.randint(0, 250, (1, 8))
    first = generate(model, ids, max_new_tokens=10, cache=cache).tokens
    generate(model, torch.randint(0, 250, (1, 12)), max_new_tokens=5, cache=cache)
    assert generate(model, ids, max_new_tokens=10, cache=cache).tokens.tolist() == first.tolist()


def test_bad_prompts_raise_clear_errors(model):
    with pytest.raises(InputError, match="empty prompt"):
        generate(model, torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(InputError, match=r"token id 300 is outside the vocabulary \[0, 256\)"):
        generate(model, torch.tensor([[1, 300]]))
    with pytest.raises(InputError, match=r"token id -1"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(InputError, match="exceed the context limit of 64"):
        generate(model, torch.randint(0, 250, (1, 65)))
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)


def test_generation_stops_at_the_context_limit(model):
    out = generate(model, torch.randint(0, 250, (1, 60)), max_new_tokens=50)
    assert out.tokens.shape[1] == 4  # 60 prompt + 4 new = the 64-token limit
