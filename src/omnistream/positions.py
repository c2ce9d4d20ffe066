"""TM-RoPE position ids (3, B, S): one (temporal, height, width) triple per token of a multimodal prompt.

Both schemes walk each prompt (padding removed) left to right with a cursor `next`, starting at 0. An item opens at
`<|audio_start|><|audio_pad|>`, `<|vision_start|><|image_pad|>`, `<|vision_start|><|video_pad|>` or, for a video
with its own audio, `<|vision_start|><|audio_start|>`. Every other token is text: it takes (next, next, next) and
advances `next` by one. The one or two start markers of an item are text; the item's placeholders start at s = next;
the end markers after them are text again, from the `next` the item leaves.

Qwen3-Omni (`omni_position_ids`, equal to transformers' Qwen3-Omni `get_rope_index`; float positions):
- audio of n tokens (n = `num_audio_tokens` of its mel frames): s + j on all rows; next = s + n.
- image or video, grid (t, h, w) merged by m: patch k, row r, column c -> (s + k * step, s + r, s + c), with
  step = position_id_per_seconds for images and video_second_per_grid * position_id_per_seconds for videos;
  next = 1 + the item's maximum.
- video with audio: audio token j at s + j and the video patches as above, in the order of their temporal ids
  (a patch goes before an audio token with the same id); next = 1 + the maximum of the trailing run of one stream
  (a quirk of the reference: when the audio outlasts the video that is the last audio token + 1, even if the
  video's height/width ids reach higher).

Qwen3.5-Omni (`qwen35_position_ids`, this project's design; long positions): the temporal id is a clock of 160 ms
ticks, shared by audio and video, and items are contiguous: each item starts at 1 + the maximum before it.
- audio: one token is one tick, s + j on all rows, so audio pads are positioned like text (timestamp text inside an
  audio simply continues the count).
- image, grid (1, h, w): (s, s + r, s + c); next = s + max(h, w) / m = 1 + the item's maximum. Text and images are
  exactly Qwen3.5's `get_rope_index`.
- video, grid (t, h, w), one run of t*h*w/m^2 pads, each patch lasting d = video_second_per_grid seconds:
  patch k -> (s + floor(k * d / 0.16 s), s + r, s + c); next = 1 + the item's maximum. A video given as one item per
  patch (grid rows (1, h, w), Qwen3.5's timestamped layout) is therefore positioned as Qwen3.5 positions it.
- video with audio: audio token j at tick j, patch k at its tick, interleaved by tick as above (patch first on ties);
  next = 1 + the item's maximum.

rope_deltas (B, 1) = 1 + max position - number of real tokens; `decode_positions` continues from there.
Padded slots hold 0, except in a Qwen3-Omni batch given no image or video grid, where they hold 1 (the reference's
text branch; its deltas also count that 1 as a position, which differs from ours only for a padded one-token row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .audio.encoder import num_audio_tokens
from .config import AudioConfig

TICK_SECONDS = 0.16  # Qwen3.5-Omni temporal id resolution: one AuT token


class PositionError(ValueError):
    """A prompt whose placeholder runs disagree with the grids, audio lengths or flags given with it."""


@dataclass(frozen=True)
class TokenIds:
    """Placeholder and start-marker ids that positions depend on (defaults: the Qwen3-Omni release)."""

    audio_token_id: int = 151675
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    audio_start_token_id: int = 151669


@dataclass
class _Scheme:
    """What differs between the two schemes: dtype, item clocks, audio counts, the tail rule, flags."""

    dtype: torch.dtype
    images: torch.Tensor | None  # (N, 3)
    videos: torch.Tensor | None  # (N, 3)
    merge: int
    video_seconds: Sequence[float] | torch.Tensor | None
    omni: bool = False
    per_second: float = 13  # Qwen3-Omni position_id_per_seconds (an image patch counts as one second)
    audio_tokens: list[int] | None = None  # Qwen3-Omni: tokens per audio; None: counted from the prompt
    audio_in_video: bool | None = None  # Qwen3-Omni: the flag every video must agree with
    image_idx: int = 0
    video_idx: int = 0
    audio_idx: int = 0

    def grid(self, kind: str) -> tuple[int, int, int, int]:
        """Index and merged grid (t, h, w) of the next unused `kind` ('image' or 'video')."""
        grids, idx = (self.images, self.image_idx) if kind == "image" else (self.videos, self.video_idx)
        if grids is None or idx >= len(grids):
            raise PositionError(f"the prompts hold more {kind}s than the {0 if grids is None else len(grids)} "
                                f"rows of {kind}_grid_thw")
        t, h, w = (int(v) for v in grids[idx])
        if h % self.merge or w % self.merge:
            raise PositionError(f"{kind} {idx}: grid {(t, h, w)} is not divisible by spatial_merge_size {self.merge}")
        if kind == "image":
            self.image_idx += 1
        else:
            self.video_idx += 1
        return idx, t, h // self.merge, w // self.merge

    def patch_offsets(self, kind: str, idx: int, t: int) -> torch.Tensor:
        """Temporal offsets (t,) of the patches of item `idx` of `kind` from its start."""
        k = torch.arange(t)
        if kind == "image":
            return (k * self.per_second).to(self.dtype) if self.omni else k
        if t == 1:
            return torch.zeros(1, dtype=self.dtype)
        if self.video_seconds is None or idx >= len(self.video_seconds):
            raise PositionError(f"video {idx} has {t} temporal patches but video_second_per_grid gives no duration")
        seconds = float(self.video_seconds[idx])
        if self.omni:
            return k * torch.tensor(seconds, dtype=torch.float32) * self.per_second  # the reference's float32 order
        return torch.floor(k.double() * (seconds / TICK_SECONDS) + 1e-6).long()

    def audio_count(self, run: int) -> int:
        """Tokens of the next audio: its encoder length (Qwen3-Omni) or the pads found (Qwen3.5-Omni)."""
        idx = self.audio_idx
        self.audio_idx += 1
        if self.audio_tokens is None:
            return run
        if idx >= len(self.audio_tokens):
            raise PositionError(f"the prompts hold more audios than the {len(self.audio_tokens)} audio lengths given")
        return self.audio_tokens[idx]

    def check_used(self) -> None:
        """Every grid and audio length given was placed in a prompt."""
        given = [("image_grid_thw", self.images, self.image_idx), ("video_grid_thw", self.videos, self.video_idx),
                 ("audio_lengths", self.audio_tokens, self.audio_idx)]
        for name, rows, used in given:
            if rows is not None and len(rows) != used:
                raise PositionError(f"{name} has {len(rows)} entries but the prompts hold {used} such items")


def _text(n: int, start: torch.Tensor) -> torch.Tensor:
    """Sequential positions (3, n) from `start` on all rows."""
    return (torch.arange(n) + start).expand(3, -1)


def _visual(start: torch.Tensor, offsets: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Positions (3, t*h*w) of patches at temporal `offsets` (t,) over an h x w grid, all shifted by `start`."""
    t = len(offsets)
    rows = torch.stack([
        offsets.view(t, 1, 1).expand(t, h, w),
        torch.arange(h, dtype=offsets.dtype).view(1, h, 1).expand(t, h, w),
        torch.arange(w, dtype=offsets.dtype).view(1, 1, w).expand(t, h, w),
    ])  # (3, t, h, w)
    return rows.reshape(3, -1) + start


def _run_length(ids: torch.Tensor, at: int, token: int) -> int:
    """How many consecutive `token`s start at index `at`."""
    other = (ids[at:] != token).nonzero()
    return int(other[0]) if len(other) else len(ids) - at


def _expect_run(ids: torch.Tensor, at: int, token: int, count: int, what: str) -> None:
    """Raise unless exactly `count` `token`s start at `at`."""
    found = _run_length(ids, at, token)
    if found != count:
        raise PositionError(f"{what}: expected {count} placeholder tokens at index {at}, found {found}")


class _Walk:
    """Positions of one unpadded prompt under a scheme."""

    def __init__(self, ids: torch.Tensor, tok: TokenIds, scheme: _Scheme):
        self.ids, self.tok, self.s = ids, tok, scheme
        self.pieces: list[torch.Tensor] = []
        self.next = torch.zeros((), dtype=scheme.dtype)

    def add(self, pos: torch.Tensor, next_pos: torch.Tensor) -> None:
        """Append positions (3, n) and move the cursor to `next_pos`."""
        self.pieces.append(pos.to(self.s.dtype))
        self.next = next_pos.to(self.s.dtype)

    def text(self, n: int) -> None:
        """Append n sequential text positions."""
        if n:
            self.add(_text(n, self.next), self.next + n)

    def run(self) -> torch.Tensor:
        """Positions (3, n) of the whole prompt."""
        ids, tok = self.ids, self.tok
        n = len(ids)
        is_start = (ids == tok.vision_start_token_id) | (ids == tok.audio_start_token_id)
        starts = is_start.nonzero().flatten().tolist()
        at = 0
        for mark in starts:
            if mark < at:  # the audio start inside an audio-in-video opening
                continue
            self.text(mark - at)
            at = mark + self.item(mark)
        self.text(n - at)
        return torch.cat(self.pieces, dim=1)

    def item(self, mark: int) -> int:
        """Place the item opened at `mark`; return how many tokens it spans (markers before the end markers)."""
        ids, tok = self.ids, self.tok
        first = int(ids[mark])
        after = int(ids[mark + 1]) if mark + 1 < len(ids) else None
        if first == tok.audio_start_token_id:
            if after != tok.audio_token_id:
                raise PositionError(f"token {mark}: <|audio_start|> is not followed by an audio placeholder")
            self.text(1)
            return 1 + self.audio(mark + 1)
        if after == tok.audio_start_token_id:
            if self.s.audio_in_video is False:
                raise PositionError(f"token {mark}: a video with interleaved audio, but use_audio_in_video is False")
            self.text(2)
            return 2 + self.audio_in_video(mark + 2)
        if after not in (tok.image_token_id, tok.video_token_id):
            raise PositionError(f"token {mark}: <|vision_start|> is not followed by an image or video placeholder")
        kind = "image" if after == tok.image_token_id else "video"
        if kind == "video" and self.s.audio_in_video:
            raise PositionError(f"token {mark}: use_audio_in_video is set but this video has no interleaved audio")
        self.text(1)
        return 1 + self.visual(kind, mark + 1)

    def audio(self, at: int) -> int:
        """Place the audio whose placeholders start at `at`; return their count."""
        idx = self.s.audio_idx
        count = self.s.audio_count(_run_length(self.ids, at, self.tok.audio_token_id))
        _expect_run(self.ids, at, self.tok.audio_token_id, count, f"audio {idx}")
        self.add(_text(count, self.next), self.next + count)
        return count

    def visual(self, kind: str, at: int) -> int:
        """Place the image or video whose placeholders start at `at`; return their count."""
        idx, t, h, w = self.s.grid(kind)
        token = self.tok.image_token_id if kind == "image" else self.tok.video_token_id
        _expect_run(self.ids, at, token, t * h * w, f"{kind} {idx}")
        pos = _visual(self.next, self.s.patch_offsets(kind, idx, t), h, w)
        self.add(pos, pos.max() + 1)
        return t * h * w

    def audio_in_video(self, at: int) -> int:
        """Place the interleaved video and audio placeholders starting at `at`; return their count."""
        idx, t, h, w = self.s.grid("video")
        video = _visual(self.next, self.s.patch_offsets("video", idx, t), h, w)  # (3, Nv)
        body = self.ids[at:]
        in_run = (body == self.tok.audio_token_id) | (body == self.tok.video_token_id)
        run = int((~in_run).nonzero()[0]) if (~in_run).any() else len(body)
        n_audio = self.s.audio_count(max(run - video.shape[1], 0))
        audio = _text(n_audio, self.next)  # (3, Na)
        order = torch.sort(torch.cat([video[0], audio[0]]), stable=True).indices  # patches first on ties
        merged = torch.cat([video, audio], dim=1)[:, order]  # (3, Nv + Na)
        is_audio = order >= video.shape[1]
        expected = torch.where(is_audio, self.tok.audio_token_id, self.tok.video_token_id)
        span = len(order)
        if run != span or not torch.equal(body[:span], expected):
            raise PositionError(f"video {idx}: its {video.shape[1]} video and {n_audio} audio placeholders are not "
                                f"interleaved by time at index {at}")
        tail = merged
        if self.s.omni:
            switches = (is_audio != is_audio[-1]).nonzero()
            tail = merged[:, int(switches[-1]) + 1:] if len(switches) else merged
        self.add(merged, tail.max() + 1)
        return span


def _positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, tok: TokenIds, scheme: _Scheme,
               fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Walk every row; scatter its positions into (3, B, S) and compute (B, 1) deltas."""
    if input_ids.dim() != 2:
        raise PositionError(f"input_ids must be (batch, sequence), got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise PositionError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                            f"{tuple(input_ids.shape)}")
    ids_cpu, valid = input_ids.cpu(), attention_mask.cpu() == 1
    batch, seq = ids_cpu.shape
    position_ids = torch.full((3, batch, seq), fill, dtype=scheme.dtype)
    deltas = []
    for b in range(batch):
        ids = ids_cpu[b][valid[b]]
        if len(ids) == 0:
            raise PositionError(f"row {b} of the batch has no tokens (its attention mask is all zero)")
        pos = _Walk(ids, tok, scheme).run()  # (3, n)
        position_ids[:, b, valid[b]] = pos
        deltas.append(pos.max() + 1 - len(ids))
    scheme.check_used()
    rope_deltas = torch.stack(deltas).view(batch, 1)
    return position_ids.to(input_ids.device), rope_deltas.to(input_ids.device)


def omni_position_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, token_ids: TokenIds, *,
                      image_grid_thw: torch.Tensor | None = None, video_grid_thw: torch.Tensor | None = None,
                      audio_lengths: Sequence[int] | torch.Tensor | None = None,
                      video_second_per_grid: Sequence[float] | torch.Tensor | None = None,
                      use_audio_in_video: bool = False, spatial_merge_size: int = 2,
                      position_id_per_seconds: float = 13, audio_config: AudioConfig | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3-Omni TMRoPE: position_ids (3, B, S) float and rope_deltas (B, 1) for left-padded prompts.

    audio_lengths are mel frames per audio in prompt order (videos' own audio included); their token counts come
    from `num_audio_tokens` with `audio_config` (default: the Qwen3-Omni AuT)."""
    audio_config = audio_config or AudioConfig()
    frames = [] if audio_lengths is None else audio_lengths
    counts = [int(num_audio_tokens(int(f), audio_config)) for f in frames]
    scheme = _Scheme(torch.float32, image_grid_thw, video_grid_thw, spatial_merge_size, video_second_per_grid,
                     omni=True, per_second=position_id_per_seconds, audio_tokens=counts,
                     audio_in_video=use_audio_in_video)
    visual = image_grid_thw is not None or video_grid_thw is not None
    return _positions(input_ids, attention_mask, token_ids, scheme, fill=0 if visual else 1)


def qwen35_position_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, token_ids: TokenIds, *,
                        image_grid_thw: torch.Tensor | None = None, video_grid_thw: torch.Tensor | None = None,
                        video_second_per_grid: Sequence[float] | torch.Tensor | None = None,
                        spatial_merge_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3.5-Omni TM-RoPE (160 ms ticks, contiguous items): position_ids (3, B, S) long and rope_deltas (B, 1)."""
    scheme = _Scheme(torch.long, image_grid_thw, video_grid_thw, spatial_merge_size, video_second_per_grid)
    return _positions(input_ids, attention_mask, token_ids, scheme, fill=0)


def decode_positions(rope_deltas: torch.Tensor, cache_len: int | torch.Tensor, steps: int = 1) -> torch.Tensor:
    """Positions (3, B, steps) of the next generated tokens, after `cache_len` real (unpadded) tokens per row."""
    start = torch.as_tensor(cache_len, device=rope_deltas.device).reshape(-1, 1)  # (B or 1, 1)
    pos = start + torch.arange(steps, device=rope_deltas.device) + rope_deltas  # (B, steps)
    return pos.unsqueeze(0).expand(3, -1, -1)
