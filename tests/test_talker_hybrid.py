"""Qwen3.5-Omni-layout Talker (Gated DeltaNet : gated attention 3:1, MoE + shared expert) on tiny random weights.

transformers has no Qwen3.5-Omni talker, so the hybrid backbone is proved against `Qwen3_5MoeTextModel` fed the
same inputs_embeds (eager attention, eager experts, torch DeltaNet), and the codec head against hidden @ W.T."""

import dataclasses

import pytest
import torch

from omnistream.config import FULL, LINEAR, QWEN35, ConfigError, tiny_qwen35
from omnistream.talker import Talker, TalkerConfig, convert_talker_state_dict
from omnistream.weights import load_state_into
from reference import randomize
from test_talker import hf_talker_config

TOL = 1e-4
Q = 4  # codebooks per frame
H = 32
V = 1088  # codec vocabulary (codebook 0)
CP_V = 64  # code predictor vocabulary (codebooks 1..Q-1)
SLOT = 1070  # ARIA "next unit is text" id
EOS = 1026


def hybrid_text() -> dict:
    # head_dim 32 x partial 0.25 = 8 rotary dims = 4 frequency slots, split T/H/W 2/1/1 so all three rows matter
    return tiny_qwen35(vocab_size=V, hidden_size=H, intermediate_size=40, head_dim=32,
                       mrope_section=[2, 1, 1]).to_hf()


def hybrid_talker_dict(**over) -> dict:
    cp = dict(vocab_size=CP_V, hidden_size=H, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6, num_code_groups=Q,
              rope_parameters={"rope_type": "default", "rope_theta": 1e6}, max_position_embeddings=512)
    d = dict(model_type="qwen3_omni_moe_talker", text_config=hybrid_text(), code_predictor_config=cp,
             num_code_groups=Q, thinker_hidden_size=24, accept_hidden_layer=1, codec_pad_id=1024,
             codec_bos_id=1025, codec_eos_token_id=EOS, codec_nothink_id=1027, codec_think_bos_id=1028,
             codec_think_eos_id=1029, speaker_id={"ethan": 1040}, interleave="aria", codec_text_slot_id=SLOT,
             aria_frames_per_token={"en": 3.5, "zh": 5.0}, aria_default_ratio=4.5)
    d.update(over)
    return d


@pytest.fixture(scope="module")
def pair():
    """(HF Qwen3_5MoeTextModel, our hybrid Talker holding its weights under talker.model, random codec head)."""
    from transformers import Qwen3_5MoeTextConfig, Qwen3_5MoeTextModel

    torch.manual_seed(0)
    hf = Qwen3_5MoeTextModel(Qwen3_5MoeTextConfig(**hybrid_text()))
    randomize(hf, seed=11)
    hf.set_attn_implementation("eager")
    hf.set_experts_implementation("eager")
    hf = hf.float().eval()

    ours = Talker(TalkerConfig.from_hf(hybrid_talker_dict()))
    randomize(ours, seed=12)  # codec head, projections, code predictor: random, not init defaults
    # a talker checkpoint names the backbone talker.model.* and its embedding talker.model.codec_embedding
    state = {f"talker.{k}": v for k, v in ours.state_dict().items() if not k.startswith("model.")}
    for k, v in hf.state_dict().items():
        name = "codec_embedding.weight" if k == "embed_tokens.weight" else k
        state[f"talker.model.{name}"] = v
    load_state_into(ours, convert_talker_state_dict(state), "Qwen3_5MoeTextModel")
    return hf, ours.eval()


def three_rows(b: int, s: int, start: int = 0) -> torch.Tensor:
    """(3, B, S) positions whose T, H, W rows differ (a fake 2-D item in the middle), as TMRoPE makes them."""
    t = torch.arange(start, start + s)
    pos = torch.stack([t, t.clone(), t.clone()])
    mid = slice(s // 4, s // 4 + 12)
    n = len(t[mid])
    pos[0, mid] = t[mid][0]
    pos[1, mid] = t[mid][0] + torch.arange(n) // 4
    pos[2, mid] = t[mid][0] + torch.arange(n) % 4
    return pos[:, None].expand(3, b, s).contiguous()


# ---------------------------------------------------------------------------------------------------- config
def test_hybrid_config_and_round_trip():
    cfg = TalkerConfig.from_hf(hybrid_talker_dict())
    t = cfg.text
    assert t.layout == QWEN35 and t.zero_centered_norm and t.attn_output_gate
    assert t.layer_types == [LINEAR, LINEAR, LINEAR, FULL]
    assert t.num_experts == 8 and t.shared_expert_intermediate_size == 48 and t.intermediate_size == 40
    assert t.mrope_section == [2, 1, 1] and t.rotary_dim == 8
    assert cfg.code_predictor.layout != QWEN35 and cfg.code_predictor.num_experts == 0
    assert cfg.code_predictor.mrope_section == [cfg.code_predictor.rotary_dim // 2, 0, 0]
    assert cfg.interleave == "aria" and cfg.codec_text_slot_id == SLOT and cfg.codec_eos_token_id == EOS
    assert cfg.aria_frames_per_token == {"en": 3.5, "zh": 5.0} and cfg.aria_default_ratio == 4.5
    assert TalkerConfig.from_hf(cfg.to_hf()) == cfg
    assert TalkerConfig.from_hf({"talker_config": cfg.to_hf()}) == cfg  # also under a whole config.json
    # the built model is hybrid: DeltaNet mixers on linear layers, gated attention on the full one
    talker = Talker(cfg)
    kinds = [hasattr(layer, "linear_attn") for layer in talker.model.layers]
    assert kinds == [True, True, True, False]


def test_omni_config_round_trip():
    cfg = TalkerConfig.from_hf(hf_talker_config().to_dict())
    assert set(cfg.text.layer_types) == {FULL} and cfg.interleave == "fixed" and cfg.codec_text_slot_id is None
    assert TalkerConfig.from_hf(cfg.to_hf()) == cfg
    # an Omni backbone with ARIA switched on round-trips too
    aria = dataclasses.replace(cfg, interleave="aria", codec_text_slot_id=70, aria_frames_per_token={"en": 3.0})
    assert TalkerConfig.from_hf(aria.to_hf()) == aria


def test_config_validation():
    with pytest.raises(ConfigError, match="codec_text_slot_id.*got None"):
        TalkerConfig.from_hf(hybrid_talker_dict(codec_text_slot_id=None))
    for bad in (V, V + 5, -1):
        with pytest.raises(ConfigError, match=rf"codec_text_slot_id inside the codec vocabulary \[0, {V}\), got {bad}"):
            TalkerConfig.from_hf(hybrid_talker_dict(codec_text_slot_id=bad))
    with pytest.raises(ConfigError, match="codec_text_slot_id must differ from codec_eos_token_id"):
        TalkerConfig.from_hf(hybrid_talker_dict(codec_text_slot_id=EOS))
    with pytest.raises(ConfigError, match="interleave must be 'fixed' or 'aria', got 'bogus'"):
        TalkerConfig.from_hf(hybrid_talker_dict(interleave="bogus"))
    # the same checks guard direct construction, and the last valid slot passes
    cfg = TalkerConfig.from_hf(hybrid_talker_dict())
    with pytest.raises(ConfigError, match="codec_text_slot_id"):
        dataclasses.replace(cfg, codec_text_slot_id=None)
    assert dataclasses.replace(cfg, codec_text_slot_id=V - 1).codec_text_slot_id == V - 1
    # fixed-rate interleave needs no slot
    assert TalkerConfig.from_hf(hybrid_talker_dict(interleave="fixed", codec_text_slot_id=None)).interleave == "fixed"


# ---------------------------------------------------------------------------------------------------- parity
def test_state_dict_names(pair):
    hf, ours = pair
    assert set(hf.state_dict()) == set(ours.model.state_dict())
    for k, v in hf.state_dict().items():
        assert torch.equal(ours.model.state_dict()[k], v), k


def test_backbone_and_codec_head_match_qwen3_5_moe(pair):
    hf, ours = pair
    b, s = 2, 37  # not a multiple of the DeltaNet chunk (64)
    g = torch.Generator().manual_seed(21)
    embeds = torch.randn(b, s, H, generator=g)
    pos = three_rows(b, s)
    with torch.no_grad():
        ref_hidden = hf(inputs_embeds=embeds, position_ids=pos).last_hidden_state
        hidden = ours.model(inputs_embeds=embeds, position_ids=pos).last_hidden_state
        logits, hidden2 = ours(embeds, pos)
        # positions matter: the same embeddings at sequential positions give another result
        seq = hf(inputs_embeds=embeds, position_ids=three_rows(b, s)[:1].expand(3, b, s)).last_hidden_state
    ref_logits = ref_hidden @ ours.codec_head.weight.T
    assert ref_hidden.abs().max() > 0.5 and ref_logits.abs().max() > 0.5
    assert (seq - ref_hidden).abs().max() > 1e-3
    err_hidden = (hidden - ref_hidden).abs().max().item()
    err_logits = (logits - ref_logits).abs().max().item()
    print(f"\nhybrid backbone max|dhidden|={err_hidden:.2e} max|dlogits|={err_logits:.2e}")
    assert err_hidden < TOL and err_logits < TOL
    assert torch.equal(hidden, hidden2)


@pytest.mark.parametrize("s, steps", [(11, 15), (70, 6)], ids=["prefill11", "prefill70-crosses-chunk"])
def test_cached_decode_matches_full_forward(pair, s, steps):
    hf, ours = pair
    b = 2
    g = torch.Generator().manual_seed(22)
    embeds = torch.randn(b, s + steps, H, generator=g)
    prefill_pos = three_rows(b, s)  # rows differ, so the next position is the max over all rows + 1
    cache = ours.new_cache(b, s + steps + 1)
    with torch.no_grad():
        pieces = [ours(embeds[:, :s], prefill_pos, cache)[0]]
        step_pos = []
        for t in range(s, s + steps):
            p = cache.next_pos.long().view(1, b, 1).expand(3, b, 1)  # as the session feeds decode steps
            step_pos.append(p)
            pieces.append(ours(embeds[:, t:t + 1], p, cache)[0])
        full_pos = torch.cat([prefill_pos, *step_pos], 2)
        full, hidden = ours(embeds, full_pos)
        ref = hf(inputs_embeds=embeds, position_ids=full_pos).last_hidden_state @ ours.codec_head.weight.T
    first = int(prefill_pos.amax()) + 1
    assert [int(p[0, 0, 0]) for p in step_pos] == list(range(first, first + steps))
    assert cache.length == s + steps and torch.equal(cache.next_pos, torch.full((b,), float(first + steps)))
    cached = torch.cat(pieces, 1)
    err_cached = (cached - full).abs().max().item()
    err_ref = (full - ref).abs().max().item()
    print(f"\ncached vs full max|dlogits|={err_cached:.2e}, full vs Qwen3_5MoeTextModel {err_ref:.2e}")
    assert full.abs().max() > 0.5
    assert err_cached < TOL and err_ref < TOL


def test_code_predictor_and_frame_embedding(pair):
    _, ours = pair
    b = 3
    g = torch.Generator().manual_seed(23)
    embeds = torch.randn(b, 9, H, generator=g)
    with torch.no_grad():
        logits, hidden = ours(embeds, three_rows(b, 9))
        code0 = logits[:, -1].argmax(-1)  # (B,)
        talker_hidden = hidden[:, -1]
        codes = ours.predict_residual(talker_hidden, code0)
        greedy_codes, greedy_logits = ours.code_predictor.greedy(talker_hidden, ours.model.embed_tokens(code0))
        # reference: rerun the code predictor without a cache on the growing sequence at every step
        x = torch.stack([talker_hidden, ours.model.embed_tokens(code0)], 1)
        manual_codes, manual_logits = [], []
        for head in range(Q - 1):
            step = ours.code_predictor(x, head)[:, -1]
            manual_logits.append(step)
            manual_codes.append(step.argmax(-1))
            x = torch.cat([x, ours.code_predictor.codec_embedding[head](manual_codes[-1])[:, None]], 1)
    assert codes.shape == (b, Q - 1) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < CP_V
    assert torch.equal(codes, greedy_codes) and greedy_logits.shape == (b, Q - 1, CP_V)
    assert torch.equal(codes, torch.stack(manual_codes, 1))
    assert greedy_logits.abs().max() > 0.5
    err = (greedy_logits - torch.stack(manual_logits, 1)).abs().max().item()
    print(f"\ncode predictor cached vs uncached max|dlogits|={err:.2e}")
    assert err < TOL

    frame = torch.cat([code0[:, None], codes], 1)  # (B, Q)
    with torch.no_grad():
        got = ours.frame_embedding(frame)
        want = ours.model.embed_tokens.weight[frame[:, 0]] + sum(
            ours.code_predictor.codec_embedding[i].weight[frame[:, i + 1]] for i in range(Q - 1))
    assert got.shape == (b, H)
    assert (got - want).abs().max().item() < 1e-6
    # every codebook contributes: changing one residual code changes the frame embedding
    other = frame.clone()
    other[:, -1] = (other[:, -1] + 1) % CP_V
    with torch.no_grad():
        assert (ours.frame_embedding(other) - got).abs().max() > 1e-3
