"""The Talker's prompt: an optional voice-clone system block, the user turns it listens to, the assistant prefix.

Every piece is a pair: embeddings (L, H) at the Talker's width, and thinker-vocabulary ids (L,) used only for the
Talker's TM-RoPE positions (`tts_pad` where a slot carries no thinker token). Text goes through the Talker's
`text_projection` of Thinker token embeddings; multimodal positions of the user turns through its
`hidden_projection` of the Thinker's `accept_hidden_layer` hidden states; codec slots through the codec embedding.

Layouts of the assistant prefix:
- fixed (Qwen3-Omni, 9 slots, as the reference builds it): text stream P(<|im_start|>), P(assistant), P(\\n),
  tts_pad x4, tts_bos, P(first reply token); codec stream 0, 0, 0, nothink, think_bos, think_eos, voice, pad, bos.
- aria (one interleaved stream, 5 slots): P(<|im_start|>), P(assistant), P(\\n), E(voice), E(bos); the reply's
  text then enters unit by unit, each a slot of its own (see aria.py).
The voice slot holds the speaker's codec id, or codec_pad when a cloned voice speaks. A cloned voice is a Talker
system turn placed first: P(<|im_start|>), P(system), P(description tokens), the reference clip's frames (each the
sum of its codebook embeddings), P(<|im_end|>).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..positions import omni_position_ids
from ..talker import Talker, TalkerConfig
from ..thinker import InputError, Thinker
from ..voice import VoicePrompt


@dataclass(frozen=True)
class SpeechTokens:
    """Thinker-vocabulary ids the talker prompt is built from (top-level Qwen3OmniMoeConfig; release defaults)."""

    im_start_token_id: int = 151644
    im_end_token_id: int = 151645
    tts_pad_token_id: int = 151671
    tts_bos_token_id: int = 151672
    tts_eos_token_id: int = 151673
    system_token_id: int = 8948
    user_token_id: int = 872
    assistant_token_id: int = 77091

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "SpeechTokens":
        """From a whole qwen3_omni_moe config dict (missing fields keep the release values)."""
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if cfg.get(k) is not None})


@dataclass
class Piece:
    """Talker prompt slots: embeddings (L, H) and the thinker ids that place them (L,)."""

    embeds: torch.Tensor
    ids: torch.Tensor

    @staticmethod
    def cat(*pieces: "Piece") -> "Piece":
        """Pieces one after another."""
        return Piece(torch.cat([p.embeds for p in pieces]), torch.cat([p.ids for p in pieces]))


class TalkerPrompt:
    """Builds the Talker's prefill from the Thinker's prompt (its ids, embeddings and accept-layer hidden states)."""

    def __init__(self, thinker: Thinker, talker: Talker, tokens: SpeechTokens):
        self.thinker, self.talker, self.tokens = thinker, talker, tokens
        special = torch.tensor([tokens.tts_bos_token_id, tokens.tts_eos_token_id, tokens.tts_pad_token_id],
                               device=thinker.lm.device)
        self.tts_bos, self.tts_eos, self.tts_pad = self.text(special)  # (H,) each

    def text(self, ids: torch.Tensor) -> torch.Tensor:
        """Thinker token ids (n,) -> projected token embeddings (n, H)."""
        return self.talker.text_projection(self.thinker.lm.model.embed_tokens(ids.to(self.thinker.lm.device)))

    def _pads(self, n: int) -> torch.Tensor:
        return torch.full((n,), self.tokens.tts_pad_token_id, dtype=torch.long, device=self.thinker.lm.device)

    def user_turns(self, prompt: torch.Tensor, embeds: torch.Tensor, hidden: torch.Tensor) -> Piece:
        """Every token whose latest <|im_start|> is followed by `user`; prompt (S,), embeds/hidden (S, Ht)."""
        tk, th = self.tokens, self.thinker
        n = prompt.shape[0]
        pos = torch.arange(n, device=prompt.device)
        starts = torch.where(prompt == tk.im_start_token_id, pos, torch.full_like(pos, -1))
        latest = torch.cummax(starts, 0).values.clamp_min(0)
        user = prompt[(latest + 1).clamp_max(n - 1)] == tk.user_token_id
        mm_ids = [i for i in (th.audio_token_id, th.image_token_id, th.video_token_id) if i is not None]
        mm = torch.isin(prompt, torch.tensor(mm_ids, device=prompt.device)) if mm_ids else torch.zeros_like(user)
        projected = torch.where(mm[:, None], self.talker.hidden_projection(hidden), self.talker.text_projection(embeds))
        return Piece(projected[user], prompt[user])

    def assistant_start(self, prompt: torch.Tensor) -> int:
        """Index of the last `<|im_start|>assistant` of the prompt, which the Talker's reply prefix starts from."""
        tk = self.tokens
        marks = ((prompt[:-1] == tk.im_start_token_id) & (prompt[1:] == tk.assistant_token_id)).nonzero().flatten()
        if marks.numel() == 0 or int(marks[-1]) + 3 > prompt.shape[0]:
            raise InputError("prompt has no '<|im_start|>assistant' turn for the talker to speak")
        return int(marks[-1])

    def voice_turn(self, voice: VoicePrompt) -> Piece:
        """The cloned-voice system turn: P(<|im_start|>), P(system), P(description), clip frames, P(<|im_end|>)."""
        tk, device = self.tokens, self.thinker.lm.device
        head = torch.tensor([tk.im_start_token_id, tk.system_token_id, *voice.description_ids], device=device)
        tail = torch.tensor([tk.im_end_token_id], device=device)
        codes = voice.codes.to(self.talker.device)  # (Q, T)
        frames = self.talker.frame_embedding(codes.T)  # (T, H)
        return Piece.cat(Piece(self.text(head), head), Piece(frames, self._pads(frames.shape[0])),
                         Piece(self.text(tail), tail))

    def _codec(self, ids: list[int]) -> torch.Tensor:
        return self.talker.model.embed_tokens(torch.tensor(ids, device=self.talker.device))

    def fixed_prefix(self, opening: torch.Tensor, first_token: int, voice_code: int) -> Piece:
        """The reference's 9 assistant slots; opening = embeddings of <|im_start|> assistant \\n (3, Ht)."""
        tc = self.talker.config
        first = self.text(torch.tensor([first_token]))
        text = torch.cat([self.talker.text_projection(opening), self.tts_pad.expand(4, -1), self.tts_bos[None], first])
        codec = torch.cat([text.new_zeros(3, text.shape[1]), self._codec(
            [tc.codec_nothink_id, tc.codec_think_bos_id, tc.codec_think_eos_id, voice_code, tc.codec_pad_id,
             tc.codec_bos_id])])
        return Piece(text + codec, self._pads(9))

    def aria_prefix(self, opening: torch.Tensor, voice_code: int) -> Piece:
        """The ARIA assistant prefix: the projected opening (3 slots), then E(voice), E(bos)."""
        tc = self.talker.config
        embeds = torch.cat([self.talker.text_projection(opening), self._codec([voice_code, tc.codec_bos_id])])
        return Piece(embeds, self._pads(5))


def talker_positions(thinker: Thinker, config: TalkerConfig, ids: torch.Tensor, media: dict) -> torch.Tensor | None:
    """Talker prompt positions (3, 1, L): None (sequential) for text prompts, TMRoPE over `ids` for multimodal ones.

    media: audio_lengths, image_grid_thw, video_grid_thw, video_second_per_grid, use_audio_in_video (as given
    to the Thinker)."""
    if all(media.get(k) is None for k in ("audio_lengths", "image_grid_thw", "video_grid_thw")):
        return None
    audio_cfg = thinker.audio_tower.config if thinker.audio_tower is not None else None
    pos, _ = omni_position_ids(
        ids[None], None, config.placeholders, image_grid_thw=media.get("image_grid_thw"),
        video_grid_thw=media.get("video_grid_thw"), audio_lengths=media.get("audio_lengths"),
        video_second_per_grid=media.get("video_second_per_grid"),
        use_audio_in_video=bool(media.get("use_audio_in_video")), spatial_merge_size=config.spatial_merge_size,
        position_id_per_seconds=config.position_id_per_seconds, audio_config=audio_cfg)
    return pos
