"""Train the demo model's byte-level BPE tokenizer on the dataset's own texts (en, zh, es).

The layout is Qwen's: NFC normalisation, Qwen2's pre-tokenizer regex (single digits, letters in runs, newlines
apart) and byte-level BPE, so every string, Chinese included, encodes and decodes back exactly. One change: each
Chinese character is its own pre-token. Qwen's regex keeps a whole run of CJK characters together, which on our
small templated corpus lets BPE merge entire Chinese clauses ("五乘以五等于二十五") into single ids; per character,
BPE learns the (few hundred) characters as single ids instead and the model composes number words and sentences
from them, as it does with English words. The learned vocabulary comes first, then the added tokens, in this order:

- special (dropped by `decode(skip_special_tokens=True)`): the processor's markers <|endoftext|>, <|im_start|>,
  <|im_end|>, <|audio_start|>, <|audio_end|>, <|audio_pad|>, <|vision_start|>, <|vision_end|>, <|image_pad|>,
  <|video_pad|>, and the speech side's <|tts_pad|>, <|tts_bos|>, <|tts_eos|> (the Talker prompt refers to these
  by id only: see `SpeechTokens`);
- not special (kept when decoding, as Qwen3 keeps them): <think>, </think> (the processor's thinking switch) and
  the role words "system", "user", "assistant", so `<|im_start|>user\\n` has one id for `user`, as the Talker's
  prompt builder expects (`SpeechTokens.user_token_id` etc.). These match anywhere in text, so "users" encodes
  as user + s; none of the dataset's sentences use the three words.

tokenizer_config.json names <|im_end|> the eos token and <|endoftext|> the pad token.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as _HFTokenizer

from ..processor import (
    AUDIO_END,
    AUDIO_PAD,
    AUDIO_START,
    END_OF_TEXT,
    IM_END,
    IM_START,
    IMAGE_PAD,
    ROLES,
    THINK_CLOSE,
    THINK_OPEN,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    Tokenizer,
)

TTS_PAD = "<|tts_pad|>"
TTS_BOS = "<|tts_bos|>"
TTS_EOS = "<|tts_eos|>"
SPECIAL = [END_OF_TEXT, IM_START, IM_END, AUDIO_START, AUDIO_END, AUDIO_PAD, VISION_START, VISION_END, IMAGE_PAD,
           VIDEO_PAD, TTS_PAD, TTS_BOS, TTS_EOS]
ADDED = [THINK_OPEN, THINK_CLOSE, *ROLES]
# Qwen2's pre-tokenizer split (tokenizer.json of Qwen2 / Qwen3 / Qwen3.5), before the byte-level mapping.
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
HAN_PATTERN = r"\p{Han}"  # one pre-token per Chinese character (see the module docstring)

# special_ids keys: SpeechTokens field names (engine/talker_prompt.py) and TokenIds field names (positions.py),
# so either can be built with `Cls(**{k: ids[k] for k in Cls.__dataclass_fields__})`.
_ID_NAMES = {
    "im_start_token_id": IM_START, "im_end_token_id": IM_END, "endoftext_token_id": END_OF_TEXT,
    "tts_pad_token_id": TTS_PAD, "tts_bos_token_id": TTS_BOS, "tts_eos_token_id": TTS_EOS,
    "system_token_id": "system", "user_token_id": "user", "assistant_token_id": "assistant",
    "audio_token_id": AUDIO_PAD, "audio_start_token_id": AUDIO_START, "audio_end_token_id": AUDIO_END,
    "image_token_id": IMAGE_PAD, "video_token_id": VIDEO_PAD, "vision_start_token_id": VISION_START,
    "vision_end_token_id": VISION_END, "think_start_token_id": THINK_OPEN, "think_end_token_id": THINK_CLOSE,
}


class TokenizerTrainingError(ValueError):
    """Texts or a vocabulary size a tokenizer cannot be trained from."""


def train_tokenizer(texts: Iterable[str], directory: str | Path, vocab_size: int = 2048) -> dict[str, int]:
    """Train a byte-level BPE of at most `vocab_size` ids (added tokens included) on `texts`; write tokenizer.json
    and tokenizer_config.json into `directory` (created); return `special_ids` of the result.

    The vocabulary is smaller than `vocab_size` when the texts run out of pairs to merge (a small corpus).
    The same texts in the same order give the same files."""
    texts = [t for t in texts if isinstance(t, str) and t]
    if not texts:
        raise TokenizerTrainingError("no texts to train the tokenizer on")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    n_added = len(SPECIAL) + len(ADDED)
    if vocab_size < len(alphabet) + n_added:
        raise TokenizerTrainingError(f"vocab_size {vocab_size} is below the byte alphabet ({len(alphabet)}) "
                                     f"plus {n_added} added tokens")
    tok = _HFTokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(HAN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - n_added, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in ADDED])
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    decoder = {str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                         "single_word": False, "special": t in SPECIAL} for t in SPECIAL + ADDED}
    config = {"added_tokens_decoder": decoder, "eos_token": IM_END, "pad_token": END_OF_TEXT,
              "model_max_length": 32768, "tokenizer_class": "Qwen2Tokenizer", "clean_up_tokenization_spaces": False}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return special_ids(Tokenizer(directory))


def special_ids(tokenizer: Tokenizer | str | Path) -> dict[str, int]:
    """Ids of the special and role tokens (plus "vocab_size", "pad_token_id" and "eos_token_id") of a tokenizer
    made by `train_tokenizer`, keyed like SpeechTokens / TokenIds fields; raise if one is missing."""
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = Tokenizer(tokenizer)
    out = {}
    for name, token in _ID_NAMES.items():
        tid = tokenizer.token_to_id(token)
        if tid is None:
            raise TokenizerTrainingError(f"the tokenizer has no {token!r} token; train it with train_tokenizer")
        out[name] = tid
    out["pad_token_id"] = tokenizer.pad_id if tokenizer.pad_id is not None else out["endoftext_token_id"]
    out["eos_token_id"] = out["im_end_token_id"]
    out["vocab_size"] = tokenizer.vocab_size
    return out
