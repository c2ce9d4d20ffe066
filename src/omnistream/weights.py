"""Safetensors checkpoint I/O and the one name map between Hugging Face layouts and omnistream modules."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import AudioConfig, ConfigError, TextConfig, VisionConfig
from .thinker import Thinker, ThinkerLM


class CheckpointError(RuntimeError):
    """A checkpoint directory or file that cannot be loaded as asked."""


# (checkpoint prefix, omnistream prefix), first match wins; covers Qwen3.5 (VL and text-only) and Qwen3-Omni
# (original release layout and transformers' runtime names).
_PREFIXES = [
    ("thinker.model.language_model.", "model."),
    ("thinker.model.", "model."),
    ("thinker.lm_head.", "lm_head."),
    ("model.language_model.", "model."),
    ("model.", "model."),
    ("lm_head.", "lm_head."),
]
_OTHER_COMPONENT = re.compile(r"(^|\.)(audio_tower|visual)\.|^(talker|code2wav|mtp|audio_tokenizer)\.")
_TOWER = re.compile(r"(?:^|\.)(audio_tower|visual)\.(.+)$")  # the Thinker's encoders, under any prefix
PER_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


@dataclass
class CheckpointLayout:
    """How a checkpoint names things, so that saving writes the same layout back."""

    lm_prefix: str = "model."
    head_prefix: str = "lm_head."
    per_expert: bool = False
    config: dict = field(default_factory=dict)
    passthrough: dict[str, Path] = field(default_factory=dict)  # other components' tensors -> source file


def _shard_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint, from its index json when present."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from e
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shards that do not exist: {', '.join(missing)}")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no .safetensors files in {directory}")
    return files


def _iter_tensors(files: list[Path]):
    """Yield (file, name, lazy getter) for every tensor, turning corrupt files into CheckpointError."""
    for path in files:
        try:
            handle = safe_open(str(path), framework="pt")
            names = list(handle.keys())
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from e
        for name in names:
            yield path, name, handle


def _get(path: Path, handle, name: str) -> torch.Tensor:
    try:
        return handle.get_tensor(name)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{path}: tensor {name!r} cannot be read; the file is truncated or corrupt ({e})") from e


def to_omnistream_name(name: str) -> tuple[str | None, str | None]:
    """Map a checkpoint tensor name to ours; returns (our name, the checkpoint prefix) or (None, None)."""
    for src, dst in _PREFIXES:
        if name.startswith(src):
            return dst + name[len(src):], src
    return None, None


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face-named state dict (any supported layout) -> omnistream names, experts fused."""
    out, experts = {}, defaultdict(dict)
    for name, tensor in state.items():
        if _OTHER_COMPONENT.search(name):
            continue
        ours, _ = to_omnistream_name(name)
        if ours is None:
            out[name] = tensor
            continue
        if m := PER_EXPERT.match(ours):
            experts[m.group(1)][(int(m.group(2)), m.group(3))] = tensor
        else:
            out[ours] = tensor
    out.update(fuse_experts(experts))
    return out


def fuse_experts(experts: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Per-expert gate/up/down matrices -> gate_up_proj (E, 2I, H) and down_proj (E, H, I)."""
    fused = {}
    for base, parts in experts.items():
        n = 1 + max(e for e, _ in parts)
        missing = [f"{base}.{e}.{p}_proj.weight" for e in range(n) for p in ("gate", "up", "down")
                   if (e, f"{p}_proj") not in parts]
        if missing:
            raise CheckpointError("missing expert tensors: " + ", ".join(missing[:10]))
        fused[f"{base}.gate_up_proj"] = torch.stack(
            [torch.cat([parts[(e, "gate_proj")], parts[(e, "up_proj")]]) for e in range(n)])
        fused[f"{base}.down_proj"] = torch.stack([parts[(e, "down_proj")] for e in range(n)])
    return fused


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Copy a converted state dict into the model, raising one error that lists every mismatch."""
    expected = model.state_dict()
    seen, tied = set(), set()
    for k, v in expected.items():  # a tied parameter (e.g. lm_head = embed_tokens) is loaded once, by its first name
        if v.data_ptr() in seen:
            tied.add(k)
        seen.add(v.data_ptr())
    expected = {k: v for k, v in expected.items() if k not in tied}
    state = {k: v for k, v in state.items() if k not in tied}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        lines = [f"checkpoint {source} does not match the model config:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                shown = ", ".join(items[:20]) + (f" ... ({len(items)} in all)" if len(items) > 20 else "")
                lines.append(f"  {title}: {shown}")
        raise CheckpointError("\n".join(lines))
    with torch.no_grad():
        for k, v in state.items():
            expected[k].copy_(v)


def convert_thinker_state_dict(state: dict[str, torch.Tensor],
                               towers: tuple[str, ...] = ("audio_tower", "visual")) -> dict[str, torch.Tensor]:
    """A Hugging Face Qwen3-Omni thinker state dict -> omnistream Thinker names (lm.*, and the chosen towers)."""
    out = {"lm." + k: v for k, v in convert_state_dict(state).items()}
    for name, tensor in state.items():
        if (m := _TOWER.search(name)) and m.group(1) in towers:
            out[f"{m.group(1)}.{m.group(2)}"] = tensor
    return out


def _empty(build, dtype: torch.dtype, device) -> torch.nn.Module:
    """Allocate a module without initialising its weights (they are about to be overwritten); rebuild buffers."""
    with torch.device("meta"):
        module = build()
    module = module.to_empty(device=device).to(dtype)
    for m in module.modules():
        if hasattr(m, "init_buffers"):  # constant tables are not in checkpoints: recompute them, in fp32
            m.init_buffers()
        if isinstance(m, ThinkerLM) and m.config.tie_word_embeddings:
            m.lm_head.weight = m.model.embed_tokens.weight
    return module.eval()


def _read(path: str | Path, dtype: torch.dtype, with_towers: bool):
    """Config, LM state (our names), encoder-tower state (audio_tower.*, visual.*) and layout of a checkpoint."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"checkpoint directory {directory} has no config.json")
    config = TextConfig.from_file(cfg_path)
    raw = json.loads(cfg_path.read_text())
    layout = CheckpointLayout(config=raw)
    state, towers, experts = {}, {}, defaultdict(dict)
    for file, name, handle in _iter_tensors(_shard_files(directory)):
        if with_towers and (m := _TOWER.search(name)):
            towers[f"{m.group(1)}.{m.group(2)}"] = _get(file, handle, name).to(dtype)
            continue
        if _OTHER_COMPONENT.search(name):
            layout.passthrough[name] = file
            continue
        ours, prefix = to_omnistream_name(name)
        if ours is None:
            state[name] = _get(file, handle, name)
            continue
        if ours.startswith("lm_head."):
            layout.head_prefix = prefix
        else:
            layout.lm_prefix = prefix
        tensor = _get(file, handle, name).to(dtype)
        if m := PER_EXPERT.match(ours):
            layout.per_expert = True
            experts[m.group(1)][(int(m.group(2)), m.group(3))] = tensor
        else:
            state[ours] = tensor
    state.update(fuse_experts(experts))
    return config, raw, state, towers, layout


def load_thinker(path: str | Path, dtype: torch.dtype = torch.float32, device="cpu"):
    """Load the Thinker LM of a checkpoint directory; returns (model, layout for saving back)."""
    config, _, state, _, layout = _read(path, dtype, with_towers=False)
    model = _empty(lambda: ThinkerLM(config), dtype, device)
    load_state_into(model, state, str(path))
    return model, layout


def position_ticks(path: str | Path) -> float:
    """The Thinker's TM-RoPE position_id_per_seconds from a checkpoint's config.json (the release value when absent)."""
    from .processor import TICKS_PER_SECOND

    raw = json.loads((Path(path) / "config.json").read_text())
    return float(raw.get("thinker_config", raw).get("position_id_per_seconds", TICKS_PER_SECOND))


def load_omni_thinker(path: str | Path, dtype: torch.dtype = torch.float32, device="cpu") -> Thinker:
    """Load a Qwen3-Omni Thinker with its audio and vision encoders (those its config.json describes)."""
    config, raw, state, towers, _ = _read(path, dtype, with_towers=True)
    cfg = raw.get("thinker_config", raw)
    if "audio_config" not in cfg and "vision_config" not in cfg:
        raise ConfigError(f"{path}/config.json has neither audio_config nor vision_config: not an omni thinker")
    audio = AudioConfig.from_hf(cfg) if "audio_config" in cfg else None
    vision = VisionConfig.from_hf(cfg) if "vision_config" in cfg else None
    model = _empty(lambda: Thinker(config, audio, cfg.get("audio_token_id"), vision, cfg.get("image_token_id"),
                                   cfg.get("video_token_id")), dtype, device)
    keep = tuple(name for name, c in (("audio_tower.", audio), ("visual.", vision)) if c is not None)
    full = {"lm." + k: v for k, v in state.items()} | {k: v for k, v in towers.items() if k.startswith(keep)}
    load_state_into(model, full, str(path))
    return model


def _checkpoint_names(model: ThinkerLM, layout: CheckpointLayout) -> dict[str, torch.Tensor]:
    """Our state dict renamed (and experts split, if the source had them split) to the checkpoint's layout."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        if name.startswith("lm_head."):
            out[layout.head_prefix + name[len("lm_head."):]] = tensor
            continue
        key = layout.lm_prefix + name[len("model."):]
        if layout.per_expert and name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            base = key.rsplit(".", 1)[0]
            if name.endswith("gate_up_proj"):
                for e, w in enumerate(tensor):
                    gate, up = w.chunk(2)
                    out[f"{base}.{e}.gate_proj.weight"], out[f"{base}.{e}.up_proj.weight"] = gate, up
            else:
                for e, w in enumerate(tensor):
                    out[f"{base}.{e}.down_proj.weight"] = w
            continue
        out[key] = tensor
    return out


def save_thinker(model: ThinkerLM, path: str | Path, layout: CheckpointLayout | None = None,
                 max_shard_bytes: int = 4 << 30) -> None:
    """Write config.json and sharded safetensors (with an index json when sharded) in the checkpoint's layout."""
    layout = layout or CheckpointLayout()
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in _checkpoint_names(model, layout).items()}
    handles = {}
    for name, file in layout.passthrough.items():
        handle = handles.setdefault(file, safe_open(str(file), framework="pt"))
        tensors[name] = _get(file, handle, name)
    shards, current, size = [], {}, 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name], size = tensors[name], size + nbytes
    shards.append(current)
    names = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for shard, fname in zip(shards, names):
        save_file(shard, str(directory / fname), metadata={"format": "pt"})
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                 "weight_map": {k: fname for shard, fname in zip(shards, names) for k in shard}}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = layout.config or model.config.to_hf()
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def load_omni(path: str | Path, dtype: torch.dtype = torch.float32, device="cpu"):
    """Load a whole Qwen3-Omni checkpoint (Thinker, Talker, Code2Wav) for speech output.

    Returns (thinker, talker, code2wav, SpeechTokens). The Talker and Code2Wav are built normally (their
    initialisation is overwritten), so their non-persistent buffers are the constructor's."""
    from .audio.code2wav import Code2Wav, Code2WavConfig
    from .engine.session import SpeechTokens
    from .talker import Talker, TalkerConfig, convert_talker_state_dict

    directory = Path(path)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"checkpoint directory {directory} has no config.json")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cfg_path}: not valid JSON ({e})") from e
    lacking = [k for k in ("talker_config", "code2wav_config") if not raw.get(k)]
    if lacking:
        raise ConfigError(f"{cfg_path} has no {' or '.join(lacking)}: this checkpoint cannot speak "
                          f"(a full Qwen3-Omni checkpoint with its talker and code2wav is needed)")
    try:
        talker_cfg = TalkerConfig.from_hf(raw)
        c2w_cfg = Code2WavConfig.from_hf(raw["code2wav_config"])
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{cfg_path}: cannot read the talker/code2wav config ({type(e).__name__}: {e})") from e
    thinker = load_omni_thinker(directory, dtype, device)
    talker_state, c2w_state = {}, {}
    for file, name, handle in _iter_tensors(_shard_files(directory)):
        if name.startswith("talker."):
            talker_state[name] = _get(file, handle, name).to(dtype)
        elif name.startswith("code2wav."):
            c2w_state[name[len("code2wav."):]] = _get(file, handle, name).to(dtype)
    if not talker_state or not c2w_state:
        missing = [n for n, s in (("talker.*", talker_state), ("code2wav.*", c2w_state)) if not s]
        raise CheckpointError(f"{directory} has no {' or '.join(missing)} tensors: this checkpoint cannot speak")
    talker = _empty(lambda: Talker(talker_cfg), dtype, device)
    code2wav = _empty(lambda: Code2Wav(c2w_cfg), dtype, device)
    load_state_into(talker, convert_talker_state_dict(talker_state), f"{path} (talker)")
    load_state_into(code2wav, c2w_state, f"{path} (code2wav)")
    return thinker, talker.eval(), code2wav.eval(), SpeechTokens.from_hf(raw)


def save_omni(path: str | Path, thinker: Thinker, talker, code2wav, tokens, codec=None,
              dtype: torch.dtype = torch.float16) -> None:
    """Write a whole speaking model (Thinker with encoders, Talker, Code2Wav, optional audio tokenizer) as one
    checkpoint that `load_omni` reads back: config.json in the qwen3_omni_moe shape and one safetensors file."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    thinker_cfg = {"model_type": "qwen3_omni_moe_thinker", "text_config": thinker.lm.config.to_hf(),
                   "audio_token_id": thinker.audio_token_id, "image_token_id": thinker.image_token_id,
                   "video_token_id": thinker.video_token_id}
    if thinker.audio_tower is not None:
        thinker_cfg["audio_config"] = dataclasses.asdict(thinker.audio_tower.config)
    if thinker.visual is not None:
        thinker_cfg["vision_config"] = dataclasses.asdict(thinker.visual.config)
    config = {"model_type": "qwen3_omni_moe", "enable_audio_output": True, "thinker_config": thinker_cfg,
              "talker_config": talker.config.to_hf(), "code2wav_config": dataclasses.asdict(code2wav.config),
              **dataclasses.asdict(tokens)}
    tensors = {f"thinker.{'model' if k.startswith('lm.model.') else 'lm_head'}.{k.split('.', 2)[2]}": v
               for k, v in thinker.state_dict().items() if k.startswith("lm.")}
    if thinker.lm.config.tie_word_embeddings:
        tensors.pop("thinker.lm_head.weight", None)
    for prefix, module in (("thinker.audio_tower.", thinker.audio_tower), ("thinker.visual.", thinker.visual),
                           ("talker.", talker), ("code2wav.", code2wav)):
        if module is not None:
            tensors.update({prefix + k: v for k, v in module.state_dict().items()})
    if codec is not None:
        config["codec_config"] = dataclasses.asdict(codec.config)
        tensors.update({"audio_tokenizer." + k: v for k, v in codec.state_dict().items()
                        if k.startswith(("encoder.", "quantizer."))})
    out = {k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(out, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
