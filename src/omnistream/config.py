"""Configuration dataclasses for the Thinker language model, built from presets or a Hugging Face config.json."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LINEAR = "linear_attention"
FULL = "full_attention"

QWEN35 = "qwen3_5"  # hybrid Gated DeltaNet + gated attention, zero-centred norms, shared expert
OMNI = "qwen3_omni"  # all full attention, classic norms, q/k norm, norm_topk_prob routing


class ConfigError(ValueError):
    """A config.json that omnistream cannot turn into a model."""


@dataclass
class TextConfig:
    """Hyper-parameters of a hybrid-attention MoE decoder (Thinker or Talker text backbone)."""

    layout: str = QWEN35
    vocab_size: int = 248320
    hidden_size: int = 2048
    num_hidden_layers: int = 40
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    head_dim: int = 256
    layer_types: list[str] = field(default_factory=list)
    # Gated DeltaNet
    linear_num_key_heads: int = 16
    linear_num_value_heads: int = 32
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_conv_kernel_dim: int = 4
    # MoE
    num_experts: int = 256
    num_experts_per_tok: int = 8
    moe_intermediate_size: int = 512
    shared_expert_intermediate_size: int = 512
    norm_topk_prob: bool = True
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)
    intermediate_size: int = 0
    router_aux_loss_coef: float = 0.001
    # norms, attention, rotary
    rms_norm_eps: float = 1e-6
    zero_centered_norm: bool = True
    attn_output_gate: bool = True
    attention_bias: bool = False
    hidden_act: str = "silu"
    rope_theta: float = 1e7
    partial_rotary_factor: float = 0.25
    mrope_section: list[int] = field(default_factory=lambda: [11, 11, 10])
    max_position_embeddings: int = 262144
    tie_word_embeddings: bool = False
    # special tokens
    pad_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    bos_token_id: int | None = None

    def __post_init__(self) -> None:
        if not self.layer_types:
            kind = FULL if self.layout == OMNI else None
            self.layer_types = [kind or (FULL if (i + 1) % 4 == 0 else LINEAR) for i in range(self.num_hidden_layers)]
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError when fields contradict each other."""
        problems = []
        if len(self.layer_types) != self.num_hidden_layers:
            problems.append(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
        if bad := sorted(set(self.layer_types) - {LINEAR, FULL}):
            problems.append(f"unknown layer types {bad}")
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append("num_attention_heads must be a multiple of num_key_value_heads")
        if LINEAR in self.layer_types and self.linear_num_value_heads % self.linear_num_key_heads:
            problems.append("linear_num_value_heads must be a multiple of linear_num_key_heads")
        if self.rotary_dim % 2 or self.rotary_dim <= 0:
            problems.append(f"rotary dim {self.rotary_dim} (head_dim x partial_rotary_factor) must be even and > 0")
        if self.num_experts and self.num_experts_per_tok > self.num_experts:
            problems.append("num_experts_per_tok exceeds num_experts")
        if self.hidden_act != "silu":
            problems.append(f"hidden_act {self.hidden_act!r} is not supported (only 'silu')")
        if problems:
            raise ConfigError("invalid text config: " + "; ".join(problems))

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)

    def is_moe_layer(self, idx: int) -> bool:
        """Whether decoder layer `idx` uses routed experts (else a dense SwiGLU MLP)."""
        return self.num_experts > 0 and idx not in self.mlp_only_layers and (idx + 1) % self.decoder_sparse_step == 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TextConfig":
        """A copy with some fields changed (layer_types re-derived if the layer count changes)."""
        d = self.to_dict()
        if "num_hidden_layers" in changes and "layer_types" not in changes:
            d["layer_types"] = []
        d.update(changes)
        return TextConfig(**d)

    def to_hf(self) -> dict[str, Any]:
        """A Hugging Face config.json dict (qwen3_5_moe_text or qwen3_omni_moe_text) describing this model."""
        rope = {"rope_type": "default", "rope_theta": self.rope_theta, "mrope_section": list(self.mrope_section),
                "mrope_interleaved": True}
        d = dict(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim, num_experts=self.num_experts, num_experts_per_tok=self.num_experts_per_tok,
            moe_intermediate_size=self.moe_intermediate_size, rms_norm_eps=self.rms_norm_eps,
            hidden_act=self.hidden_act, max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings, router_aux_loss_coef=self.router_aux_loss_coef,
            attention_bias=self.attention_bias, pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_id,
            bos_token_id=self.bos_token_id, rope_parameters=rope,
        )
        if self.layout == OMNI:
            d.update(model_type="qwen3_omni_moe_text", norm_topk_prob=self.norm_topk_prob,
                     decoder_sparse_step=self.decoder_sparse_step, mlp_only_layers=list(self.mlp_only_layers),
                     intermediate_size=self.intermediate_size or self.moe_intermediate_size)
            if self.shared_expert_intermediate_size:
                d["shared_expert_intermediate_size"] = self.shared_expert_intermediate_size
        else:
            rope["partial_rotary_factor"] = self.partial_rotary_factor
            d.update(model_type="qwen3_5_moe_text", layer_types=list(self.layer_types),
                     linear_num_key_heads=self.linear_num_key_heads, linear_num_value_heads=self.linear_num_value_heads,
                     linear_key_head_dim=self.linear_key_head_dim, linear_value_head_dim=self.linear_value_head_dim,
                     linear_conv_kernel_dim=self.linear_conv_kernel_dim,
                     shared_expert_intermediate_size=self.shared_expert_intermediate_size)
            if self.intermediate_size:
                d["intermediate_size"] = self.intermediate_size
        return d

    # ------------------------------------------------------------------ Hugging Face import
    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "TextConfig":
        """Build from a config.json dict of qwen3_5_moe(_text), qwen3_next or qwen3_omni_moe(_thinker/_text)."""
        text, layout = _find_text_config(cfg)
        rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
        theta = rope.get("rope_theta", text.get("rope_theta", 1e6 if layout == OMNI else 1e4))
        heads = text["num_attention_heads"]
        head_dim = text.get("head_dim") or text["hidden_size"] // heads
        n_layers = text["num_hidden_layers"]
        if layout == OMNI:
            layer_types = [FULL] * n_layers
        else:
            layer_types = list(text.get("layer_types") or [])
            if not layer_types:
                every = text.get("full_attention_interval", 4)
                layer_types = [FULL if (i + 1) % every == 0 else LINEAR for i in range(n_layers)]
        partial = rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 1.0 if layout == OMNI else 0.25))
        default_section = [24, 20, 20] if layout == OMNI else [11, 11, 10]
        num_experts = text.get("num_experts", text.get("num_local_experts", 0)) or 0
        eos = text.get("eos_token_id", cfg.get("eos_token_id"))
        out = cls(
            layout=layout,
            vocab_size=text["vocab_size"],
            hidden_size=text["hidden_size"],
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=text.get("num_key_value_heads", heads),
            head_dim=head_dim,
            layer_types=layer_types,
            linear_num_key_heads=text.get("linear_num_key_heads", 16),
            linear_num_value_heads=text.get("linear_num_value_heads", 32),
            linear_key_head_dim=text.get("linear_key_head_dim", 128),
            linear_value_head_dim=text.get("linear_value_head_dim", 128),
            linear_conv_kernel_dim=text.get("linear_conv_kernel_dim", 4),
            num_experts=num_experts,
            num_experts_per_tok=text.get("num_experts_per_tok", 1),
            moe_intermediate_size=text.get("moe_intermediate_size", 0),
            shared_expert_intermediate_size=text.get("shared_expert_intermediate_size", 0) or 0,
            norm_topk_prob=True if layout == QWEN35 else bool(text.get("norm_topk_prob", False)),
            decoder_sparse_step=text.get("decoder_sparse_step", 1) or 1,
            mlp_only_layers=list(text.get("mlp_only_layers") or []),
            intermediate_size=text.get("intermediate_size", 0) or 0,
            router_aux_loss_coef=text.get("router_aux_loss_coef", 0.001),
            rms_norm_eps=text.get("rms_norm_eps", 1e-6),
            zero_centered_norm=layout == QWEN35,
            attn_output_gate=layout == QWEN35 and text.get("attn_output_gate", True),
            attention_bias=text.get("attention_bias", False),
            hidden_act=text.get("hidden_act", "silu"),
            rope_theta=float(theta),
            partial_rotary_factor=float(partial),
            mrope_section=list(rope.get("mrope_section") or default_section),
            max_position_embeddings=text.get("max_position_embeddings", 32768),
            tie_word_embeddings=bool(text.get("tie_word_embeddings", cfg.get("tie_word_embeddings", False))),
            pad_token_id=text.get("pad_token_id"),
            eos_token_id=eos,
            bos_token_id=text.get("bos_token_id"),
        )
        return out

    @classmethod
    def from_file(cls, path: str | Path) -> "TextConfig":
        """Read a config.json (or a checkpoint directory holding one)."""
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise ConfigError(f"no config.json at {p}")
        try:
            return cls.from_hf(json.loads(p.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(f"{p}: cannot read a text-model config ({type(e).__name__}: {e})") from e


def _find_text_config(cfg: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Locate the text-model section of a config.json and name its layout."""
    mt = cfg.get("model_type", "")
    if mt == "qwen3_omni_moe":
        return _find_text_config({**cfg["thinker_config"], "model_type": "qwen3_omni_moe_thinker"})
    if mt == "qwen3_omni_moe_thinker":  # an omni thinker whose LM is hybrid is the Qwen3.5-Omni layout
        hybrid = cfg["text_config"].get("model_type") in ("qwen3_5_moe_text", "qwen3_5_text", "qwen3_next")
        return cfg["text_config"], QWEN35 if hybrid else OMNI
    if mt in ("qwen3_omni_moe_text", "qwen3_moe"):
        return cfg, OMNI
    if mt in ("qwen3_5_moe", "qwen3_5"):
        return cfg["text_config"], QWEN35
    if mt in ("qwen3_5_moe_text", "qwen3_5_text", "qwen3_next"):
        return cfg, QWEN35
    raise ConfigError(
        f"unsupported model_type {mt!r}; expected one of qwen3_5_moe, qwen3_5_moe_text, qwen3_omni_moe, "
        "qwen3_omni_moe_thinker, qwen3_omni_moe_text"
    )


# ---------------------------------------------------------------------- presets
def tiny_qwen35(**kw: Any) -> TextConfig:
    """A few-layer hybrid config for tests (3 DeltaNet : 1 attention, shared expert)."""
    base = dict(
        layout=QWEN35, vocab_size=256, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
        linear_key_head_dim=16, linear_value_head_dim=16, num_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=32, shared_expert_intermediate_size=48, rope_theta=1e4, partial_rotary_factor=0.25,
        mrope_section=[1, 1, 0], max_position_embeddings=4096,
    )
    base.update(kw)
    return TextConfig(**base)


def tiny_omni(**kw: Any) -> TextConfig:
    """A few-layer Qwen3-Omni thinker text config for tests (all attention, no shared expert)."""
    base = dict(
        layout=OMNI, vocab_size=256, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=0, norm_topk_prob=True, zero_centered_norm=False, attn_output_gate=False,
        intermediate_size=48, rope_theta=1e6, partial_rotary_factor=1.0, mrope_section=[2, 3, 3],
        max_position_embeddings=4096,
    )
    base.update(kw)
    return TextConfig(**base)


def bench_hybrid(**kw: Any) -> TextConfig:
    """Mid-size hybrid config for CPU benchmarks: 8 layers, hidden 512, 16 experts top-4."""
    base = dict(
        layout=QWEN35, vocab_size=32000, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=2, head_dim=64, linear_num_key_heads=4, linear_num_value_heads=8,
        linear_key_head_dim=64, linear_value_head_dim=64, num_experts=16, num_experts_per_tok=4,
        moe_intermediate_size=256, shared_expert_intermediate_size=256, rope_theta=1e7,
        partial_rotary_factor=0.25, mrope_section=[3, 3, 2], max_position_embeddings=65536,
    )
    base.update(kw)
    return TextConfig(**base)


def qwen3_omni_30b_a3b() -> TextConfig:
    """The Qwen3-Omni-30B-A3B thinker text model shape."""
    return TextConfig(
        layout=OMNI, vocab_size=152064, hidden_size=2048, num_hidden_layers=48, num_attention_heads=32,
        num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
        shared_expert_intermediate_size=0, norm_topk_prob=True, zero_centered_norm=False, attn_output_gate=False,
        intermediate_size=768, rope_theta=1e6, partial_rotary_factor=1.0, mrope_section=[24, 20, 20],
        max_position_embeddings=65536,
        eos_token_id=151645,
    )


def qwen35_35b_a3b() -> TextConfig:
    """The Qwen3.5-35B-A3B hybrid text model shape."""
    return TextConfig(
        layout=QWEN35, vocab_size=248320, hidden_size=2048, num_hidden_layers=40, num_attention_heads=16,
        num_key_value_heads=2, head_dim=256, num_experts=256, num_experts_per_tok=8, moe_intermediate_size=512,
        shared_expert_intermediate_size=512, rope_theta=1e7, partial_rotary_factor=0.25,
        mrope_section=[11, 11, 10], max_position_embeddings=262144, eos_token_id=248044,
    )


PRESETS = {
    "tiny-qwen3.5": tiny_qwen35,
    "tiny-omni": tiny_omni,
    "bench-hybrid": bench_hybrid,
    "qwen3-omni-30b-a3b": qwen3_omni_30b_a3b,
    "qwen3.5-35b-a3b": qwen35_35b_a3b,
}


@dataclass
class AudioConfig:
    """AuT audio encoder: N stride-2 Conv2D blocks over log-mel chunks, windowed bidirectional transformer."""

    num_mel_bins: int = 128
    d_model: int = 1280
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    max_source_positions: int = 1500
    n_window: int = 50  # chunk = 2 * n_window mel frames; positions restart in every chunk
    n_window_infer: int = 800  # default attention window in mel frames (a multiple of the chunk)
    conv_chunksize: int = 500  # chunks per conv call, bounding conv memory
    downsample_hidden_size: int = 480
    num_downsample: int = 3  # 3: Qwen3-Omni (~12.5 Hz); 4: Qwen3.5-Omni (6.25 Hz)
    output_dim: int = 2048

    def __post_init__(self) -> None:
        problems = []
        if self.d_model % self.encoder_attention_heads:
            problems.append("d_model must be a multiple of encoder_attention_heads")
        if self.num_downsample < 1:
            problems.append("num_downsample must be >= 1")
        if self.n_window_infer % (2 * self.n_window):
            problems.append(f"n_window_infer {self.n_window_infer} is not a multiple of the chunk {2 * self.n_window}")
        if problems:
            raise ConfigError("invalid audio config: " + "; ".join(problems))

    @property
    def chunk_frames(self) -> int:
        return 2 * self.n_window

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "AudioConfig":
        """From a qwen3_omni_moe audio_config dict (or a whole Qwen3-Omni / thinker config.json)."""
        if "thinker_config" in cfg:
            cfg = cfg["thinker_config"]
        cfg = cfg.get("audio_config", cfg)
        if cfg.get("activation_function", "gelu") != "gelu":
            raise ConfigError(f"audio activation {cfg['activation_function']!r} is not supported (only 'gelu')")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in names})


def tiny_audio(**kw: Any) -> AudioConfig:
    """A tiny AuT for tests (Qwen3-Omni layout unless num_downsample=4)."""
    base = dict(num_mel_bins=128, d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=48,
                n_window=50, n_window_infer=200, downsample_hidden_size=8, output_dim=64)
    base.update(kw)
    return AudioConfig(**base)


def qwen35_omni_audio(**kw: Any) -> AudioConfig:
    """The Qwen3.5-Omni AuT shape: four Conv2D blocks, 1.28 s chunks of 8 tokens = 6.25 Hz (160 ms per token)."""
    base = dict(n_window=64, n_window_infer=1024, num_downsample=4)
    base.update(kw)
    return AudioConfig(**base)


VISION_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu")


@dataclass
class VisionConfig:
    """ViT vision encoder: 3-D patch embed, learned 2-D positions, axial RoPE, per-frame attention, 2x2 merger."""

    depth: int = 27
    hidden_size: int = 1152
    hidden_act: str = "gelu_pytorch_tanh"
    intermediate_size: int = 4304
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 16
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    out_hidden_size: int = 3584
    num_position_embeddings: int = 2304
    deepstack_visual_indexes: list[int] = field(default_factory=lambda: [8, 16, 24])
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        self.deepstack_visual_indexes = list(self.deepstack_visual_indexes)
        problems = []
        sizes = ("depth", "hidden_size", "intermediate_size", "num_heads", "in_channels", "patch_size",
                 "spatial_merge_size", "temporal_patch_size", "out_hidden_size", "num_position_embeddings")
        if bad := [n for n in sizes if not isinstance(getattr(self, n), int) or getattr(self, n) <= 0]:
            problems.append(f"{', '.join(bad)} must be positive integers")
        elif self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        elif self.head_dim % 4:
            problems.append(f"head_dim {self.head_dim} must be a multiple of 4 (2-D axial rotary)")
        if isinstance(self.num_position_embeddings, int) and self.grid_per_side ** 2 != self.num_position_embeddings:
            problems.append(f"num_position_embeddings {self.num_position_embeddings} is not a square grid")
        if self.hidden_act not in VISION_ACTIVATIONS:
            problems.append(f"hidden_act {self.hidden_act!r} is not supported (one of {list(VISION_ACTIVATIONS)})")
        idx = self.deepstack_visual_indexes
        if len(set(idx)) != len(idx) or any(not isinstance(i, int) or not 0 <= i < self.depth for i in idx):
            problems.append(f"deepstack_visual_indexes {idx} must be distinct block indices below depth {self.depth}")
        if problems:
            raise ConfigError("invalid vision config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid_per_side(self) -> int:
        return round(self.num_position_embeddings**0.5)

    @property
    def patch_dim(self) -> int:
        """Values per flattened input patch: in_channels * temporal_patch_size * patch_size**2."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "VisionConfig":
        """From a qwen3_omni_moe vision_config dict (or a whole Qwen3-Omni / thinker config.json)."""
        if "thinker_config" in cfg:
            cfg = cfg["thinker_config"]
        cfg = cfg.get("vision_config", cfg)
        rope = dict(cfg.get("rope_parameters") or {})
        if rope.get("rope_type", "axial") != "axial":
            raise ConfigError(f"vision rope_type {rope['rope_type']!r} is not supported (only 'axial')")
        for name in ("patch_size", "temporal_patch_size"):
            if isinstance(cfg.get(name), (list, tuple)):
                raise ConfigError(f"vision {name} {cfg[name]} must be a single integer")
        names = {f.name for f in dataclasses.fields(cls)} - {"rope_theta"}
        theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
        return cls(**{k: v for k, v in cfg.items() if k in names}, rope_theta=float(theta))


def tiny_vision(**kw: Any) -> VisionConfig:
    """A tiny vision encoder for tests: 3 blocks of width 32, 4-pixel patches, an 8x8 position table."""
    base = dict(depth=3, hidden_size=32, num_heads=2, intermediate_size=48, patch_size=4, temporal_patch_size=2,
                spatial_merge_size=2, out_hidden_size=48, num_position_embeddings=64, deepstack_visual_indexes=[0, 2])
    base.update(kw)
    return VisionConfig(**base)
