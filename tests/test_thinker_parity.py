"""Thinker LM vs transformers on tiny random weights: one-shot, chunked prefill + decode, padded batches, generate."""

import pytest
import torch

from omnistream.config import tiny_omni, tiny_qwen35
from omnistream.engine import generate
from reference import hf_thinker, ours_like

TOL = 1e-4
CONFIGS = {"qwen3.5-hybrid": tiny_qwen35, "qwen3-omni": tiny_omni}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request):
    torch.manual_seed(0)
    hf = hf_thinker(CONFIGS[request.param](), seed=1)
    return hf, ours_like(hf)


def hf_logits(hf, ids, mask=None):
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask).logits


def test_one_shot_forward_matches(pair):
    hf, ours = pair
    ids = torch.randint(0, 250, (2, 150))  # 150 = 2 full DeltaNet chunks + a partial one
    with torch.no_grad():
        logits, _ = ours(ids)
    ref = hf_logits(hf, ids)
    assert ref.abs().max() > 0.5  # weights large enough that a wrong formula shows
    assert (logits - ref).abs().max().item() < TOL


def test_chunked_prefill_then_decode_matches_one_shot(pair):
    hf, ours = pair
    prompt = torch.randint(0, 250, (1, 7 + 64 + 33))
    cache = ours.new_cache(1, 160)
    with torch.no_grad():
        pieces = []
        for a, b in ((0, 7), (7, 71), (71, 104)):
            logits, _ = ours(prompt[:, a:b], cache=cache)
            pieces.append(logits)
        seq = prompt
        step_logits = [pieces[-1][:, -1]]
        for _ in range(20):
            token = step_logits[-1].argmax(-1)
            seq = torch.cat([seq, token[:, None]], 1)
            step_logits.append(ours.decode(token, cache))
    ref = hf_logits(hf, seq)
    assert (torch.cat(pieces, 1) - ref[:, :104]).abs().max().item() < TOL
    decoded = torch.stack(step_logits[1:], 1)
    assert (decoded - ref[:, 104:]).abs().max().item() < TOL
    assert cache.length == seq.shape[1]


def test_left_padded_batch_matches_each_alone(pair):
    hf, ours = pair
    lengths = [5, 70, 33]
    width = max(lengths)
    rows = [torch.randint(0, 250, (1, n)) for n in lengths]
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - r.shape[1]:] = r
        mask[i, width - r.shape[1]:] = 1
    cache = ours.new_cache(3, width + 8)
    with torch.no_grad():
        batched, _ = ours(ids, attention_mask=mask, cache=cache)
        tokens = batched[:, -1].argmax(-1)
        steps = [ours.decode(tokens, cache)]
    for i, r in enumerate(rows):
        alone = hf_logits(hf, r)
        n = r.shape[1]
        assert (batched[i, width - n:] - alone[0]).abs().max().item() < TOL
        extended = torch.cat([r, tokens[i].view(1, 1)], 1)
        assert (steps[0][i] - hf_logits(hf, extended)[0, -1]).abs().max().item() < TOL


def test_batched_generate_with_padding_matches_alone(pair):
    _, ours = pair
    rows = [torch.randint(0, 250, (1, n)) for n in (3, 17, 9)]
    ids = torch.zeros(3, 17, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, 17 - r.shape[1]:], mask[i, 17 - r.shape[1]:] = r, 1
    batched = generate(ours, ids, mask, max_new_tokens=12).tokens
    for i, r in enumerate(rows):
        assert batched[i].tolist() == generate(ours, r, max_new_tokens=12).tokens[0].tolist()


def test_greedy_generate_matches_transformers(pair):
    hf, ours = pair
    ids = torch.randint(0, 250, (1, 19))
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=30,
                          min_new_tokens=30, do_sample=False)[:, 19:]
    assert generate(ours, ids, max_new_tokens=30).tokens.tolist() == ref.tolist()


def test_three_row_positions_match(pair):
    hf, ours = pair
    ids = torch.randint(0, 250, (1, 40))
    pos = torch.arange(40).view(1, 1, -1).repeat(3, 1, 1)
    pos[1, 0, 10:20] = 10 + torch.arange(10) // 3  # a fake 2-D item: H and W rows differ from T
    pos[2, 0, 10:20] = 10 + torch.arange(10) % 3
    pos[0, 0, 10:20] = 10
    with torch.no_grad():
        ours_logits, _ = ours(ids, position_ids=pos)
        ref = hf(input_ids=ids, position_ids=pos).logits
    assert (ours_logits - ref).abs().max().item() < TOL


def test_hidden_states_and_router_logits_match(pair):
    hf, ours = pair
    ids = torch.randint(0, 250, (1, 30))
    with torch.no_grad():
        ref = hf(input_ids=ids, output_hidden_states=True, output_router_logits=True)
        _, out = ours(ids, output_hidden_states=True, output_router_logits=True)
    assert len(out.hidden_states) == len(ref.hidden_states)
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert (a - b).abs().max().item() < TOL
    for a, b in zip(out.router_logits, ref.router_logits):
        assert (a - b).abs().max().item() < TOL
    aux = ours.aux_loss(out)
    assert abs(aux.item() - ref.aux_loss.item()) < 1e-5


@pytest.mark.parametrize("cfg", [
    tiny_omni(mlp_only_layers=[1]),  # a dense SwiGLU layer among MoE layers
    tiny_qwen35(tie_word_embeddings=True),  # small Qwen3.5 variants tie the LM head
    tiny_qwen35(linear_num_value_heads=2, layer_types=["linear_attention", "full_attention"] * 2),
], ids=["omni-dense-layer", "qwen35-tied", "qwen35-hv-eq-hk"])
def test_layout_variants_match(cfg):
    hf = hf_thinker(cfg, seed=5)
    ours = ours_like(hf)
    ids = torch.randint(0, 250, (2, 70))
    with torch.no_grad():
        assert (ours(ids)[0] - hf_logits(hf, ids)).abs().max().item() < TOL


def test_inputs_embeds_match(pair):
    hf, ours = pair
    ids = torch.randint(0, 250, (1, 33))
    with torch.no_grad():
        embeds = ours.model.embed_tokens(ids) * 1.5  # not any token's embedding
        got, _ = ours(inputs_embeds=embeds)
        ref = hf(inputs_embeds=embeds).logits
    assert (got - ref).abs().max().item() < TOL
