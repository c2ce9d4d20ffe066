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

from .audio.encoder import num_audio_tokens
from .audio.features import log_mel
from .audio.io import load_audio
from .config import AudioConfig

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
AUDIO_START = "<|audio_start|>"
AUDIO_PAD = "<|audio_pad|>"
AUDIO_END = "<|audio_end|>"
ROLES = ("system", "user", "assistant")


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


def _message_text(index: int, message: Mapping, media: list | None = None) -> str:
    """The text of one message: a string, or a list of parts; audio parts become placeholders, sources -> media."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            if kind == "audio" and media is not None:
                if part.get("audio") is None:
                    raise TokenizerError(f"message {index}: audio part has no 'audio' field (a path, bytes or array)")
                media.append(part["audio"])
                texts.append(AUDIO_START + AUDIO_PAD + AUDIO_END)
                continue
            if kind != "text":
                supported = "text and audio" if media is not None else "text"
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
    its reasoning, as Qwen3.5's template does by default). When a `media` list is given, audio parts
    ({"type": "audio", "audio": source}) render as `<|audio_start|><|audio_pad|><|audio_end|>` and their
    sources are appended to it in order.
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
    """Model inputs of one chat prompt: token ids (1, S), the log-mel of its audios and their frame counts."""

    input_ids: torch.Tensor
    audio_features: torch.Tensor | None = None
    audio_lengths: list[int] = field(default_factory=list)


def timestamp_text(seconds: float) -> str:
    """The timestamp written into long audio, e.g. `<12.8 seconds>`."""
    return f"<{seconds:.1f} seconds>"


class Processor:
    """Chat messages with audio parts -> PromptInputs: template, audio decoding, log-mel, placeholder expansion.

    Timestamps let the model tell time in long audio: the text `<t seconds>` is written between the audio tokens
    at t = every, 2*every, ... with `timestamp_every`, or (for training) at random chunk boundaries with gaps drawn
    uniformly from `timestamp_random_gap` = (min_s, max_s) using `rng`. Times are whole encoder chunks."""

    def __init__(self, tokenizer: Tokenizer, audio_config: AudioConfig | None = None,
                 max_audio_seconds: float = 3600.0, timestamp_every: float | None = None,
                 timestamp_random_gap: tuple[float, float] | None = None, rng: random.Random | None = None):
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

    def _chunks(self, name: str, seconds: float) -> int:
        """`seconds` as a whole number (>= 1) of encoder chunks, or a TokenizerError."""
        chunk_s = self.audio_config.chunk_frames / 100
        n = round(seconds / chunk_s)
        if n < 1 or abs(seconds - n * chunk_s) > 1e-9:
            raise TokenizerError(f"{name}={seconds} s must be a positive multiple of the encoder chunk ({chunk_s} s)")
        return n

    def __call__(self, messages: Sequence[Mapping], add_generation_prompt: bool = True,
                 enable_thinking: bool | None = None) -> PromptInputs:
        media: list = []
        text = chat_template(messages, add_generation_prompt, enable_thinking, media)
        ids = self.tokenizer.encode(text)
        if not media:
            return PromptInputs(torch.tensor([ids], dtype=torch.long))
        if self.audio_config is None or self.audio_pad_id is None:
            raise TokenizerError("this checkpoint has no audio encoder or no <|audio_pad|> token, "
                                 "so messages cannot contain audio")
        waves = [load_audio(src, max_seconds=self.max_audio_seconds) for src in media]
        features, mask = log_mel(waves, n_mels=self.audio_config.num_mel_bins)  # (A, mels, T), (A, T)
        lengths = [int(n) for n in mask.sum(-1)]  # the reference counts frames from the batch mask
        expanded, k = [], 0
        for tid in ids:
            if tid == self.audio_pad_id:
                expanded += self.audio_tokens(lengths[k])
                k += 1
            else:
                expanded.append(tid)
        return PromptInputs(torch.tensor([expanded], dtype=torch.long), features, lengths)

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
