"""Text processing: byte-level BPE tokenizer, the ChatML chat template, and an incremental detokenizer."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import AddedToken
from tokenizers import Tokenizer as _HFTokenizer

import numpy as np

from .audio.encoder import num_audio_tokens
from .audio.features import log_mel
from .audio.io import load_audio
from .config import AudioConfig, VisionConfig
from .positions import TokenIds, omni_position_ids, qwen35_position_ids
from .vision.encoder import num_vision_tokens
from .vision.preprocess import (
    IMAGE_MAX_PIXELS,
    IMAGE_MIN_PIXELS,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    VisionInputError,
    preprocess_frames,
    preprocess_image,
)
from .vision.video import DEFAULT_MAX_FRAMES, load_video, temporal_patch_timestamps, timestamp_text

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
AUDIO_START = "<|audio_start|>"
AUDIO_PAD = "<|audio_pad|>"
AUDIO_END = "<|audio_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
ROLES = ("system", "user", "assistant")
TICKS_PER_SECOND = 13  # TM-RoPE temporal ids per second: the Qwen3-Omni release value; the recipe trains with it


class TokenizerError(ValueError):
    """A tokenizer directory or chat input that cannot be used (missing files, bad messages)."""


def _token_content(value) -> str | None:
    """A special-token entry of tokenizer_config.json (a string or {"content": ...}) as its text."""
    if isinstance(value, Mapping):
        return value.get("content")
    return value


class Tokenizer:
    """A checkpoint's byte-level BPE tokenizer (tokenizer.json), with its special tokens from tokenizer_config.json."""

    def __init__(self, path: str | Path):
        directory = Path(path)
        if not directory.is_dir():
            raise TokenizerError(f"checkpoint directory {directory} does not exist")
        file = directory / "tokenizer.json"
        if not file.is_file():
            raise TokenizerError(f"checkpoint directory {directory} has no tokenizer.json")
        try:
            self.backend = _HFTokenizer.from_file(str(file))
        except Exception as e:  # the tokenizers library raises a bare Exception for unparsable files
            raise TokenizerError(f"{file}: not a valid tokenizer.json ({e})") from e
        config = self._read_config(directory / "tokenizer_config.json")
        self.eos_token = _token_content(config.get("eos_token"))
        self.pad_token = _token_content(config.get("pad_token"))
        self._sync_added_tokens(directory / "tokenizer_config.json", config.get("added_tokens_decoder") or {})

    @staticmethod
    def _read_config(file: Path) -> dict:
        """tokenizer_config.json as a dict; {} when the file is absent."""
        if not file.is_file():
            return {}
        try:
            config = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise TokenizerError(f"{file}: not valid JSON ({e})") from e
        if not isinstance(config, dict):
            raise TokenizerError(f"{file}: expected a JSON object, got {type(config).__name__}")
        return config

    def _sync_added_tokens(self, file: Path, decoder: Mapping[str, Mapping]) -> None:
        """Add tokens listed in added_tokens_decoder that tokenizer.json lacks; raise if any id disagrees."""
        try:
            entries = sorted(((int(tid), entry["content"], entry) for tid, entry in decoder.items()),
                             key=lambda e: e[0])
        except (ValueError, KeyError, TypeError) as e:
            raise TokenizerError(f"{file}: malformed added_tokens_decoder ({type(e).__name__}: {e})") from e
        for tid, content, entry in entries:
            if self.backend.token_to_id(content) is None:
                special = entry.get("special", False)
                token = AddedToken(content, single_word=entry.get("single_word", False),
                                   lstrip=entry.get("lstrip", False), rstrip=entry.get("rstrip", False),
                                   normalized=entry.get("normalized", False), special=special)
                (self.backend.add_special_tokens if special else self.backend.add_tokens)([token])
            have = self.backend.token_to_id(content)
            if have != tid:
                raise TokenizerError(f"{file}: added token {content!r} has id {tid}, but tokenizer.json gives {have}")

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_ids(self) -> list[int]:
        """Ids that end a reply: <|im_end|>, <|endoftext|> and the configured eos token, those that exist."""
        ids = []
        for token in (IM_END, END_OF_TEXT, self.eos_token):
            tid = None if token is None else self.backend.token_to_id(token)
            if tid is not None and tid not in ids:
                ids.append(tid)
        return ids

    def stop_ids(self, config_eos: list[int]) -> list[int]:
        """Ids that end a model's turn: the tokenizer's `eos_ids`, then the model config's other eos ids."""
        return self.eos_ids + [t for t in config_eos if t not in self.eos_ids]

    @property
    def pad_id(self) -> int | None:
        return None if self.pad_token is None else self.backend.token_to_id(self.pad_token)

    def token_to_id(self, token: str) -> int | None:
        """The id of one vocabulary entry, or None when the vocabulary lacks it."""
        return self.backend.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in it (e.g. <|im_start|>) become their single ids."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; invalid UTF-8 (a cut multi-byte character) decodes to U+FFFD."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def encode_chat(self, messages: Sequence[Mapping], add_generation_prompt: bool = True,
                    enable_thinking: bool | None = None) -> list[int]:
        """Token ids of `chat_template(messages, ...)`."""
        return self.encode(chat_template(messages, add_generation_prompt, enable_thinking))


@dataclass(frozen=True)
class Media:
    """One media part of a chat, in prompt order: kind ('audio', 'image' or 'video'), its source, its options."""

    kind: str
    source: object
    options: Mapping = field(default_factory=dict)

    @property
    def use_audio_in_video(self) -> bool:
        return self.kind == "video" and bool(self.options.get("use_audio_in_video", False))


MEDIA_KINDS = ("audio", "image", "video")
VIDEO_OPTIONS = ("use_audio_in_video",)
QWEN3_OMNI = "qwen3-omni"  # video: one run of pads; TM-RoPE time in position ids only
QWEN35_OMNI = "qwen3.5-omni"  # video: a timestamp text before each temporal patch; 160 ms position clock


def _media_text(index: int, kind: str, part: Mapping, media: list) -> str:
    """The placeholder text of one audio, image or video part; its record is appended to `media`."""
    if part.get(kind) is None:
        raise TokenizerError(f"message {index}: {kind} part has no {kind!r} field (a path, bytes or array)")
    options = {k: part[k] for k in VIDEO_OPTIONS if kind == "video" and k in part}
    item = Media(kind, part[kind], options)
    media.append(item)
    if kind == "audio":
        return AUDIO_START + AUDIO_PAD + AUDIO_END
    if kind == "image":
        return VISION_START + IMAGE_PAD + VISION_END
    if item.use_audio_in_video:  # the processor replaces the pad with the video and audio tokens interleaved
        return VISION_START + AUDIO_START + VIDEO_PAD + AUDIO_END + VISION_END
    return VISION_START + VIDEO_PAD + VISION_END


def _message_text(index: int, message: Mapping, media: list | None = None) -> str:
    """The text of one message: a string, or a list of parts; media parts become placeholders, records -> media."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            if kind in MEDIA_KINDS and media is not None:
                texts.append(_media_text(index, kind, part, media))
                continue
            if kind != "text":
                supported = "text, audio, image and video" if media is not None else "text"
                raise TokenizerError(f"message {index}: content part of type {kind!r} is not supported "
                                     f"(only {supported} parts are)")
            if not isinstance(part.get("text"), str):
                raise TokenizerError(f"message {index}: text part has no string 'text' field")
            texts.append(part["text"])
        return "".join(texts)
    raise TokenizerError(f"message {index}: content must be a string or a list of text parts, "
                         f"got {type(content).__name__}")


def chat_template(messages: Sequence[Mapping], add_generation_prompt: bool = True,
                  enable_thinking: bool | None = None, media: list | None = None) -> str:
    """Qwen ChatML text for `messages` ({"role", "content"} dicts), ending with the assistant's turn opener.

    Each message renders as `<|im_start|>{role}\\n{content}<|im_end|>\\n`; add_generation_prompt appends
    `<|im_start|>assistant\\n`. enable_thinking picks the Qwen3.5 thinking switch after that opener:
    None adds nothing (Qwen3-Omni and Qwen3 templates: the model decides), False adds an empty
    `<think>\\n\\n</think>\\n\\n` block (non-thinking reply), True adds `<think>\\n` (the reply starts inside
    its reasoning, as Qwen3.5's template does by default). When a `media` list is given, media parts render
    as placeholders and a `Media` record of each is appended to it in order: {"type": "audio", "audio": src} as
    `<|audio_start|><|audio_pad|><|audio_end|>`, {"type": "image", "image": src} as
    `<|vision_start|><|image_pad|><|vision_end|>`, {"type": "video", "video": src} as
    `<|vision_start|><|video_pad|><|vision_end|>`, and a video with `"use_audio_in_video": True` as
    `<|vision_start|><|audio_start|><|video_pad|><|audio_end|><|vision_end|>` (the processor replaces that pad
    with the video's and its sound track's tokens interleaved by time).
    """
    if not messages:
        raise TokenizerError("empty chat: messages is an empty list")
    parts = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TokenizerError(f"message {i}: expected a dict with 'role' and 'content', "
                                 f"got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise TokenizerError(f"message {i}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
        text = _message_text(i, message, media)
        if role == "user" and not text.strip():
            raise TokenizerError(f"message {i}: user message has empty text")
        parts.append(f"{IM_START}{role}\n{text}{IM_END}\n")
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
        if enable_thinking is False:
            parts.append(f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n")
        elif enable_thinking:
            parts.append(f"{THINK_OPEN}\n")
    return "".join(parts)


def think_block(reasoning: str) -> str:
    """The reply prefix that carries `reasoning`: `<think>\\n{reasoning}\\n</think>\\n\\n`, as Qwen3.5 writes it."""
    return f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n"


def split_reasoning(text: str) -> tuple[str, str]:
    """A decoded reply -> (its reasoning, the answer after it), both stripped; a reply still inside an unclosed
    think block is all reasoning, one without a block all answer."""
    if THINK_CLOSE in text:
        head, answer = text.split(THINK_CLOSE, 1)
        return head.replace(THINK_OPEN, "", 1).strip(), answer.strip()
    if text.lstrip().startswith(THINK_OPEN):
        return text.lstrip()[len(THINK_OPEN):].strip(), ""
    return "", text.strip()


def reasoning_token_ids(tokenizer: "Tokenizer") -> tuple[int, int, frozenset[int]] | None:
    """(<think> id, </think> id, ids of the line breaks that follow the block) of a tokenizer, or None when it has no
    think tokens: what SpeechSession needs to keep a reply's reasoning out of its speech."""
    ids = tokenizer.token_to_id(THINK_OPEN), tokenizer.token_to_id(THINK_CLOSE)
    if None in ids:
        return None
    return ids[0], ids[1], frozenset(tokenizer.encode("\n") + tokenizer.encode("\n\n"))


class StreamDecoder:
    """Turns token ids fed one at a time into new printable text, never splitting a UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        # Each push decodes ids[prefix:] rather than the whole sequence (same text, constant cost per token);
        # the window keeps one emitted stretch as context, as decoders may treat a leading token specially.
        self.prefix = 0
        self.read = 0  # ids before this have been emitted as text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a multi-byte character is still partial)."""
        self.ids.append(int(token_id))
        done = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        if len(text) <= len(done) or text.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(done):]

    def flush(self) -> str:
        """The text still held back (a trailing partial character decodes to U+FFFD); call once at the end."""
        done = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(done):]


@dataclass
class PromptInputs:
    """Model inputs of one chat prompt: token ids (1, S) with placeholders expanded, and what fills them.

    audio_features (A, mels, T) / audio_lengths: the log-mel of every audio in prompt order (a video's sound
    track included when it is used); pixel_values / image_grid_thw and pixel_values_videos / video_grid_thw:
    the patches (N, patch_dim) and grids (n, 3) of the images and videos; video_second_per_grid: seconds per
    temporal patch of each video; position_ids (3, 1, S): Qwen3-Omni TM-RoPE positions of a prompt with an image
    or video (None for text and audio, whose positions are sequential)."""

    input_ids: torch.Tensor
    audio_features: torch.Tensor | None = None
    audio_lengths: list[int] = field(default_factory=list)
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    video_second_per_grid: list[float] = field(default_factory=list)
    use_audio_in_video: bool = False
    position_ids: torch.Tensor | None = None


class Processor:
    """Chat messages with audio, image and video parts -> PromptInputs: template, decoding, features, placeholders.

    Audio becomes log-mel features; images (`preprocess_image`) and videos (`load_video` at `video_fps`, then
    `preprocess_frames`) become patches sized by `vision_config`. Each placeholder is expanded to its encoder's
    token count; a video with `use_audio_in_video` also decodes its sound track and interleaves video and audio
    tokens by time as the Qwen3-Omni processor does. `max_tokens`, when given, refuses longer expanded prompts.

    Timestamps let the model tell time in long audio: the text `<t seconds>` is written between the audio tokens
    at t = every, 2*every, ... with `timestamp_every`, or (for training) at random chunk boundaries with gaps drawn
    uniformly from `timestamp_random_gap` = (min_s, max_s) using `rng`. Times are whole encoder chunks."""

    def __init__(self, tokenizer: Tokenizer, audio_config: AudioConfig | None = None,
                 max_audio_seconds: float = 3600.0, timestamp_every: float | None = None,
                 timestamp_random_gap: tuple[float, float] | None = None, rng: random.Random | None = None,
                 vision_config: VisionConfig | None = None, video_fps: float = 2.0,
                 video_max_frames: int = DEFAULT_MAX_FRAMES, image_pixels: tuple[int, int] = (IMAGE_MIN_PIXELS,
                                                                                            IMAGE_MAX_PIXELS),
                 video_pixels: tuple[int, int] = (VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS),
                 position_id_per_seconds: float = TICKS_PER_SECOND, max_tokens: int | None = None,
                 layout: str = QWEN3_OMNI):
        self.tokenizer = tokenizer
        self.audio_config = audio_config
        self.max_audio_seconds = max_audio_seconds
        self.every = self.gap = None
        if audio_config is not None:
            if timestamp_every is not None:
                self.every = self._chunks("timestamp_every", timestamp_every)
            if timestamp_random_gap is not None:
                self.gap = tuple(self._chunks("timestamp_random_gap", g) for g in timestamp_random_gap)
        self.rng = rng or random.Random(0)
        self.audio_pad_id = tokenizer.token_to_id(AUDIO_PAD)
        self.vision_config = vision_config
        self.video_fps = video_fps
        self.video_max_frames = video_max_frames
        self.image_pixels = tuple(image_pixels)
        self.video_pixels = tuple(video_pixels)
        self.position_id_per_seconds = position_id_per_seconds
        self.max_tokens = max_tokens
        if layout not in (QWEN3_OMNI, QWEN35_OMNI):
            raise TokenizerError(f"unknown prompt layout {layout!r}; expected {QWEN3_OMNI!r} or {QWEN35_OMNI!r}")
        self.layout = layout
        self.pad_ids = {"audio": self.audio_pad_id, "image": tokenizer.token_to_id(IMAGE_PAD),
                        "video": tokenizer.token_to_id(VIDEO_PAD)}

    @property
    def token_ids(self) -> TokenIds:
        """The placeholder and start-marker ids of this tokenizer (-1 for those it lacks)."""
        get = self.tokenizer.token_to_id

        def tid(token: str) -> int:
            found = get(token)
            return -1 if found is None else found

        return TokenIds(audio_token_id=tid(AUDIO_PAD), image_token_id=tid(IMAGE_PAD), video_token_id=tid(VIDEO_PAD),
                        vision_start_token_id=tid(VISION_START), audio_start_token_id=tid(AUDIO_START))

    def _chunks(self, name: str, seconds: float) -> int:
        """`seconds` as a whole number (>= 1) of encoder chunks, or a TokenizerError."""
        chunk_s = self.audio_config.chunk_frames / 100
        n = round(seconds / chunk_s)
        if n < 1 or abs(seconds - n * chunk_s) > 1e-9:
            raise TokenizerError(f"{name}={seconds} s must be a positive multiple of the encoder chunk ({chunk_s} s)")
        return n

    def __call__(self, messages: Sequence[Mapping], add_generation_prompt: bool = True,
                 enable_thinking: bool | None = None) -> PromptInputs:
        media: list[Media] = []
        text = chat_template(messages, add_generation_prompt, enable_thinking, media)
        ids = self.tokenizer.encode(text)
        if not media:
            self._check_length(len(ids))
            return PromptInputs(torch.tensor([ids], dtype=torch.long))
        self._check_supported(media, ids)
        waves, images, videos, seconds = [], [], [], []
        for item in media:
            if item.use_audio_in_video and self.layout == QWEN35_OMNI:
                raise TokenizerError("use_audio_in_video is not supported in the qwen3.5-omni layout yet; "
                                     "give the video's audio as its own audio part")
            if item.kind == "audio":
                waves.append(load_audio(item.source, max_seconds=self.max_audio_seconds))
            elif item.kind == "image":
                images.append(self._image(item.source))
            else:
                patches, grid, spg, times = self._video(item.source)
                videos.append((patches, grid, times))
                seconds.append(spg)
                if item.use_audio_in_video:
                    waves.append(self._video_audio(item.source))
        features, lengths = None, []
        if waves:
            features, mask = log_mel(waves, n_mels=self.audio_config.num_mel_bins)  # (A, mels, T), (A, T)
            lengths = [int(n) for n in mask.sum(-1)]  # the reference counts frames from the batch mask
        merge = self.vision_config.spatial_merge_size if self.vision_config is not None else 1
        expanded, counts = [], {"audio": 0, "image": 0, "video": 0}
        audio_k = 0
        pad_kind = {tid: kind for kind, tid in self.pad_ids.items() if tid is not None}
        for tid in ids:
            kind = pad_kind.get(tid)
            if kind is None:
                expanded.append(tid)
                continue
            item = [m for m in media if m.kind == kind][counts[kind]]
            n = counts[kind]
            counts[kind] += 1
            if kind == "audio":
                expanded += self.audio_tokens(lengths[audio_k])
                audio_k += 1
            elif kind == "image":
                expanded += [tid] * int(num_vision_tokens(images[n][1], merge)[0])
            elif item.use_audio_in_video:
                expanded += self.video_with_audio_tokens(videos[n][1], seconds[n], lengths[audio_k])
                audio_k += 1
            elif self.layout == QWEN35_OMNI:
                expanded.pop()  # this layout's <|vision_start|> goes after each patch's timestamp
                expanded += self.timestamped_video_tokens(videos[n][1], videos[n][2])
            else:
                expanded += [tid] * int(num_vision_tokens(videos[n][1], merge)[0])
        self._check_length(len(expanded))
        input_ids = torch.tensor([expanded], dtype=torch.long)
        out = PromptInputs(input_ids, features, lengths, video_second_per_grid=seconds,
                           use_audio_in_video=any(m.use_audio_in_video for m in media))
        if images:
            out.pixel_values = torch.cat([p for p, _ in images])
            out.image_grid_thw = torch.cat([g for _, g in images])
        if videos:
            out.pixel_values_videos = torch.cat([p for p, _, _ in videos])
            out.video_grid_thw = torch.cat([g for _, g, _ in videos])
        if not (images or videos):
            return out  # text and audio: sequential positions (timestamp text inside audio included)
        if self.layout == QWEN35_OMNI:  # one item per temporal patch, each behind its timestamp
            grids = None if not videos else torch.cat([g.repeat_interleave(int(g[0, 0]), 0) for _, g, _ in videos])
            if grids is not None:
                grids[:, 0] = 1
            out.position_ids, _ = qwen35_position_ids(input_ids, None, self.token_ids,
                                                      image_grid_thw=out.image_grid_thw, video_grid_thw=grids,
                                                      spatial_merge_size=merge)
            return out
        out.position_ids, _ = omni_position_ids(
            input_ids, None, self.token_ids, image_grid_thw=out.image_grid_thw, video_grid_thw=out.video_grid_thw,
            audio_lengths=lengths, video_second_per_grid=seconds or None, use_audio_in_video=out.use_audio_in_video,
            spatial_merge_size=merge, position_id_per_seconds=self.position_id_per_seconds,
            audio_config=self.audio_config)
        return out

    def _check_length(self, n: int) -> None:
        """Refuse a prompt of `n` tokens above `max_tokens`."""
        if self.max_tokens is not None and n > self.max_tokens:
            raise TokenizerError(f"the prompt is {n} tokens after expanding its media placeholders, "
                                 f"above the limit of {self.max_tokens} tokens")

    def _check_supported(self, media: list[Media], ids: list[int]) -> None:
        """Raise unless this processor can encode every media kind used and the placeholders match the parts."""
        kinds = {m.kind for m in media}
        needs_audio = "audio" in kinds or any(m.use_audio_in_video for m in media)
        if needs_audio and (self.audio_config is None or self.audio_pad_id is None):
            raise TokenizerError("this checkpoint has no audio encoder or no <|audio_pad|> token, "
                                 "so messages cannot contain audio")
        for kind, pad in (("image", IMAGE_PAD), ("video", VIDEO_PAD)):
            if kind in kinds and (self.vision_config is None or self.pad_ids[kind] is None
                                  or self.tokenizer.token_to_id(VISION_START) is None):
                raise TokenizerError(f"this checkpoint has no vision encoder or no {VISION_START}/{pad} token, "
                                     f"so messages cannot contain {kind}s")
        videos = [m for m in media if m.kind == "video"]
        if len({m.use_audio_in_video for m in videos}) > 1:
            raise TokenizerError("use_audio_in_video must be the same for every video of a prompt")
        for kind in kinds:
            found = ids.count(self.pad_ids[kind])
            given = sum(m.kind == kind for m in media)
            if found != given:
                raise TokenizerError(f"the prompt holds {found} {kind} placeholder tokens for {given} {kind} parts; "
                                     f"message text must not contain {self.tokenizer.decode([self.pad_ids[kind]], False)}")

    def _image(self, source) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.vision_config
        return preprocess_image(source, c.patch_size, c.temporal_patch_size, c.spatial_merge_size, *self.image_pixels)

    def _video(self, source) -> tuple[torch.Tensor, torch.Tensor, float, list[float]]:
        """Patches, grid, seconds per temporal patch (temporal_patch_size / the rate sampled), patch times."""
        c = self.vision_config
        video = load_video(source, self.video_fps, self.video_max_frames, None, *self.video_pixels,
                           temporal_patch_size=c.temporal_patch_size, patch_size=c.patch_size,
                           merge_size=c.spatial_merge_size)
        patches, grid = preprocess_frames(video.frames, c.patch_size, c.temporal_patch_size, c.spatial_merge_size,
                                          *self.video_pixels)
        times = [float(t) for t in temporal_patch_timestamps(video, c.temporal_patch_size)]
        return patches, grid, c.temporal_patch_size / video.fps, times

    def timestamped_video_tokens(self, grid: torch.Tensor, times: list[float]) -> list[int]:
        """Qwen3.5-Omni video: `<t seconds><|vision_start|>` + the patch's pads + `<|vision_end|>` per temporal patch
        (the prompt's own <|vision_end|> closes the last one)."""
        per_patch = int(num_vision_tokens(grid, self.vision_config.spatial_merge_size)[0]) // int(grid[0, 0])
        start, end = self.tokenizer.token_to_id(VISION_START), self.tokenizer.token_to_id(VISION_END)
        out = []
        for k, t in enumerate(times):
            out += ([end] if k else []) + self.tokenizer.encode(timestamp_text(t)) + [start]
            out += [self.pad_ids["video"]] * per_patch
        return out

    def _video_audio(self, source) -> np.ndarray:
        """The sound track of a video used with use_audio_in_video."""
        if not isinstance(source, (str, bytes, bytearray)) and not hasattr(source, "__fspath__"):
            raise VisionInputError("use_audio_in_video needs the video as a file path or bytes")
        return load_audio(source, max_seconds=self.max_audio_seconds)

    def video_with_audio_tokens(self, grid: torch.Tensor, second_per_grid: float, frames: int) -> list[int]:
        """Video and audio placeholders interleaved by time (Qwen3-Omni's replace_video_with_audio_token).

        Video tokens of temporal patch t have key t * second_per_grid * position_id_per_seconds, audio token j has
        key j; tokens go in increasing key, a video token first on ties, leftovers at the end."""
        t, h, w = (int(v) for v in grid.reshape(-1))
        merge = self.vision_config.spatial_merge_size
        per_patch = (h // merge) * (w // merge)
        video_keys = np.repeat(np.arange(t), per_patch) * second_per_grid * self.position_id_per_seconds
        n_audio = int(num_audio_tokens(frames, self.audio_config))
        video_id, audio_id = self.pad_ids["video"], self.audio_pad_id
        out, v, a = [], 0, 0
        while v < len(video_keys) and a < n_audio:
            if video_keys[v] <= a:
                out.append(video_id)
                v += 1
            else:
                out.append(audio_id)
                a += 1
        return out + [video_id] * (len(video_keys) - v) + [audio_id] * (n_audio - a)

    def timestamp_frames(self, frames: int) -> list[int]:
        """Mel-frame offsets inside an audio of `frames` frames where a timestamp is written."""
        chunk = self.audio_config.chunk_frames
        marks, at = [], 0
        while self.every or self.gap:
            at += chunk * (self.every or self.rng.randint(*self.gap))
            if at >= frames:
                break
            marks.append(at)
        return marks

    def audio_tokens(self, frames: int) -> list[int]:
        """The placeholder run of one audio of `frames` mel frames, with timestamp text between segments."""
        out, done = [], 0
        for at in self.timestamp_frames(frames) + [frames]:
            upto = num_audio_tokens(at, self.audio_config)
            out += [self.audio_pad_id] * (upto - done)
            if at < frames:
                out += self.tokenizer.encode(timestamp_text(at / 100))
            done = upto
        return out


def text_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """3-row positions (3, B, S) of text and audio tokens: the running count of real tokens (padding gets 1).

    Audio tokens advance one position each in both schemes (Qwen3-Omni: arange per audio; Qwen3.5-Omni: one
    temporal id per 160 ms token), so text + audio prompts need no multimodal index."""
    pos = attention_mask.long().cumsum(-1) - 1
    pos = pos.masked_fill(attention_mask == 0, 1)
    return pos.unsqueeze(0).expand(3, -1, -1)
