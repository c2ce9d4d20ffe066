"""Talker and its code predictor vs transformers' Qwen3OmniMoeTalkerForConditionalGeneration on tiny random weights."""

import pytest
import torch

from omnistream.config import ConfigError
from omnistream.talker import Talker, TalkerConfig, convert_talker_state_dict
from omnistream.weights import load_state_into
from reference import randomize

TOL = 1e-4
Q = 4  # codebooks per frame
H = 32


def hf_talker_config():
    from transformers.models.qwen3_omni_moe import configuration_qwen3_omni_moe as oc

    text = dict(vocab_size=96, hidden_size=H, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                shared_expert_intermediate_size=24, norm_topk_prob=True, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 1, 1]},
                max_position_embeddings=512)
    cp = dict(vocab_size=64, hidden_size=H, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6, num_code_groups=Q,
              rope_parameters={"rope_type": "default", "rope_theta": 1e6}, max_position_embeddings=512)
    return oc.Qwen3OmniMoeTalkerConfig(
        text_config=text, code_predictor_config=cp, num_code_groups=Q, thinker_hidden_size=24,
        accept_hidden_layer=1, codec_pad_id=80, codec_bos_id=81, codec_eos_token_id=82, codec_nothink_id=83,
        codec_think_bos_id=84, codec_think_eos_id=85, speaker_id={"ethan": 90}, spatial_merge_size=2)


@pytest.fixture(scope="module")
def pair():
    from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as om

    torch.manual_seed(0)
    hf = om.Qwen3OmniMoeTalkerForConditionalGeneration(hf_talker_config())
    randomize(hf, seed=3)
    hf.set_attn_implementation("eager")
    hf.set_experts_implementation("eager")
    hf = hf.float().eval()
    ours = Talker(TalkerConfig.from_hf(hf.config.to_dict()))
    load_state_into(ours, convert_talker_state_dict(hf.state_dict()), "reference")
    return hf, ours.eval()


def positions(b, start, s):
    return (torch.arange(start, start + s)[None, None] + torch.zeros(3, b, 1, dtype=torch.long))  # (3, B, S)


def test_config_from_hf():
    cfg = TalkerConfig.from_hf({"talker_config": hf_talker_config().to_dict()})
    assert cfg.num_code_groups == Q and cfg.speaker_id == {"ethan": 90} and cfg.codec_eos_token_id == 82
    assert cfg.text.num_experts == 4 and cfg.text.shared_expert_intermediate_size == 24 and cfg.text.head_dim == 8
    assert cfg.text.rope_theta == 1e6 and cfg.text.mrope_section == [2, 1, 1]
    assert cfg.code_predictor.num_experts == 0 and cfg.code_predictor.intermediate_size == 48
    bad = hf_talker_config().to_dict()
    del bad["text_config"]["shared_expert_intermediate_size"]
    with pytest.raises(ConfigError, match="shared_expert_intermediate_size"):
        TalkerConfig.from_hf(bad)


def test_state_dict_names_map_both_ways(pair):
    hf, ours = pair
    converted = convert_talker_state_dict({"talker." + k: v for k, v in hf.state_dict().items()})
    assert set(converted) == set(ours.state_dict())
    per_expert = {}
    for k, v in hf.state_dict().items():
        if k.endswith("experts.gate_up_proj"):
            for e, w in enumerate(v):
                gate, up = w.chunk(2)
                per_expert[f"{k[:-len('gate_up_proj')]}{e}.gate_proj.weight"] = gate
                per_expert[f"{k[:-len('gate_up_proj')]}{e}.up_proj.weight"] = up
        elif k.endswith("experts.down_proj"):
            for e, w in enumerate(v):
                per_expert[f"{k[:-len('down_proj')]}{e}.down_proj.weight"] = w
        else:
            per_expert[k] = v
    split = convert_talker_state_dict(per_expert)
    assert all(torch.equal(split[k], converted[k]) for k in converted)


def test_one_shot_and_cached_decode_match(pair):
    hf, ours = pair
    b, s, steps = 2, 9, 4
    g = torch.Generator().manual_seed(5)
    embeds = torch.randn(b, s + steps, H, generator=g)
    with torch.no_grad():
        ref = hf(inputs_embeds=embeds, position_ids=positions(b, 0, s + steps))
        one_shot, hidden = ours(embeds, positions(b, 0, s + steps))
        cache = ours.new_cache(b, 64)
        pieces = [ours(embeds[:, :s], positions(b, 0, s), cache)[0]]
        for t in range(s, s + steps):
            pieces.append(ours(embeds[:, t:t + 1], positions(b, t, 1), cache)[0])
    assert ref.logits.abs().max() > 0.5
    assert (one_shot - ref.logits).abs().max().item() < TOL
    assert (torch.cat(pieces, 1) - ref.logits).abs().max().item() < TOL
    assert (ours(embeds)[0] - one_shot).abs().max().item() < TOL  # default positions are sequential
    # the hidden state the code predictor reads is the post-norm last layer output
    with torch.no_grad():
        ref_hidden = hf.model(inputs_embeds=embeds, position_ids=positions(b, 0, s + steps)).last_hidden_state
    assert (hidden - ref_hidden).abs().max().item() < TOL


def test_multimodal_positions_match(pair):
    hf, ours = pair
    b, s = 2, 11
    embeds = torch.randn(b, s, H, generator=torch.Generator().manual_seed(6))
    t = torch.arange(s)
    pos = torch.stack([t, t // 2, t % 3])[:, None].expand(3, b, s)  # distinct T/H/W rows exercise interleaved MRoPE
    with torch.no_grad():
        ref = hf(inputs_embeds=embeds, position_ids=pos).logits
        assert (ours(embeds, pos)[0] - ref).abs().max().item() < TOL


def test_code_predictor_matches_reference_greedy(pair):
    hf, ours = pair
    g = torch.Generator().manual_seed(7)
    for frame in range(4):
        b = 3
        hidden = torch.randn(b, H, generator=g) * 2
        code0 = torch.randint(0, 96, (b,), generator=g)
        with torch.no_grad():
            code0_embed = hf.get_input_embeddings()(code0)
            ref = hf.code_predictor.generate(
                inputs_embeds=torch.stack([hidden, code0_embed], 1), max_new_tokens=Q - 1, do_sample=False,
                output_logits=True, return_dict_in_generate=True)
            codes, logits = ours.code_predictor.greedy(hidden, ours.model.embed_tokens(code0))
        ref_logits = torch.stack(ref.logits, 1)  # (B, Q-1, V)
        assert ref_logits.abs().max() > 0.5
        assert (logits - ref_logits).abs().max().item() < TOL
        assert torch.equal(codes, ref.sequences[:, -(Q - 1):])
        assert torch.equal(ours.predict_residual(hidden, code0), codes)
        frame_codes = torch.cat([code0[:, None], codes], 1)
        with torch.no_grad():
            tables = hf.code_predictor.get_input_embeddings()
            ref_embed = code0_embed + sum(tables[i](codes[:, i]) for i in range(Q - 1))
            assert (ours.frame_embedding(frame_codes) - ref_embed).abs().max().item() < 1e-6


def test_projections_match(pair):
    hf, ours = pair
    x = torch.randn(2, 5, 24)
    with torch.no_grad():
        assert (ours.text_projection(x) - hf.text_projection(x)).abs().max().item() < 1e-6
        assert (ours.hidden_projection(x) - hf.hidden_projection(x)).abs().max().item() < 1e-6
