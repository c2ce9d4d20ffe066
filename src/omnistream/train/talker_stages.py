"""Talker training stages: general (ARIA streams), its fixed-rate twin, long context, and the speaker stage.

Each step the Talker pays two losses on teacher-forced sequences built by talker_data.py: cross-entropy of
codebook 0 (speech codes, the text slot and speech-EOS for ARIA; codes and EOS for the fixed-rate twin) and the
MTP module's cross-entropy on the residual codebooks of every frame, given the Talker hidden state that predicted
the frame's codebook 0. The Thinker stays frozen outside the trained module.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TextConfig, tiny_qwen35
from ..data.voices import ROSTER
from ..engine.talker_prompt import SpeechTokens
from ..positions import TokenIds
from ..talker import Talker, TalkerConfig
from ..thinker import Thinker
from .talker_data import IGNORE, TalkerDataError, TalkerItem, TalkerSequence, aria_sequence, fixed_sequence

KINDS = ("general", "fixed", "long", "speaker")


def demo_talker_config(thinker_hidden: int, accept_layer: int, placeholders: TokenIds, num_code_groups: int = 8,
                       codebook_size: int = 1024, size: str = "demo") -> TalkerConfig:
    """The demo Talker: a hybrid (Qwen3.5-Omni) MoE backbone over codebook 0 + specials, ARIA interleaving.

    `placeholders` are the Thinker tokenizer's audio / image / video ids, which the Talker's positions read."""
    k = codebook_size
    speakers = {v.name.lower(): k + 7 + i for i, v in enumerate(x for x in ROSTER if x.split == "train")}
    vocab = k + 7 + len(speakers)
    width = {"tiny": 32, "demo": 128}[size]
    text = tiny_qwen35(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=width // 4, linear_num_key_heads=2,
                       linear_num_value_heads=4, linear_key_head_dim=width // 4, linear_value_head_dim=width // 4,
                       num_experts=4, num_experts_per_tok=2, moe_intermediate_size=width,
                       shared_expert_intermediate_size=width, max_position_embeddings=8192)
    cp = TextConfig(layout="qwen3_omni", vocab_size=k, hidden_size=width, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=width // 4, num_experts=0, intermediate_size=2 * width,
                    shared_expert_intermediate_size=0, zero_centered_norm=False, attn_output_gate=False,
                    partial_rotary_factor=1.0, rope_theta=1e4, mrope_section=[width // 8, 0, 0],
                    max_position_embeddings=64)
    return TalkerConfig(text=text, code_predictor=cp, num_code_groups=num_code_groups, thinker_hidden_size=thinker_hidden,
                        accept_hidden_layer=accept_layer, codec_pad_id=k, codec_bos_id=k + 1, codec_eos_token_id=k + 2,
                        codec_nothink_id=k + 3, codec_think_bos_id=k + 4, codec_think_eos_id=k + 5,
                        speaker_id=speakers, interleave="aria", codec_text_slot_id=k + 6,
                        aria_frames_per_token={"en": 5.0, "es": 5.0, "zh": 5.0}, aria_default_ratio=5.0,
                        placeholders=placeholders)


def measured_prior(items: list[TalkerItem], languages: list[str]) -> dict[str, float]:
    """ARIA's prior R̂ per language: the most frames per reply token among the items (an upper estimate), rounded
    up to a tenth."""
    if len(items) != len(languages):
        raise TalkerDataError(f"{len(items)} talker items but {len(languages)} languages")
    most: dict[str, float] = {}
    for item, lang in zip(items, languages):
        most[lang] = max(most.get(lang, 0.0), item.codes.shape[1] / len(item.reply_ids))
    return {lang: math.ceil(r * 10) / 10 for lang, r in sorted(most.items())}


def mtp_loss(talker: Talker, hidden: torch.Tensor, codes: torch.Tensor,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the residual codebooks of frames (T, Q), given the Talker hidden states (T, H) that predicted
    their codebook 0 (the MTP input is [hidden, code 0, codes 1..Q-2]; slot g + 1 predicts code g + 1): the mean over
    frames and codebooks, or with `weights` (T,) the weighted sum over frames of each frame's mean."""
    cp = talker.code_predictor
    q = codes.shape[1]
    x = [hidden, talker.model.embed_tokens(codes[:, 0])]
    x += [cp.codec_embedding[g](codes[:, g + 1]) for g in range(q - 2)]
    out = cp.model(inputs_embeds=torch.stack(x, 1)).last_hidden_state  # (T, Q, H)
    per_frame = torch.stack([F.cross_entropy(cp.lm_head[g](out[:, g + 1]).float(), codes[:, g + 1], reduction="none")
                             for g in range(q - 1)]).mean(0)  # (T,)
    return per_frame.mean() if weights is None else (per_frame * weights).sum()


def padded_batch(seqs: list[TalkerSequence]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Teacher-forced sequences left-padded into one batch: embeds (B, L, H), positions (3, B, L) (sequential ones
    written out) and the attention mask (B, L), None when no row is padded."""
    n = max(s.embeds.shape[0] for s in seqs)
    h, device = seqs[0].embeds.shape[1], seqs[0].embeds.device
    embeds = seqs[0].embeds.new_zeros(len(seqs), n, h)
    positions = torch.zeros(3, len(seqs), n, dtype=torch.long, device=device)
    mask = torch.zeros(len(seqs), n, dtype=torch.long, device=device)
    for r, s in enumerate(seqs):
        k = s.embeds.shape[0]
        embeds[r, n - k:], mask[r, n - k:] = s.embeds, 1
        positions[:, r, n - k:] = (torch.arange(k, device=device).expand(3, k) if s.positions is None
                                   else s.positions[:, 0].to(device))
    return embeds, positions, None if bool(mask.all()) else mask


def teacher_forced(talker: Talker, seqs: list[TalkerSequence]) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """The sequences through the Talker as one left-padded batch: codebook-0 logits (B, L, V), each row's padding,
    and the hidden states that predict every frame's codebook 0 (sum T, H), the items' frames in order."""
    embeds, positions, mask = padded_batch(seqs)
    logits, hidden = talker(embeds, positions, attention_mask=mask)  # (B, L, V), (B, L, H)
    n = embeds.shape[1]
    pads = [n - s.embeds.shape[0] for s in seqs]
    at = [r * n + pad + s.frame_at.to(hidden.device) for r, (pad, s) in enumerate(zip(pads, seqs))]
    return logits, pads, hidden.flatten(0, 1)[torch.cat(at)]


def seeded_share(pool: list, batch_size: int, seed: int, step: int, rank: int, world: int) -> list:
    """Rank `rank`'s slice of a global batch of `batch_size` draws from `pool`, seeded by (seed, step)."""
    rng = random.Random(seed * 1_000_003 + step)
    picks = [pool[rng.randrange(len(pool))] for _ in range(batch_size)]
    share = max(batch_size // world, 1)
    return picks[rank * share:(rank + 1) * share]


class TalkerLoss(nn.Module):
    """The trained module: a Talker whose forward returns the losses of a list of items."""

    def __init__(self, talker: Talker):
        super().__init__()
        self.talker = talker

    def forward(self, items: list[TalkerItem], thinker: Thinker, tokens: SpeechTokens, fixed: bool = False,
                mtp_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Codebook-0 and MTP cross-entropies, each the mean over items of the item's mean; 'loss' = code0 +
        mtp_weight * mtp. The items' sequences run as one left-padded batch.

        Sequences are built inside forward so that, sharded with FSDP2, every Talker parameter is gathered."""
        talker = self.talker
        build = fixed_sequence if fixed else aria_sequence
        seqs = [build(thinker, talker, tokens, item) for item in items]
        logits, pads, frames = teacher_forced(talker, seqs)  # frames: (sum T, H)
        code0 = [F.cross_entropy(logits[r, pad:].float(), s.targets.to(logits.device), ignore_index=IGNORE)
                 for r, (pad, s) in enumerate(zip(pads, seqs))]
        weights = torch.cat([torch.full((len(s.frame_at),), 1 / (len(seqs) * len(s.frame_at))) for s in seqs])
        codes = torch.cat([s.codes.T for s in seqs]).to(frames.device)  # (sum T, Q)
        c0, m = torch.stack(code0).mean(), mtp_loss(talker, frames, codes, weights.to(frames.device))
        return {"loss": c0 + mtp_weight * m, "code0": c0, "mtp": m}


def long_items(items: list[TalkerItem], group: int = 3) -> list[TalkerItem]:
    """Longer replies for the long-context stage: consecutive items of the same voice and prompt kind joined.

    The first item's prompt stays; the replies are concatenated (inner <|im_end|> dropped) and so are the frames."""
    out, i = [], 0
    while i < len(items):
        head = items[i]
        joined = [head]
        j = i + 1
        while j < len(items) and len(joined) < group:
            if items[j].voice_code == head.voice_code and items[j].voice is None and head.voice is None:
                joined.append(items[j])
            j += 1
        reply = [t for it in joined for t in it.reply_ids[:-1]] + head.reply_ids[-1:]
        codes = torch.cat([it.codes for it in joined], dim=1)
        out.append(replace(head, reply_ids=reply, codes=codes))
        i += 1
    return out


class TalkerStage:
    """One Talker stage over prepared TalkerItems; batches are seeded draws of `batch_size` items."""

    def __init__(self, kind: str, items: list[TalkerItem], thinker: Thinker, tokens: SpeechTokens,
                 config: TalkerConfig, batch_size: int = 8, seed: int = 0, init: dict | None = None,
                 mtp_weight: float = 1.0):
        if kind not in KINDS:
            raise TalkerDataError(f"unknown talker stage {kind!r}; expected one of {', '.join(KINDS)}")
        if kind == "speaker":
            items = [it for it in items if it.voice is not None]
        elif kind == "long":
            items = long_items(items)
        if not items:
            raise TalkerDataError(f"talker stage {kind!r} has no items to learn from")
        if kind == "fixed":
            config = replace(config, interleave="fixed")
        if torch.cuda.is_available():  # the loop trains the Talker on the GPU: the frozen Thinker goes along
            thinker = thinker.cuda()
        self.name = f"talker-{kind}"
        self.kind, self.data, self.thinker, self.tokens, self.config = kind, items, thinker, tokens, config
        self.batch_size, self.seed, self.init, self.mtp_weight = batch_size, seed, init, mtp_weight

    def module(self) -> TalkerLoss:
        """A fresh Talker (seeded), or the one a previous stage left (`init`, a TalkerLoss state dict)."""
        torch.manual_seed(self.seed)
        module = TalkerLoss(Talker(self.config))
        if self.init is not None:
            module.load_state_dict(self.init)
        return module

    def batch(self, step: int, rank: int, world: int) -> list[TalkerItem]:
        """This rank's share of step `step`'s seeded draw of items."""
        return seeded_share(self.data, self.batch_size, self.seed, step, rank, world)

    def loss(self, module: TalkerLoss, batch: list[TalkerItem]) -> dict[str, torch.Tensor]:
        """Codebook-0 + MTP losses of the batch's teacher-forced sequences."""
        return module(batch, self.thinker, self.tokens, self.kind == "fixed", self.mtp_weight)

    def items(self, batch: list[TalkerItem]) -> int:
        """Frames in a batch."""
        return sum(it.codes.shape[1] for it in batch)
