"""Codec stage: the audio tokenizer (causal log-mel encoder + RVQ) and Code2Wav (iSTFT head) trained together.

The two are one module, `CodecModel`: waveform -> encoder latents z (B, T, D) -> ResidualVQ (straight-through
z_q, codes) -> frame embeddings W z_q / Q (B, T, hidden) -> Code2Wav's pre-transformer, upsampler and head ->
waveform. W (`proj`, hidden x D, no bias) ties Code2Wav's code embedding table to the RVQ codebooks:
Code2Wav's input for codes c is mean_q E[q K + c_q], and with E[q K + k] = W codebook_q[k] that is exactly
W (sum_q codebook_q[c_q]) / Q = W z_q / Q. So during training the table is not used (it is frozen), gradients
of the waveform losses reach the encoder through z_q, and `CodecModel.export()` materialises the table, after
which `Code2Wav(codes)` gives the training-time output for the same codes (to float rounding).

Batches: each step draws a global batch of `batch_size` random crops of the dataset's speech (every item's
input audio, target_speech and reference_speech), all of one length per step: a whole number of codec frames
between `crop_seconds[0]` and `crop_seconds[1]`. The draw is a pure function of (seed, step); rank r of w
takes crops [r B / w, (r + 1) B / w). Files load lazily (only the crops a rank takes) and stay cached.

Loss = reconstruction (waveform L1 + mel_weight * log-mel L1) + stft_weight * multi-resolution STFT
+ commitment_weight * commitment + codebook; each term is logged. The decoder's output sample i is compared
with input sample i (the iSTFT head emits num_samples(T) = T hop - (n_fft - istft_hop) final samples).

Codebooks: `module()` seeds them by k-means (`ResidualVQ.kmeans_init`) on the initial encoder's latents of
`kmeans_crops` crops (the step-0 global batch and more crops drawn the same way), so every entry starts on
the data. Every `dead_every` steps (at steps s = dead_every, 2 dead_every, ... below `dead_until`), before that
step's forward, entries chosen fewer than `dead_min_usage` times over the previous `dead_every` steps are
re-seeded with random residuals of the latents of `dead_crops` (default `kmeans_crops`) fresh crops
(`ResidualVQ.replace_dead_codes`; crops and generator are functions of (seed, s)). The usage counts live in
a persistent buffer of the module (`usage`), so a run resumed from a checkpoint replaces the same entries as
one that never stopped. Re-seeding edits the full codebooks, so it runs in one process only (the codec is
small; torchrun with several ranks is refused unless dead_every=0). The default, every 100 steps, sees ~15k
latents per window for 1024-entry codebooks (8 crops of ~1.5 s); with dead_every=25 the demo re-seeded ~93%
of the entries each time.

After training, `save_codec(module, dir)` writes the tokenizer (omnistream.voice.save_audio_tokenizer:
audio_tokenizer.safetensors + codec_config) and the exported Code2Wav (code2wav.safetensors with `code2wav.*`
tensors + code2wav_config), merging into an existing config.json; `load_code2wav(dir)` reads the latter back.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..audio.code2wav import Code2Wav, Code2WavConfig
from ..audio.codec import AudioTokenizer, CodecConfig, multi_resolution_stft_loss, reconstruction_loss
from .loop import TrainError

CODE2WAV_FILE = "code2wav.safetensors"
CODE2WAV_PREFIX = "code2wav."


class CodecModel(nn.Module):
    """AudioTokenizer (encoder + RVQ, no training decoder) feeding Code2Wav through W z_q / Q."""

    def __init__(self, codec: CodecConfig, code2wav: Code2WavConfig):
        super().__init__()
        self.tokenizer = AudioTokenizer(codec, decoder=False)
        self.tokenizer.check_compatible(code2wav)
        self.code2wav = Code2Wav(code2wav)
        self.code2wav.code_embedding.weight.requires_grad_(False)  # materialised by export(), unused in training
        self.proj = nn.Linear(codec.codebook_dim, code2wav.hidden_size, bias=False)  # W
        self.register_buffer("usage", torch.zeros(codec.num_quantizers, codec.codebook_size))  # since last re-seed

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """Waveform (B, N) -> {'wave': (B, num_samples(T)), 'codes': (B, Q, T), 'z': latents (B, T, D),
        'commitment', 'codebook'}; T = ceil(N / hop)."""
        z = self.tokenizer.encoder(wave)
        vq = self.tokenizer.quantizer(z)
        if self.training:
            q = torch.arange(vq.codes.shape[1], device=vq.codes.device)[None, :, None] * self.usage.shape[1]
            self.usage.view(-1).index_add_(0, (vq.codes + q).flatten(),
                                           torch.ones(vq.codes.numel(), dtype=self.usage.dtype,
                                                      device=self.usage.device))
        x = self.proj(vq.z_q) / self.tokenizer.config.num_quantizers  # (B, T, hidden)
        out = self.code2wav.decode_embeddings(x)[:, 0]  # (B, num_samples(T))
        return {"wave": out, "codes": vq.codes, "z": z, "commitment": vq.commitment_loss,
                "codebook": vq.codebook_loss}

    @torch.no_grad()
    def code_table(self) -> torch.Tensor:
        """E (Q K, hidden) with E[q K + k] = W codebook_q[k]."""
        cb = self.tokenizer.quantizer.codebooks  # (Q, K, D)
        return (cb.reshape(-1, cb.shape[-1]) @ self.proj.weight.T).float()

    @torch.no_grad()
    def export(self) -> tuple[AudioTokenizer, Code2Wav]:
        """Standalone copies for inference, in eval mode: the AudioTokenizer and Code2Wav with its code
        embedding table materialised, so Code2Wav(tokenizer.encode(wave)) is this module's output."""
        tokenizer = copy.deepcopy(self.tokenizer).eval()
        code2wav = copy.deepcopy(self.code2wav).eval()
        code2wav.code_embedding.weight.copy_(self.code_table().to(code2wav.code_embedding.weight.dtype))
        code2wav.code_embedding.weight.requires_grad_(True)
        return tokenizer, code2wav


def _unwrap(module: nn.Module) -> CodecModel:
    inner = getattr(module, "module", module)  # DDP-style wrappers; FSDP2 keeps the class
    if not isinstance(inner, CodecModel):
        raise TypeError(f"expected a CodecModel, got {type(inner).__name__}")
    return inner


def speech_files(data: str | Path) -> list[Path]:
    """Every speech wav a dataset's items refer to (input audio, target_speech, reference_speech), in item
    order, without repeats; `data` is a .jsonl written by `omnistream data synth` or its directory."""
    from ..data import read_items

    path = Path(data)
    if path.is_dir():
        path = path / "train.jsonl"
    if not path.is_file():
        raise TrainError(f"no dataset at {path}; write one with `omnistream data synth --out DIR`")
    files: dict[str, None] = {}
    for item in read_items(path):
        for part in item["messages"][0]["content"]:
            if part["type"] == "audio":
                files[part["audio"]] = None
        for key in ("target_speech", "reference_speech"):
            if item.get(key):
                files[item[key]] = None
    if not files:
        raise TrainError(f"{path} has no speech: the codec stage needs items with audio (e.g. --tasks transcribe "
                         f"read_aloud)")
    return [Path(f) for f in files]


class CodecStage:
    """Stage "codec": the audio tokenizer and an iSTFT-head Code2Wav trained together (see the module doc)."""

    name = "codec"

    def __init__(self, data: str | Path, code2wav: Code2WavConfig, codec: dict | None = None, *, seed: int = 0,
                 batch_size: int = 8, crop_seconds: tuple[float, float] = (1.0, 2.0), mel_weight: float = 1.0,
                 stft_weight: float = 1.0, commitment_weight: float = 0.25, kmeans_crops: int = 64,
                 kmeans_iters: int = 10, dead_every: int = 100, dead_until: int | None = None,
                 dead_min_usage: float = 1.0, dead_crops: int | None = None):
        if code2wav.head != "istft":
            raise TrainError(f"the codec stage trains an iSTFT-head Code2Wav, got head {code2wav.head!r}")
        self.code2wav_config = code2wav
        self.codec_config = CodecConfig.from_code2wav(code2wav, **(codec or {}))
        self.files = speech_files(data)
        self.seed, self.batch_size = seed, batch_size
        hop, sr = self.codec_config.hop, self.codec_config.sample_rate
        self.min_frames = max(1, math.ceil(crop_seconds[0] * sr / hop))
        self.max_frames = max(self.min_frames, math.floor(crop_seconds[1] * sr / hop))
        if self.code2wav_config.num_samples(self.min_frames) < 2048:
            raise TrainError(f"crops of {self.min_frames} frames are too short for the 2048-point STFT loss")
        self.mel_weight, self.stft_weight, self.commitment_weight = mel_weight, stft_weight, commitment_weight
        self.kmeans_crops, self.kmeans_iters = kmeans_crops, kmeans_iters
        self.dead_every, self.dead_until, self.dead_min_usage = dead_every, dead_until, dead_min_usage
        self.dead_crops = kmeans_crops if dead_crops is None else dead_crops
        self._cache: dict[int, torch.Tensor] = {}

    # --- presets ---------------------------------------------------------------------------------------------

    @classmethod
    def tiny(cls, data: str | Path, **kw) -> CodecStage:
        """A few-second CI preset: 2 codebooks of 64, widths of 32-48, batches of 4 crops of 0.5-1 s."""
        c2w = Code2WavConfig(codebook_size=64, num_quantizers=2, hidden_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                             upsampling_ratios=(2, 4), head="istft", istft_n_fft=960, istft_hop=240, istft_dim=32,
                             istft_layers=1)
        codec = dict(codebook_dim=16, n_mels=32, mel_width=32, width=48, mel_layers=1, frame_layers=1)
        opts = dict(batch_size=4, crop_seconds=(0.5, 1.0), kmeans_crops=16, dead_every=10)
        return cls(data, c2w, codec, **(opts | kw))

    @classmethod
    def demo(cls, data: str | Path, **kw) -> CodecStage:
        """Code2WavConfig.istft_demo() (8 x 1024 codes at 12.5 Hz, 24 kHz) with a ~1.5M-parameter encoder + RVQ."""
        codec = dict(codebook_dim=64, n_mels=80, mel_width=128, width=256, mel_layers=2, frame_layers=2)
        return cls(data, Code2WavConfig.istft_demo(), codec, **kw)

    # --- data ------------------------------------------------------------------------------------------------

    def _wave(self, index: int) -> torch.Tensor:
        if index not in self._cache:
            from ..audio.io import load_audio

            wave = load_audio(str(self.files[index]), target_rate=self.codec_config.sample_rate)
            self._cache[index] = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        return self._cache[index]

    def _seed(self, purpose: int, n: int) -> int:
        """A generator seed for (stage seed, purpose, n): purpose 0 = step n's batch, 1 = k-means crops,
        2 = crops and 3 = choices of the dead-code re-seeding before step n."""
        return ((self.seed * 8 + purpose) * 1_000_003 + n) % 2**63

    def _crops(self, seed: int, count: int, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """Crops lo..hi-1 of the `count` crops drawn from generator seed `seed`: (hi - lo, frames hop), all of
        one random whole number of frames, zero-padded where a file is shorter."""
        hi = count if hi is None else hi
        g = torch.Generator().manual_seed(seed)
        frames = int(torch.randint(self.min_frames, self.max_frames + 1, (), generator=g))
        files = torch.randint(0, len(self.files), (count,), generator=g).tolist()
        starts = torch.rand(count, generator=g, dtype=torch.float64).tolist()
        n = frames * self.codec_config.hop
        out = torch.zeros(hi - lo, n)
        for row, i in enumerate(range(lo, hi)):
            wave = self._wave(files[i])
            start = int(starts[i] * max(wave.shape[0] - n + 1, 1))
            piece = wave[start : start + n]
            out[row, : piece.shape[0]] = piece
        return out

    def batch(self, step: int, rank: int, world: int) -> dict:
        if world > 1 and self.dead_every:
            raise TrainError("the codec stage re-seeds dead codebook entries in place and runs in one process; "
                             "launch it without torchrun (or set dead_every=0)")
        if self.batch_size % world:
            raise TrainError(f"batch_size {self.batch_size} is not divisible by {world} ranks")
        share = self.batch_size // world
        wave = self._crops(self._seed(0, step), self.batch_size, rank * share, (rank + 1) * share)
        return {"step": step, "wave": wave}

    def items(self, batch: dict) -> int:
        return batch["wave"].shape[0]

    # --- module and loss -------------------------------------------------------------------------------------

    def module(self) -> CodecModel:
        """A fresh CodecModel (init seeded by `seed`) with k-means-seeded codebooks."""
        torch.manual_seed(self.seed)
        model = CodecModel(self.codec_config, self.code2wav_config)
        if self.kmeans_crops:
            waves = [self._crops(self._seed(0, 0), self.batch_size)]  # the step-0 global batch ...
            extra = self.kmeans_crops - self.batch_size
            if extra > 0:  # ... and more crops drawn the same way
                waves.append(self._crops(self._seed(1, 0), extra))
            with torch.no_grad():
                z = torch.cat([model.tokenizer.encoder(w).flatten(0, 1) for w in waves])
            model.tokenizer.quantizer.kmeans_init(z, iters=self.kmeans_iters, seed=self.seed)
        return model

    def _replace_dead(self, model: CodecModel, step: int) -> int:
        vq = model.tokenizer.quantizer
        pool = self._crops(self._seed(2, step), max(self.dead_crops, 1)).to(model.usage.device)
        with torch.no_grad():
            z = model.tokenizer.encoder(pool).float()
        vq.usage.copy_(model.usage)
        replaced = vq.replace_dead_codes(z, min_usage=self.dead_min_usage, seed=self._seed(3, step))
        model.usage.zero_()
        return replaced

    def loss(self, module: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        model = _unwrap(module)
        step, wave = batch["step"], batch["wave"]
        device = model.usage.device
        wave = wave.to(device)
        due = (self.dead_every and step > 0 and step % self.dead_every == 0
               and (self.dead_until is None or step < self.dead_until))
        replaced = self._replace_dead(model, step) if due else 0
        out = module(wave)
        losses = {}
        pred = out["wave"].float()
        target = wave[:, : pred.shape[-1]]
        losses["reconstruction"] = reconstruction_loss(pred, target, self.codec_config.sample_rate,
                                                       mel_weight=self.mel_weight)
        losses["stft"] = multi_resolution_stft_loss(pred, target)
        losses["commitment"] = out["commitment"].float()
        losses["codebook"] = out["codebook"].float()
        losses["loss"] = (losses["reconstruction"] + self.stft_weight * losses["stft"]
                          + self.commitment_weight * losses["commitment"] + losses["codebook"])
        with torch.no_grad():
            losses["wave_l1"] = F.l1_loss(pred, target)
        losses["replaced"] = torch.tensor(float(replaced), device=device)  # entries re-seeded before this step
        return losses


# --- checkpoint ---------------------------------------------------------------------------------------------


def save_codec(module: nn.Module, directory: str | Path) -> tuple[Path, Path]:
    """Write the trained codec into a checkpoint directory: the audio tokenizer (omnistream.voice
    .save_audio_tokenizer) and the exported Code2Wav (`code2wav.*` tensors in code2wav.safetensors,
    `code2wav_config` merged into config.json; also listed in model.safetensors.index.json when the directory
    has one). Returns the two safetensors paths."""
    return write_codec(*_unwrap(module).export(), directory)


def write_codec(tokenizer: AudioTokenizer, code2wav: Code2Wav, directory: str | Path) -> tuple[Path, Path]:
    """Write an audio tokenizer and its Code2Wav as save_codec does (also for a shipped codec taken as it is)."""
    from ..voice import save_audio_tokenizer

    directory = Path(directory)
    tok_path = save_audio_tokenizer(tokenizer, directory)
    tensors = {CODE2WAV_PREFIX + k: v.detach().contiguous().cpu() for k, v in code2wav.state_dict().items()}
    c2w_path = directory / CODE2WAV_FILE
    save_file(tensors, str(c2w_path), metadata={"format": "pt"})
    cfg_path = directory / "config.json"
    config = json.loads(cfg_path.read_text())  # save_audio_tokenizer has just written it
    config["code2wav_config"] = dataclasses.asdict(code2wav.config)
    cfg_path.write_text(json.dumps(config, indent=2))
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data.setdefault("weight_map", {}).update({name: CODE2WAV_FILE for name in tensors})
        index.write_text(json.dumps(data, indent=2))
    return tok_path, c2w_path


def load_code2wav(directory: str | Path, dtype: torch.dtype = torch.float32, device="cpu") -> Code2Wav:
    """The Code2Wav that save_codec wrote (code2wav_config + code2wav.safetensors), in eval mode."""
    from safetensors.torch import load_file

    from ..weights import load_state_into

    directory = Path(directory)
    config = Code2WavConfig.from_hf(json.loads((directory / "config.json").read_text())["code2wav_config"])
    state = {k[len(CODE2WAV_PREFIX):]: v.to(dtype) for k, v in load_file(str(directory / CODE2WAV_FILE)).items()
             if k.startswith(CODE2WAV_PREFIX)}
    model = Code2Wav(config).to(dtype)
    load_state_into(model, state, f"{directory} (code2wav)")
    return model.to(device).eval()
