"""The Talker: an MoE decoder over codec tokens (codebook 0) and the MTP code predictor (residual codebooks)."""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .cache import InferenceCache
from .config import ConfigError, TextConfig
from .decoder import Decoder
from .positions import TokenIds
from .sampling import SamplingParams, sample
from .weights import PER_EXPERT, fuse_experts

HYBRID_TYPES = ("qwen3_5_moe_text", "qwen3_5_text", "qwen3_next")  # talker backbones kept hybrid


@dataclass
class TalkerConfig:
    """Talker backbone and code predictor shapes, with the codec special ids (Qwen3OmniMoeTalkerConfig)."""

    text: TextConfig  # MoE backbone over the codec vocabulary; intermediate_size sizes the projection MLPs
    code_predictor: TextConfig  # small dense decoder, 1-D rotary (all slots on the temporal row)
    num_code_groups: int = 16
    thinker_hidden_size: int = 2048
    accept_hidden_layer: int = 24
    codec_pad_id: int = 2148
    codec_bos_id: int = 2149
    codec_eos_token_id: int = 2150
    codec_nothink_id: int = 2155
    codec_think_bos_id: int = 2156
    codec_think_eos_id: int = 2157
    speaker_id: dict[str, int] = field(default_factory=dict)
    interleave: str = "fixed"  # "fixed": one text token summed into every frame (Qwen3-Omni); "aria": one stream
    codec_text_slot_id: int | None = None  # ARIA: the codebook-0 id meaning "the next unit is text"
    aria_frames_per_token: dict[str, float] = field(default_factory=dict)  # ARIA prior per language
    aria_default_ratio: float = 4.0  # ARIA prior (frames per text token) for other languages
    position_id_per_seconds: float = 25  # TMRoPE ticks per second over the talker's prompt (release: 13)
    spatial_merge_size: int = 2
    placeholders: TokenIds = field(default_factory=TokenIds)  # thinker ids the talker's TMRoPE positions read

    def __post_init__(self) -> None:
        problems = []
        if self.interleave not in ("fixed", "aria"):
            problems.append(f"interleave must be 'fixed' or 'aria', got {self.interleave!r}")
        if self.interleave == "aria":
            slot = self.codec_text_slot_id
            if slot is None or not 0 <= slot < self.text.vocab_size:
                problems.append(f"ARIA needs codec_text_slot_id inside the codec vocabulary "
                                f"[0, {self.text.vocab_size}), got {slot}")
            elif slot == self.codec_eos_token_id:
                problems.append("codec_text_slot_id must differ from codec_eos_token_id")
        if self.text.num_experts <= 0:
            problems.append("the talker backbone needs routed experts (num_experts > 0)")
        if self.code_predictor.hidden_size != self.text.hidden_size:
            problems.append(f"code predictor hidden {self.code_predictor.hidden_size} != talker hidden "
                            f"{self.text.hidden_size}")
        if self.text.intermediate_size <= 0:
            problems.append("the talker needs text intermediate_size > 0 (it sizes text_projection and "
                            "hidden_projection)")
        if self.code_predictor.num_experts:
            problems.append("the code predictor is dense (num_experts must be 0)")
        if self.num_code_groups < 2:
            problems.append("num_code_groups must be >= 2")
        if problems:
            raise ConfigError("invalid talker config: " + "; ".join(problems))

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "TalkerConfig":
        """From a Qwen3OmniMoeTalkerConfig dict, or a whole qwen3_omni_moe config.json holding `talker_config`."""
        cfg = cfg.get("talker_config", cfg)
        text = dict(cfg["text_config"])
        if not text.get("shared_expert_intermediate_size"):
            raise ConfigError("talker text_config lacks shared_expert_intermediate_size (required by the model)")
        if text.get("model_type") not in HYBRID_TYPES:
            # every reference talker layer is sparse, whatever mlp_only_layers / decoder_sparse_step say
            text.update(model_type="qwen3_omni_moe_text", mlp_only_layers=[], decoder_sparse_step=1)
        cp = TextConfig.from_hf({**cfg["code_predictor_config"], "model_type": "qwen3_omni_moe_text"})
        cp = cp.replace(mrope_section=[cp.rotary_dim // 2, 0, 0])
        return cls(
            text=TextConfig.from_hf(text), code_predictor=cp,
            **{k: cfg[k] for k in ("num_code_groups", "thinker_hidden_size", "accept_hidden_layer", "codec_pad_id",
                                   "codec_bos_id", "codec_eos_token_id", "codec_nothink_id", "codec_think_bos_id",
                                   "codec_think_eos_id", "position_id_per_seconds", "spatial_merge_size") if k in cfg},
            speaker_id=dict(cfg.get("speaker_id") or {}),
            placeholders=TokenIds(**{k: cfg[k] for k in TokenIds.__dataclass_fields__ if cfg.get(k) is not None}),
            **{k: cfg[k] for k in ("interleave", "codec_text_slot_id", "aria_frames_per_token", "aria_default_ratio")
               if cfg.get(k) is not None},
        )

    def to_hf(self) -> dict[str, Any]:
        """A talker_config dict that from_hf reads back to this config."""
        text = self.text.to_hf()
        cp = self.code_predictor.to_hf()
        cp.update(model_type="qwen3_omni_moe_talker_code_predictor", num_code_groups=self.num_code_groups)
        cp["rope_parameters"] = {"rope_type": "default", "rope_theta": self.code_predictor.rope_theta}
        out = {k: getattr(self, k) for k in (
            "num_code_groups", "thinker_hidden_size", "accept_hidden_layer", "codec_pad_id", "codec_bos_id",
            "codec_eos_token_id", "codec_nothink_id", "codec_think_bos_id", "codec_think_eos_id", "interleave",
            "codec_text_slot_id", "aria_default_ratio", "position_id_per_seconds", "spatial_merge_size")}
        out.update(model_type="qwen3_omni_moe_talker", text_config=text, code_predictor_config=cp,
                   speaker_id=dict(self.speaker_id), aria_frames_per_token=dict(self.aria_frames_per_token),
                   **dataclasses.asdict(self.placeholders))
        return out


class ResizeMLP(nn.Module):
    """Thinker width -> Talker width: Linear(bias) -> SiLU -> Linear(bias)."""

    def __init__(self, in_size: int, intermediate_size: int, out_size: int):
        super().__init__()
        self.linear_fc1 = nn.Linear(in_size, intermediate_size)
        self.linear_fc2 = nn.Linear(intermediate_size, out_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(nn.functional.silu(self.linear_fc1(x)))


class CodePredictor(nn.Module):
    """MTP module: a dense decoder that predicts codebooks 1..Q-1 of a frame from the talker hidden and code 0."""

    def __init__(self, config: TextConfig, num_code_groups: int):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.model.embed_tokens = None  # inputs are always embeddings
        n = num_code_groups - 1
        self.codec_embedding = nn.ModuleList(nn.Embedding(config.vocab_size, config.hidden_size) for _ in range(n))
        self.lm_head = nn.ModuleList(nn.Linear(config.hidden_size, config.vocab_size, bias=False) for _ in range(n))

    def forward(self, inputs_embeds: torch.Tensor, head: int, cache: InferenceCache | None = None) -> torch.Tensor:
        """inputs_embeds (B, S, H) -> logits (B, S, V) of codebook head + 1."""
        return self.lm_head[head](self.model(inputs_embeds=inputs_embeds, cache=cache).last_hidden_state)

    @torch.no_grad()
    def generate(self, talker_hidden: torch.Tensor, code0_embed: torch.Tensor, sampling: SamplingParams | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """talker_hidden, code0_embed (B, H) -> residual codes (B, Q-1), their logits (B, Q-1, V); fresh positions.

        Greedy without `sampling` (the reference's do_sample=False)."""
        sampling = sampling or SamplingParams()
        b = talker_hidden.shape[0]
        n = len(self.lm_head)
        w = self.lm_head[0].weight
        cache = InferenceCache(self.config, b, n + 1, w.dtype, w.device)
        x = torch.stack([talker_hidden, code0_embed], 1)  # (B, 2, H)
        codes, logits = [], []
        for g in range(n):
            step = self(x, g, cache)[:, -1]  # (B, V)
            logits.append(step)
            codes.append(sample(step, sampling, generator=generator))
            x = self.codec_embedding[g](codes[-1])[:, None]  # (B, 1, H)
        return torch.stack(codes, 1), torch.stack(logits, 1)

    def greedy(self, talker_hidden: torch.Tensor, code0_embed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy residual codes (B, Q-1) and their logits (B, Q-1, V)."""
        return self.generate(talker_hidden, code0_embed)


class Talker(nn.Module):
    """Codec LM: MoE decoder whose embed_tokens is the codec embedding, codec head, thinker projections, MTP."""

    def __init__(self, config: TalkerConfig):
        super().__init__()
        self.config = config
        t = config.text
        self.model = Decoder(t)
        self.codec_head = nn.Linear(t.hidden_size, t.vocab_size, bias=False)
        if t.tie_word_embeddings:
            self.codec_head.weight = self.model.embed_tokens.weight
        self.text_projection = ResizeMLP(config.thinker_hidden_size, t.intermediate_size, t.hidden_size)
        self.hidden_projection = ResizeMLP(config.thinker_hidden_size, t.intermediate_size, t.hidden_size)
        self.code_predictor = CodePredictor(config.code_predictor, config.num_code_groups)

    @property
    def device(self) -> torch.device:
        return self.codec_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.codec_head.weight.dtype

    def new_cache(self, batch_size: int = 1, max_len: int = 4096) -> InferenceCache:
        """An empty talker inference state for `batch_size` rows and up to `max_len` positions."""
        return InferenceCache(self.config.text, batch_size, max_len, self.dtype, self.device)

    def forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor | None = None,
                cache: InferenceCache | None = None,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs_embeds (B, S, H), position_ids (3, B, S) -> codec logits (B, S, V), final-norm hidden (B, S, H)."""
        hidden = self.model(inputs_embeds=inputs_embeds, position_ids=position_ids, attention_mask=attention_mask,
                            cache=cache).last_hidden_state
        return self.codec_head(hidden), hidden

    def predict_residual(self, talker_hidden: torch.Tensor, code0: torch.Tensor, sampling: SamplingParams | None = None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """talker_hidden (B, H) at the step that sampled code0 (B,) -> residual codes (B, Q-1), greedy by default."""
        return self.code_predictor.generate(talker_hidden, self.model.embed_tokens(code0), sampling, generator)[0]

    def frame_embedding(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, Q) of one frame -> sum of its codebook embeddings (B, H): the codec part of the next input."""
        out = self.model.embed_tokens(codes[:, 0])
        for g, emb in enumerate(self.code_predictor.codec_embedding):
            out = out + emb(codes[:, g + 1])
        return out


_CP_EMBED = re.compile(r"^code_predictor\.model\.codec_embedding\.")


def convert_talker_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face talker state dict (bare or under `talker.`) -> omnistream Talker names, experts fused."""
    out, experts = {}, defaultdict(dict)
    for name, tensor in state.items():
        if name.startswith("talker."):
            name = name[len("talker."):]
        elif "." in name and name.split(".", 1)[0] in ("thinker", "code2wav"):
            continue
        name = _CP_EMBED.sub("code_predictor.codec_embedding.", name)
        if name.startswith("model.codec_embedding."):
            name = "model.embed_tokens." + name[len("model.codec_embedding."):]
        if m := PER_EXPERT.match(name):
            experts[m.group(1)][(int(m.group(2)), m.group(3))] = tensor
        else:
            out[name] = tensor
    out.update(fuse_experts(experts))
    return out
