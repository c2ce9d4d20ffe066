"""Talker training examples: what the Thinker made of the prompt, the reply's text, and its speech as codec frames.

The Talker learns from exactly what it sees at inference (engine/session.py): the same `TalkerPrompt` pieces, the
same TMRoPE positions, and the reply either as one ARIA stream (`aria.pack`) or in the Qwen3-Omni fixed-rate
layout. The Thinker is frozen here; its prompt embeddings and accept-layer hidden states are computed once per
item and cached. Speech targets are the codec's codes of the item's target speech (the frozen audio tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..audio.codec import AudioTokenizer
from ..audio.io import load_audio
from ..aria import Kind, pack, training_targets
from ..engine.talker_prompt import Piece, SpeechTokens, TalkerPrompt, talker_positions
from ..processor import QWEN35_OMNI, Processor, Tokenizer
from ..talker import Talker
from ..thinker import Thinker
from ..voice import VoicePrompt
from .tokenizer import special_ids

IGNORE = -100


class TalkerDataError(ValueError):
    """An item the Talker cannot learn from (no speech target, an unknown voice, a tokenizer without the ids)."""


def speech_tokens(tokenizer: Tokenizer) -> SpeechTokens:
    """The Thinker-vocabulary ids of the Talker prompt, read from a tokenizer made by `train_tokenizer`."""
    ids = special_ids(tokenizer)
    return SpeechTokens(**{name: ids[name] for name in SpeechTokens.__dataclass_fields__})


@dataclass
class TalkerItem:
    """One reply to speak: the frozen Thinker's view of its prompt, its text and its codec frames."""

    prompt_ids: torch.Tensor  # (S,)
    prompt_embeds: torch.Tensor  # (S, Ht) Thinker input embeddings
    prompt_hidden: torch.Tensor  # (S, Ht) Thinker accept-layer hidden states
    media: dict  # audio_lengths / grids, for the Talker's positions
    reply_ids: list[int]  # the reply's tokens, ending with <|im_end|>
    codes: torch.Tensor  # (Q, T) speech frames
    voice_code: int  # the speaker's codec id, or codec_pad for a cloned voice
    voice: VoicePrompt | None = None


def _codes(codec: AudioTokenizer, source, what: str) -> torch.Tensor:
    wave = load_audio(source, target_rate=codec.config.sample_rate, max_seconds=60)
    if wave.size == 0:
        raise TalkerDataError(f"{what} {source} is empty")
    with torch.no_grad():
        return codec.encode(torch.from_numpy(wave).float())[0]  # (Q, T)


@torch.no_grad()
def talker_item(item: dict, root: Path, thinker: Thinker, talker: Talker, codec: AudioTokenizer,
                processor: Processor, tokenizer: Tokenizer) -> TalkerItem:
    """Build one TalkerItem from a synthesized data item (see omnistream.data) that has target speech."""
    if "target_speech" not in item:
        raise TalkerDataError(f"item {item.get('id')} ({item.get('task')}) has no target_speech to learn from")
    tc = talker.config
    voice, code = None, tc.codec_pad_id
    if item.get("reference_speech"):
        voice = VoicePrompt(_codes(codec, root / item["reference_speech"], "reference clip"),
                            source=item["reference_speech"])
    else:
        name = (item.get("meta", {}).get("answer_voice") or item.get("voice") or "").lower()
        if name not in tc.speaker_id:
            raise TalkerDataError(f"item {item['id']}: voice {name!r} is not one of the talker's speakers "
                                  f"({', '.join(sorted(tc.speaker_id))})")
        code = tc.speaker_id[name]
    prompt = processor(absolute_paths(item["messages"], root))
    lm = thinker.lm
    media = dict(audio_lengths=prompt.audio_lengths or None, image_grid_thw=prompt.image_grid_thw,
                 video_grid_thw=prompt.video_grid_thw, video_second_per_grid=prompt.video_second_per_grid or None,
                 use_audio_in_video=prompt.use_audio_in_video)
    embeds, deepstack = thinker.embed(prompt.input_ids, prompt.audio_features, media["audio_lengths"],
                                      prompt.pixel_values, prompt.image_grid_thw, prompt.pixel_values_videos,
                                      prompt.video_grid_thw)
    _, out = lm(inputs_embeds=embeds, deepstack=deepstack, position_ids=prompt.position_ids,
                output_hidden_states=True)
    reply = tokenizer.encode(item["reply"]) + [tokenizer.token_to_id("<|im_end|>")]
    return TalkerItem(prompt.input_ids[0], out.hidden_states[0][0], out.hidden_states[tc.accept_hidden_layer][0],
                      media, reply, _codes(codec, root / item["target_speech"], "target speech"), code, voice)


def absolute_paths(messages: list[dict], root: Path) -> list[dict]:
    """Messages with media paths made absolute under the data directory."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = [{**p, p["type"]: str(root / p[p["type"]])} if p["type"] in ("audio", "image", "video") else p
                       for p in content]
        out.append({**m, "content": content})
    return out


def default_processor(tokenizer: Tokenizer, thinker: Thinker) -> Processor:
    """The processor the Thinker was trained with (the Qwen3.5-Omni layout)."""
    audio = thinker.audio_tower.config if thinker.audio_tower is not None else None
    vision = thinker.visual.config if thinker.visual is not None else None
    return Processor(tokenizer, audio, vision_config=vision, layout=QWEN35_OMNI)


# ---- teacher-forced sequences -------------------------------------------------------------------------------


@dataclass
class TalkerSequence:
    """A teacher-forced Talker input (L, H), its positions, the codebook-0 targets and where each frame sits."""

    embeds: torch.Tensor  # (L, H)
    positions: torch.Tensor | None  # (3, 1, L) or None (sequential)
    targets: torch.Tensor  # (L,) codebook-0 target per position, IGNORE where none
    frame_at: torch.Tensor  # (T,) position whose output predicts each frame's codebook 0
    codes: torch.Tensor  # (Q, T)


def _prefix(builder: TalkerPrompt, item: TalkerItem) -> list[Piece]:
    pieces = [] if item.voice is None else [builder.voice_turn(item.voice)]
    device = builder.talker.device  # items are cached on the CPU; the Talker may train on a GPU
    return pieces + [builder.user_turns(item.prompt_ids.to(device), item.prompt_embeds.to(device),
                                        item.prompt_hidden.to(device))]


def _positions(thinker: Thinker, talker: Talker, ids: torch.Tensor, media: dict, extra: int) -> torch.Tensor | None:
    """Prompt positions continued sequentially for `extra` more slots (None when all are sequential)."""
    pos = talker_positions(thinker, talker.config, ids, media)
    if pos is None:
        return None
    nxt = pos.amax() + 1 + torch.arange(extra, dtype=pos.dtype, device=pos.device)
    return torch.cat([pos, nxt.view(1, 1, -1).expand(3, 1, -1)], dim=-1)


def aria_sequence(thinker: Thinker, talker: Talker, tokens: SpeechTokens, item: TalkerItem) -> TalkerSequence:
    """The ARIA stream: prefix, then reply text and speech frames packed by the prefix-ratio rule."""
    tc = talker.config
    builder = TalkerPrompt(thinker, talker, tokens)
    a = builder.assistant_start(item.prompt_ids)
    opening = item.prompt_embeds[a:a + 3].to(talker.device)
    prefix = Piece.cat(*_prefix(builder, item), builder.aria_prefix(opening, item.voice_code))
    frames = list(range(item.codes.shape[1]))
    stream = pack(item.reply_ids, frames)
    is_text = torch.tensor([u.kind is Kind.TEXT for u in stream])
    text = builder.text(torch.tensor([u.value for u in stream if u.kind is Kind.TEXT]))  # (Tt, H)
    speech = talker.frame_embedding(item.codes.T.to(talker.device))  # (T, H)
    units = torch.zeros(len(stream), text.shape[1], dtype=text.dtype, device=text.device)
    units = units.masked_scatter(is_text[:, None].to(units.device), text)
    units = units.masked_scatter(~is_text[:, None].to(units.device), speech)
    code_stream = [u if u.kind is Kind.TEXT else type(u)(u.kind, int(item.codes[0, u.value])) for u in stream]
    example = training_targets(code_stream, tc.codec_text_slot_id, tc.codec_eos_token_id, IGNORE)
    n = prefix.embeds.shape[0]
    targets = torch.full((n + len(stream),), IGNORE, dtype=torch.long)
    targets[n - 1] = tc.codec_text_slot_id  # the first unit is always text
    targets[n:] = torch.tensor([t if m else IGNORE for t, m in zip(example.targets, example.loss_mask)])
    frame_at = n - 1 + (~is_text).nonzero().flatten()
    return TalkerSequence(torch.cat([prefix.embeds, units]), _positions(thinker, talker, prefix.ids, item.media,
                                                                        len(stream)),
                          targets, frame_at, item.codes)


def fixed_sequence(thinker: Thinker, talker: Talker, tokens: SpeechTokens, item: TalkerItem) -> TalkerSequence:
    """The Qwen3-Omni fixed-rate layout: 9-slot prefix with the first reply token, then frame + text per step."""
    tc = talker.config
    if len(item.reply_ids) < 2:
        raise TalkerDataError("a fixed-rate example needs at least one reply token before <|im_end|>")
    builder = TalkerPrompt(thinker, talker, tokens)
    a = builder.assistant_start(item.prompt_ids)
    opening = item.prompt_embeds[a:a + 3].to(talker.device)
    prefix = Piece.cat(*_prefix(builder, item), builder.fixed_prefix(opening, item.reply_ids[0], item.voice_code))
    t = item.codes.shape[1]
    trailing = torch.cat([builder.text(torch.tensor(item.reply_ids[1:-1])), builder.tts_eos[None]])  # the last
    if trailing.shape[0] < t:  # reply token (<|im_end|>) is never fed, as in the reference
        trailing = torch.cat([trailing, builder.tts_pad.expand(t - trailing.shape[0], -1)])
    steps = talker.frame_embedding(item.codes.T.to(talker.device)) + trailing[:t]  # (T, H)
    n = prefix.embeds.shape[0]
    targets = torch.full((n + t,), IGNORE, dtype=torch.long)
    targets[n - 1:n - 1 + t] = item.codes[0]
    targets[n - 1 + t] = tc.codec_eos_token_id
    frame_at = n - 1 + torch.arange(t)
    return TalkerSequence(torch.cat([prefix.embeds, steps]), _positions(thinker, talker, prefix.ids, item.media, t),
                          targets, frame_at, item.codes)
