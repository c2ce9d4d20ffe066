"""Zero-shot voice cloning input: a reference clip's codec frames (the voice prompt) and the codec checkpoint.

Speech detection (one rule, used for the no-speech check and for trimming): the clip is cut into 20 ms frames;
a frame's level is its RMS in dBFS (full-scale RMS 1.0 = 0 dBFS). A frame is *active* when its level is within
40 dB of the loudest frame and at least -60 dBFS. A clip with under 0.25 s of active frames has no speech
(digital silence, dither, a far-off hum). Leading and trailing inactive frames are trimmed, keeping 50 ms of
margin on each side so soft onsets and decays survive.

Checkpoint format: config.json's top-level "codec_config" = dataclasses.asdict(CodecConfig); tensors
"audio_tokenizer." + name for the encoder.* and quantizer.* entries of AudioTokenizer.state_dict() (the
training decoder is not shipped), in model.safetensors, the shards of model.safetensors.index.json, or any
audio_tokenizer*.safetensors file of the directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from .audio.codec import AudioTokenizer, CodecConfig
from .audio.io import AudioInputError, load_audio
from .config import ConfigError
from .weights import CheckpointError, _get, _iter_tensors, _shard_files, load_state_into

FRAME_SECONDS = 0.02
RELATIVE_DB = 40.0  # active frames are within this many dB of the loudest frame ...
FLOOR_DBFS = -60.0  # ... and at least this loud
MIN_SPEECH_SECONDS = 0.25
MARGIN_SECONDS = 0.05
PREFIX = "audio_tokenizer."
_SHIPPED = ("encoder.", "quantizer.")


class VoiceCloneError(ValueError):
    """A reference clip or voice prompt that cannot drive zero-shot voice cloning."""


@dataclass
class VoicePrompt:
    """A reference voice: codec codes (Q, T) long, optional description token ids, and where it came from."""

    codes: torch.Tensor  # (Q, T) long, on the CPU
    description_ids: list[int] = field(default_factory=list)
    source: str = "voice prompt"

    def __post_init__(self):
        c = self.codes
        if not isinstance(c, torch.Tensor) or c.dim() != 2 or c.dtype != torch.long or 0 in c.shape:
            shape = tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__
            dtype = getattr(c, "dtype", None)
            raise VoiceCloneError(f"{self.source}: codes must be a non-empty (Q, T) torch.long tensor, "
                                  f"got {shape} of dtype {dtype}")
        ids = list(self.description_ids)
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
            raise VoiceCloneError(f"{self.source}: description_ids must be non-negative ints, got {ids[:10]}")
        self.description_ids = ids


def _clip_name(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"voice clip '{source}'"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"voice clip ({len(source)} bytes)"
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return f"voice clip {type(source).__name__} of shape {tuple(source.shape)}"
    return f"voice clip ({type(source).__name__})"


def _dbfs(mean_square):
    """Mean square power -> dBFS (-inf for digital silence)."""
    with np.errstate(divide="ignore"):
        return 10 * np.log10(mean_square)


def _active_frames(wave: np.ndarray, frame: int) -> tuple[np.ndarray, float]:
    """Wave (N,) -> active mask (ceil(N / frame),) by the module's rule, and the loudest frame's dBFS."""
    pad = np.pad(wave.astype(np.float64), (0, -len(wave) % frame))
    levels = _dbfs(np.mean(pad.reshape(-1, frame) ** 2, axis=1))  # (F,)
    peak = float(levels.max())
    return levels >= max(peak - RELATIVE_DB, FLOOR_DBFS), peak


def speech_seconds(wave: np.ndarray, sample_rate: int) -> float:
    """Seconds of active (speech-like) 20 ms frames in a mono wave, by the module's rule."""
    if wave.size == 0:
        return 0.0
    return float(_active_frames(wave, round(FRAME_SECONDS * sample_rate))[0].sum() * FRAME_SECONDS)


@torch.no_grad()
def encode_voice_clip(source, tokenizer: AudioTokenizer, *, min_seconds: float = 1.0, max_seconds: float = 30.0,
                      description_ids=(), sample_rate: int | None = None) -> VoicePrompt:
    """Load a reference clip (path, bytes, or array/tensor with sample_rate), check it, trim silence, encode it."""
    if not 0 < min_seconds < max_seconds:
        raise ValueError(f"need 0 < min_seconds < max_seconds, got {min_seconds} and {max_seconds}")
    name, rate = _clip_name(source), tokenizer.config.sample_rate
    try:
        wave = load_audio(source, sample_rate=sample_rate, target_rate=rate, max_seconds=max_seconds)  # (N,)
    except AudioInputError as e:
        raise VoiceCloneError(f"{name} cannot be used as a voice prompt: {e}") from e
    seconds = len(wave) / rate
    if seconds < min_seconds:
        raise VoiceCloneError(f"{name} lasts {seconds:.2f} s; voice cloning needs at least {min_seconds} s")
    frame = round(FRAME_SECONDS * rate)
    active, peak = _active_frames(wave, frame)
    speech = active.sum() * FRAME_SECONDS
    if speech < MIN_SPEECH_SECONDS:
        rms = _dbfs(np.mean(wave.astype(np.float64) ** 2))
        raise VoiceCloneError(
            f"{name} has no speech: RMS {rms:.1f} dBFS, loudest 20 ms frame {peak:.1f} dBFS, {speech:.2f} s of "
            f"frames within {RELATIVE_DB:g} dB of it and above {FLOOR_DBFS:g} dBFS (needs {MIN_SPEECH_SECONDS} s)")
    idx, margin = np.flatnonzero(active), round(MARGIN_SECONDS * rate)
    wave = wave[max(0, idx[0] * frame - margin): min(len(wave), (idx[-1] + 1) * frame + margin)]  # (N',)
    if len(wave) / rate < min_seconds:
        raise VoiceCloneError(f"{name} has {len(wave) / rate:.2f} s of sound after trimming silence "
                              f"({seconds:.2f} s in all); voice cloning needs at least {min_seconds} s")
    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    codes = tokenizer.encode(torch.from_numpy(np.ascontiguousarray(wave)).to(device))[0]  # (Q, T)
    return VoicePrompt(codes.cpu(), list(description_ids), name)


def check_voice_prompt(prompt: VoicePrompt, num_code_groups: int, codebook_size: int) -> None:
    """Raise VoiceCloneError unless the prompt's codes fit a talker with these codebooks per frame and size."""
    q = prompt.codes.shape[0]
    if q != num_code_groups:
        raise VoiceCloneError(f"{prompt.source}: codes have {q} codebooks per frame but the talker predicts "
                              f"{num_code_groups}; encode the clip with the codec that matches the talker")
    lo, hi = int(prompt.codes.min()), int(prompt.codes.max())
    if lo < 0 or hi >= codebook_size:
        raise VoiceCloneError(f"{prompt.source}: codes span [{lo}, {hi}] but the talker's codebooks have "
                              f"{codebook_size} entries (valid codes are 0 to {codebook_size - 1})")


def _read_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e


def save_audio_tokenizer(tokenizer: AudioTokenizer, directory: str | Path,
                         filename: str = "audio_tokenizer.safetensors") -> Path:
    """Write the codec encoder + quantiser tensors to directory/filename and merge codec_config into config.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {PREFIX + k: v.detach().contiguous().cpu()
               for k, v in tokenizer.state_dict().items() if k.startswith(_SHIPPED)}
    path = directory / filename
    save_file(tensors, str(path), metadata={"format": "pt"})
    cfg_path = directory / "config.json"
    config = _read_config(cfg_path) if cfg_path.is_file() else {}
    config["codec_config"] = dataclasses.asdict(tokenizer.config)
    cfg_path.write_text(json.dumps(config, indent=2))
    return path


def load_audio_tokenizer(directory: str | Path, dtype: torch.dtype = torch.float32, device="cpu") -> AudioTokenizer:
    """The codec encoder (AudioTokenizer without the training decoder) of a checkpoint directory, in eval mode."""
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"checkpoint directory {directory} has no config.json")
    raw = _read_config(cfg_path).get("codec_config")
    absent = (f"{directory} has no audio tokenizer (codec encoder): voice cloning needs one; write it with "
              f"omnistream.voice.save_audio_tokenizer")
    if not raw:
        raise CheckpointError(f"{absent} (config.json has no 'codec_config')")
    try:
        config = CodecConfig(**raw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cfg_path}: invalid codec_config ({e})") from e
    files = sorted(directory.glob("audio_tokenizer*.safetensors"))
    if (directory / "model.safetensors.index.json").is_file() or any(directory.glob("*.safetensors")):
        files += [f for f in _shard_files(directory) if f not in files]
    state = {name[len(PREFIX):]: _get(file, handle, name).to(dtype)
             for file, name, handle in _iter_tensors(files) if name.startswith(PREFIX)}
    if not state:
        raise CheckpointError(f"{absent} (no '{PREFIX}*' tensors in its safetensors files)")
    tokenizer = AudioTokenizer(config, decoder=False).to(dtype)
    load_state_into(tokenizer, state, f"{directory} (audio tokenizer)")
    return tokenizer.to(device).eval()
