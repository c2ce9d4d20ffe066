"""Builders for transformers reference models (pinned version) on tiny random weights, and their omnistream twins."""

from __future__ import annotations

import os

os.environ.setdefault("OMNISTREAM_NO_FLA", "1")

import torch  # noqa: E402

from omnistream.config import OMNI, TextConfig  # noqa: E402
from omnistream.thinker import ThinkerLM  # noqa: E402
from omnistream.weights import convert_state_dict, load_state_into  # noqa: E402

PINNED = "5.23.0"  # the version the parity tests compare against (conftest.py refuses any other)

TINY_AUDIO = dict(num_mel_bins=20, d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                  output_dim=64, n_window=50, n_window_infer=100, downsample_hidden_size=16)
TINY_VISION = dict(depth=1, hidden_size=32, num_heads=2, intermediate_size=32, out_hidden_size=64,
                   spatial_merge_size=1, deepstack_visual_indexes=[0], patch_size=2, temporal_patch_size=2)


def randomize(module: torch.nn.Module, seed: int, std: float = 0.08) -> None:
    """Fill every parameter with seeded noise large enough that parity errors would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.rand(p.shape, generator=g) * 8 + 0.5))
            elif name.endswith("dt_bias"):
                p.copy_(noise * 0.5)
            elif p.dim() == 1:  # norm weights: around the convention's identity
                p.copy_(p + noise * 0.1)
            else:
                p.copy_(noise * std)


def hf_thinker(cfg: TextConfig, seed: int = 0, token_ids: dict | None = None):
    """The transformers model of this config: fp32, eval, eager attention and experts, torch DeltaNet.

    Omni thinkers take their special-token ids from `token_ids` (default: the top five ids of the vocabulary)."""
    from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig
    from transformers.models.qwen3_omni_moe import configuration_qwen3_omni_moe as oc
    from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as om

    if cfg.layout == OMNI:
        ids = dict(vision_start_token_id=cfg.vocab_size - 5, audio_token_id=cfg.vocab_size - 4,
                   image_token_id=cfg.vocab_size - 3, video_token_id=cfg.vocab_size - 2,
                   audio_start_token_id=cfg.vocab_size - 1) | (token_ids or {})
        tc = oc.Qwen3OmniMoeThinkerConfig(text_config=cfg.to_hf(), audio_config=TINY_AUDIO,
                                          vision_config=TINY_VISION, **ids)
        model = om.Qwen3OmniMoeThinkerForConditionalGeneration(tc)
    else:
        model = Qwen3_5MoeForCausalLM(Qwen3_5MoeTextConfig(**cfg.to_hf()))
    randomize(model, seed)
    model.set_attn_implementation("eager")
    model.set_experts_implementation("eager")
    return model.float().eval()


def ours_like(hf_model) -> ThinkerLM:
    """An omnistream Thinker built from the reference's config.json dict, holding its weights."""
    cfg = TextConfig.from_hf(hf_model.config.to_dict())
    model = ThinkerLM(cfg)
    load_state_into(model, convert_state_dict(hf_model.state_dict()), "reference")
    return model.eval()
