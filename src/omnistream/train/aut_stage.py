"""AuT pretraining: the audio encoder learns to hear, by CTC alone, before it meets the language model.

The paper pretrains AuT by itself on ASR data before the Thinker's stages; here the same step, scaled down, is the
stage "thinker-aut" between the LM warm-up ("thinker-text") and encoder alignment ("thinker-s1"). Only the audio
encoder runs and trains: each clip of the dataset whose words are known (transcription and spoken-question
inputs, and every target speech: spoken answers, read-aloud and cloned sentences) is encoded, and a CTC loss ties
its tokens to the token ids of what it says.

The CTC classifier is the warm LM's own input-embedding table (engine.heard.ctc_log_probs: cosine similarity x
CTC_SCALE; the pad id is the blank; the table is a fixed target, it gets no gradient): an audio token learns to
point at the word it hears in the space the LM reads, so S1 starts from an encoder whose tokens already look like
the text they say. Without the LM in the step, a step costs a fraction of a Thinker step and sees four times the
clips (measured: after 1200 S2 steps with CTC as an auxiliary loss the encoder's own greedy CTC transcripts were
still 57-74% wrong). Thinker S1 and S2 keep the same CTC term (`ctc_loss`) beside their next-token loss.

Augmentation (on by default), because the encoder must hear voices it never trained on: every clip is played at a
random speed (x0.85-1.15, pitch and tempo together, as Kaldi's speed perturbation); with `timbre` (on by default)
its log-mel is then warped along frequency as another vocal tract would shape it (VTLP, x0.88-1.12 independent of
the speed) and coloured by a random smooth filter (up to 6 dB), since a held-out voice differs from the training
voices in timbre more than in pitch; last come SpecAugment masks (two bands of up to 16 mel bins, two spans of up to
20 frames). Measured without it: held-out sentences said by training voices 11-12% greedy CTC error, by the held-out
voices 18-39% (and 43-68% on the held-out items). Each draw is seeded by (seed, step, clip), so a resumed run sees
the same batches.

Number drills: where DATA_DIR holds numbers.jsonl (`omnistream data synth --tasks numbers --name numbers`; `make
demo-data` writes it), its clips, lists of three to five numbers said half by the crowd, join the split's. A spoken
question turns on one or two number words among six to eight, and CTC weighs every word alike: without the drills
the encoder's own transcripts of held-out voices were 10% wrong on sentences but 17-20% on questions, the errors on
the numbers ("after sixty-four" -> "after-four").

Batches: each epoch a shuffle seeded by (seed, epoch), cut into global batches of B; rank r takes its slice.
The loss is summed over a rank's clips and divided by the global batch's target tokens / world.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import soxr
import torch
import torch.nn.functional as F
from torch import nn

from ..audio.features import log_mel, mel_bin_centres, mel_bin_index
from ..audio.io import load_audio
from ..data import read_items
from ..engine.heard import ctc_log_probs
from ..processor import Tokenizer
from ..thinker import Thinker
from . import distributed as dist
from .loop import TrainError
from .thinker_data import audio_source, spoken_text
from .tokenizer import special_ids

DRILL_FILE = "numbers.jsonl"  # number drills beside the split, used when present
SPEEDS = (0.85, 1.15)  # range of the speed perturbation
MEL_MASKS, MEL_MASK_BINS = 2, 16  # SpecAugment frequency masks
TIME_MASKS, TIME_MASK_FRAMES = 2, 20  # SpecAugment time masks
WARPS = (0.88, 1.12)  # vocal tract length perturbation: range of the frequency warp
WARP_KNEE = 4800.0  # Hz: above min(1, warp) x this the warp runs linearly to the top bin, which stays put
TILT = 0.15  # spectral colouring: largest gain of a random smooth curve over the mel bins (log-mel units: 6 dB)


def embedding_table(thinker: Thinker) -> torch.Tensor:
    """The LM's input embeddings (V, H), detached and whole (gathered when FSDP2 shards them)."""
    table = thinker.lm.model.embed_tokens.weight.detach()
    return table.full_tensor() if hasattr(table, "full_tensor") else table


def ctc_loss(thinker: Thinker, tokens: torch.Tensor, audio_lengths: list[int], spoken: list[list[int] | None],
             norm: float, blank: int) -> torch.Tensor:
    """CTC of packed audio tokens (sum of tokens, H) of audios of `audio_lengths` mel frames against each audio's
    spoken ids (None: no target), summed and divided by `norm`; zero (with a graph) when no audio has a target."""
    counts = thinker.audio_tower.token_counts(torch.tensor(audio_lengths)).tolist()
    keep = [(t, said) for t, said in zip(tokens.split(counts), spoken) if said]
    if not keep:
        return tokens.sum() * 0.0
    lengths = [len(t) for t, _ in keep]
    logp = ctc_log_probs(torch.cat([t for t, _ in keep]), embedding_table(thinker)).split(lengths)  # each (n, V)
    padded = torch.nn.utils.rnn.pad_sequence(logp)  # (T, N, V)
    targets = torch.tensor([i for _, said in keep for i in said], device=padded.device)
    total = F.ctc_loss(padded, targets, torch.tensor(lengths), torch.tensor([len(s) for _, s in keep]),
                       blank=blank, reduction="sum", zero_infinity=True)
    return total / norm


def ctc_greedy(thinker: Thinker, tokens: torch.Tensor, blank: int) -> list[int]:
    """The greedy CTC reading of one audio's tokens (n, H): best id per token, repeats merged, blanks dropped."""
    best = ctc_log_probs(tokens, embedding_table(thinker)).argmax(-1).tolist()
    return [b for j, b in enumerate(best) if b != blank and (j == 0 or b != best[j - 1])]


def perturb_speed(wave: np.ndarray, factor: float, rate: int = 16000) -> np.ndarray:
    """`wave` played `factor` times faster (pitch and tempo together), at the same sample rate."""
    return soxr.resample(wave, round(rate * factor), rate).astype(np.float32, copy=False)


def spec_augment(features: torch.Tensor, length: int, rng: random.Random, time_masks: int = TIME_MASKS) -> torch.Tensor:
    """SpecAugment of one log-mel (mels, T) with `length` valid frames: frequency bands and `time_masks` time spans
    set to the clip's mean."""
    out = features.clone()
    fill = float(out[:, :length].mean())
    mels = out.shape[0]
    for _ in range(MEL_MASKS):
        width = rng.randint(0, MEL_MASK_BINS)
        start = rng.randint(0, mels - width)
        out[start : start + width, :length] = fill
    for _ in range(time_masks):
        width = rng.randint(0, min(TIME_MASK_FRAMES, length // 5))
        start = rng.randint(0, length - width)
        out[:, start : start + width] = fill
    return out


def warp_vocal_tract(features: torch.Tensor, warp: float) -> torch.Tensor:
    """VTLP (Jaitly & Hinton 2013) of one log-mel (mels, T): the spectral envelope's frequencies scaled by `warp`
    (piecewise linear, so that the top bin stays put), read off the mel bins by linear interpolation."""
    mels = features.shape[0]
    centres = mel_bin_centres(mels)  # (mels,) Hz
    knee = WARP_KNEE * min(1.0, warp)
    top = centres[-1]
    source = torch.where(centres <= knee, centres / warp,
                         knee / warp + (centres - knee) * (top - knee / warp) / (top - knee))  # (mels,) Hz
    where = mel_bin_index(source, mels).clamp(0, mels - 1)
    low = where.floor().long().clamp(max=mels - 2)
    frac = (where - low).to(features.dtype)[:, None]
    return features[low] * (1 - frac) + features[low + 1] * frac


def colour_spectrum(features: torch.Tensor, length: int, rng: random.Random) -> torch.Tensor:
    """One log-mel (mels, T) with `length` valid frames through a random smooth filter: a gain curve over the mel
    bins of three cosines, at most TILT."""
    mels = features.shape[0]
    x = torch.linspace(0, math.pi, mels, dtype=features.dtype)
    curve = sum(rng.uniform(-1, 1) * torch.cos(k * x) for k in (1, 2, 3))
    out = features.clone()
    out[:, :length] += (TILT / 3) * curve[:, None]
    return out


def augment_features(features: torch.Tensor, length: int, rng: random.Random, *, timbre: bool = True,
                     time_masks: int = TIME_MASKS) -> torch.Tensor:
    """One clip's log-mel (mels, T) augmented: another vocal tract and filter (with `timbre`), then SpecAugment."""
    if timbre:
        features = colour_spectrum(warp_vocal_tract(features, rng.uniform(*WARPS)), length, rng)
    return spec_augment(features, length, rng, time_masks)


def heard_clips(items: list[dict]) -> list[tuple[str, str]]:
    """(audio path, what it says) of every clip of the items whose words are known."""
    clips = []
    for item in items:
        said = spoken_text(item)
        if said is not None:
            clips.append((audio_source(item), said))
        if "target_speech" in item:
            clips.append((item["target_speech"], item["reply"]))
    return clips


class AutStage:
    """AuT pretraining over DATA_DIR/{split}.jsonl; `init` is the thinker-text checkpoint (its embedding table is
    the CTC classifier, its LM stays frozen and unused)."""

    name = "thinker-aut"

    def __init__(self, data_dir: str | Path, tokenizer_dir: str | Path, size: str = "demo",
                 init: str | Path | None = None, *, batch_size: int = 32, seed: int = 0, split: str = "train",
                 limit: int | None = None, augment: bool = True, timbre: bool = True,
                 device: str | torch.device | None = None):
        from .thinker_stages import check_inputs

        data = check_inputs(size, batch_size, data_dir, split, tokenizer_dir, init)
        self.size, self.init, self.seed, self.batch_size, self.augment = size, init, seed, batch_size, augment
        self.timbre = timbre
        self.tokenizer = Tokenizer(tokenizer_dir)
        self.ids = special_ids(self.tokenizer)
        drills = Path(data_dir) / DRILL_FILE
        self.drills = heard_clips(read_items(drills)) if drills.is_file() else []
        self.clips = (heard_clips(read_items(data)) + self.drills)[:limit]
        if not self.clips:
            raise TrainError(f"{data} has no clip whose words are known (transcribe, spoken questions, target speech)")
        self.targets = [self.tokenizer.encode(said) for _, said in self.clips]
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def module(self) -> Thinker:
        from .thinker_stages import initial_thinker

        thinker = initial_thinker(self.size, self.ids, self.init, self.seed)
        thinker.requires_grad_(False)
        thinker.audio_tower.requires_grad_(True)
        return thinker if dist.launched() else thinker.to(self.device)

    def indices(self, step: int) -> list[int]:
        """Clip indices of the global batch of `step` (whole batches of an epoch's seeded shuffle)."""
        b = min(self.batch_size, len(self.clips))
        per_epoch = len(self.clips) // b
        epoch, offset = divmod(step, per_epoch)
        order = torch.randperm(len(self.clips), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        return order[offset * b : (offset + 1) * b].tolist()

    def batch(self, step: int, rank: int, world: int) -> dict:
        if self.batch_size % world:
            raise TrainError(f"batch_size {self.batch_size} is not a multiple of the {world} ranks")
        chosen = self.indices(step)
        share = len(chosen) // world
        mine = chosen[rank * share : (rank + 1) * share]
        waves = [load_audio(self.clips[i][0]) for i in mine]
        rngs = [random.Random(f"omnistream.aut/{self.seed}/{step}/{i}") for i in mine]
        if self.augment:
            waves = [perturb_speed(w, r.uniform(*SPEEDS)) for w, r in zip(waves, rngs)]
        features, mask = log_mel(waves, n_mels=128)  # (b, mels, T), (b, T)
        lengths = mask.sum(-1).tolist()
        if self.augment:
            features = torch.stack([augment_features(f, n, r, timbre=self.timbre)
                                    for f, n, r in zip(features, lengths, rngs)])
        return {"audio_features": features, "audio_lengths": lengths,
                "spoken": [self.targets[i] for i in mine],
                "norm": max(1, sum(len(self.targets[i]) for i in chosen)) / world}

    def loss(self, module: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        device = next(module.parameters()).device
        tokens = module.audio_tower(batch["audio_features"].to(device), batch["audio_lengths"])
        ctc = ctc_loss(module, tokens, batch["audio_lengths"], batch["spoken"], batch["norm"], self.ids["pad_token_id"])
        return {"loss": ctc, "ctc": ctc.detach()}

    def items(self, batch: dict) -> int:
        return len(batch["spoken"])
