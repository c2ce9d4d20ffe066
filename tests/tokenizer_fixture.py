"""A tiny Qwen-style byte-level BPE tokenizer trained on the spot, for tests that need tokenizer.json."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# Qwen layout: the learned vocabulary first, then the added tokens; the think tags are added but not special
# (so decoding keeps them), as in the Qwen3 / Qwen3.5 tokenizer_config.json.
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_start|>", "<|audio_end|>", "<|audio_pad|>"]
ADDED = ["<think>", "</think>"]
# what a speaking model's tokenizer adds: vision markers and the Talker's tts markers
OMNI_EXTRA = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|tts_pad|>", "<|tts_bos|>",
              "<|tts_eos|>")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today? I am fine, thank you.",
    "A streaming model listens, sees, reads, thinks and speaks.",
    "The weather is nice, so we went for a walk in the park.",
    "Please answer the question in one short sentence.",
    "你好，世界！今天天气很好。",
    "我们一起去公园散步吧。",
    "这是一个流式的全模态模型，它可以听、看、读、想和说。",
    "请用一句话回答这个问题。",
]


def build_tokenizer(directory: str | Path, vocab_size: int = 320, extra: tuple[str, ...] = ()) -> Tokenizer:
    """Train a byte-level BPE of at most `vocab_size` ids (added tokens included); write tokenizer.json + config.

    `extra` special tokens come after the standard ones (e.g. the vision and tts markers)."""
    special = SPECIAL + list(extra)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    n_added = len(special) + len(ADDED)
    if vocab_size < len(alphabet) + n_added:
        raise ValueError(f"vocab_size {vocab_size} is below the byte alphabet ({len(alphabet)}) plus "
                         f"{n_added} added tokens")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - n_added, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in ADDED])
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    decoder = {str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                         "single_word": False, "special": t in special} for t in special + ADDED}
    config = {"added_tokens_decoder": decoder, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "model_max_length": 4096, "tokenizer_class": "Qwen2Tokenizer"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    assert tok.get_vocab_size() <= vocab_size
    return tok


def build_omni_tokenizer(directory: str | Path, vocab_size: int):
    """build_tokenizer with OMNI_EXTRA and one id per role word; the omnistream Tokenizer that reads it."""
    from omnistream.processor import Tokenizer as OmniTokenizer

    backend = build_tokenizer(directory, vocab_size, OMNI_EXTRA)
    backend.add_tokens(["system", "user", "assistant"])
    backend.save(str(Path(directory) / "tokenizer.json"))
    return OmniTokenizer(directory)
