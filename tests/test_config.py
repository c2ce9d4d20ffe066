"""Config import from Hugging Face config.json dicts of both layouts, and presets."""

import pytest

from omnistream.config import FULL, LINEAR, OMNI, PRESETS, QWEN35, ConfigError, TextConfig

QWEN35_RELEASE = {
    "model_type": "qwen3_5_moe",
    "text_config": {
        "model_type": "qwen3_5_moe_text", "vocab_size": 248320, "hidden_size": 2048, "num_hidden_layers": 40,
        "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256, "linear_num_key_heads": 16,
        "linear_num_value_heads": 32, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
        "linear_conv_kernel_dim": 4, "num_experts": 256, "num_experts_per_tok": 8, "moe_intermediate_size": 512,
        "shared_expert_intermediate_size": 512, "rms_norm_eps": 1e-6, "max_position_embeddings": 262144,
        "full_attention_interval": 4, "attn_output_gate": True, "eos_token_id": 248044,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000000, "partial_rotary_factor": 0.25,
                            "mrope_section": [11, 11, 10], "mrope_interleaved": True},
    },
}
OMNI_RELEASE = {
    "model_type": "qwen3_omni_moe",
    "thinker_config": {
        "model_type": "qwen3_omni_moe_thinker",
        "text_config": {
            "vocab_size": 152064, "hidden_size": 2048, "num_hidden_layers": 48, "num_attention_heads": 32,
            "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8,
            "moe_intermediate_size": 768, "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
            "rope_scaling": {"mrope_section": [24, 20, 20], "interleaved": True, "rope_type": "default"},
            "rope_theta": 1000000, "max_position_embeddings": 65536,
        },
    },
}


def test_qwen35_release_config():
    c = TextConfig.from_hf(QWEN35_RELEASE)
    assert c.layout == QWEN35 and c.rotary_dim == 64 and c.rope_theta == 1e7
    assert c.layer_types[3] == FULL and c.layer_types[:3] == [LINEAR] * 3 and c.layer_types.count(FULL) == 10
    assert c.zero_centered_norm and c.attn_output_gate and c.norm_topk_prob and c.eos_token_ids == [248044]


def test_omni_release_config():
    c = TextConfig.from_hf(OMNI_RELEASE)
    assert c.layout == OMNI and set(c.layer_types) == {FULL} and c.rotary_dim == 128
    assert c.mrope_section == [24, 20, 20] and c.rope_theta == 1e6 and not c.zero_centered_norm
    assert c.shared_expert_intermediate_size == 0 and not c.attn_output_gate


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_hf_dicts(name):
    c = PRESETS[name]()
    assert TextConfig.from_hf(c.to_hf()) == c


def test_invalid_configs_are_refused():
    with pytest.raises(ConfigError, match="unsupported model_type"):
        TextConfig.from_hf({"model_type": "gpt2"})
    with pytest.raises(ConfigError, match="multiple of num_key_value_heads"):
        PRESETS["tiny-qwen3.5"]().replace(num_key_value_heads=3)
    with pytest.raises(ConfigError, match="layer_types has 2 entries"):
        PRESETS["tiny-qwen3.5"]().replace(layer_types=[FULL, LINEAR])
