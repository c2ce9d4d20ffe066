"""The Thinker language model: decoder stack plus LM head, with chunked prefill and one-token decode."""

from __future__ import annotations

import torch
from torch import nn

from .audio.encoder import AudioEncoder
from .cache import InferenceCache
from .config import AudioConfig, ConfigError, TextConfig
from .decoder import Decoder, DecoderOutput
from .modules.moe import load_balancing_loss


class InputError(ValueError):
    """Input a user gave that the model cannot take (empty, out of vocabulary, too long)."""


class ThinkerLM(nn.Module):
    """Hybrid-attention MoE causal LM; parameter names follow the Hugging Face `model.*` / `lm_head` layout."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._compiled_step = None
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def new_cache(self, batch_size: int = 1, max_len: int | None = None) -> InferenceCache:
        """An empty inference state for `batch_size` rows and up to `max_len` tokens (default 8192, or the context)."""
        max_len = max_len or min(self.config.max_position_embeddings, 8192)
        if max_len > self.config.max_position_embeddings:
            raise InputError(f"cache of {max_len} tokens exceeds the context limit of "
                             f"{self.config.max_position_embeddings} tokens")
        return InferenceCache(self.config, batch_size, max_len, self.dtype, self.device)

    def check_input_ids(self, input_ids: torch.Tensor, cache: InferenceCache | None = None) -> None:
        """Raise InputError for an empty prompt, ids outside the vocabulary, or a sequence beyond the context."""
        if input_ids.dim() != 2:
            raise InputError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] == 0:
            raise InputError("empty prompt: input_ids has no tokens")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise InputError(f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size})")
        total = input_ids.shape[1] + (cache.length if cache is not None else 0)
        if total > self.config.max_position_embeddings:
            raise InputError(f"{total} tokens exceed the context limit of {self.config.max_position_embeddings}")

    def forward(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                cache: InferenceCache | None = None, logits_to_keep: int = 0, output_hidden_states: bool = False,
                output_router_logits: bool = False,
                deepstack: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, DecoderOutput]:
        """Logits (B, S or logits_to_keep, V) and the decoder output for S new tokens."""
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            self.check_input_ids(input_ids, cache)
        elif inputs_embeds.shape[1] == 0:
            raise InputError("empty prompt: inputs_embeds has no positions")
        out = self.model(input_ids, inputs_embeds, position_ids, attention_mask, cache, output_hidden_states,
                         output_router_logits, deepstack)
        h = out.last_hidden_state
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        return self.lm_head(h), out

    def prefill(self, input_ids: torch.Tensor, cache: InferenceCache, attention_mask: torch.Tensor | None = None,
                chunk_size: int = 2048, position_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, deepstack: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Feed a prompt in chunks of `chunk_size`; return the last position's logits (B, V).

        With `inputs_embeds` (B, S, H) (e.g. audio already placed at its placeholders) those are fed instead of
        the embeddings of `input_ids`, which still name the tokens for validation."""
        self.check_input_ids(input_ids, cache)
        s = input_ids.shape[1]
        logits = None
        for i in range(0, s, chunk_size):
            sl = slice(i, min(s, i + chunk_size))
            pos = None if position_ids is None else position_ids[..., sl]
            mask = None if attention_mask is None else attention_mask[:, sl]
            feed = {"input_ids": input_ids[:, sl]} if inputs_embeds is None else {"inputs_embeds": inputs_embeds[:, sl]}
            ds = None if deepstack is None else [d[:, sl] for d in deepstack]
            logits, _ = self(**feed, position_ids=pos, attention_mask=mask, cache=cache, logits_to_keep=1,
                             deepstack=ds)
        return logits[:, -1]

    def decode(self, tokens: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """One step: tokens (B,) -> next-token logits (B, V); uses the compiled step after compile_decode()."""
        tokens = tokens.view(-1, 1)
        if cache.length + 1 > self.config.max_position_embeddings:
            raise InputError(f"generation reached the context limit of {self.config.max_position_embeddings} tokens")
        if self._compiled_step is None:
            return self.lm_head(self.model(tokens, cache=cache).last_hidden_state)[:, -1]
        slot = cache.reserve(torch.ones_like(tokens, dtype=torch.bool))
        logits = self._compiled_step(tokens, cache, torch.tensor([slot], device=tokens.device))
        cache.next_pos.add_(1)
        return logits

    def static_step(self, tokens: torch.Tensor, cache: InferenceCache, slot: torch.Tensor) -> torch.Tensor:
        """The decode step with step-independent shapes (what compile_decode compiles): (B, 1) -> logits (B, V)."""
        return self.lm_head(self.model.step(tokens, cache, slot))[:, -1]

    def compile_decode(self, **options) -> "ThinkerLM":
        """Compile the one-token decode step with torch.compile (gpt-fast style); the first steps pay the compile."""
        self._compiled_step = torch.compile(self.static_step, dynamic=False, **options)
        return self

    def aux_loss(self, out: DecoderOutput, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Router load-balancing loss from a forward run with output_router_logits=True."""
        if not out.router_logits:
            raise ValueError("run forward with output_router_logits=True first")
        return load_balancing_loss(out.router_logits, self.config.num_experts, self.config.num_experts_per_tok,
                                   attention_mask)


class Thinker(nn.Module):
    """The Thinker: its language model plus encoders whose outputs replace placeholder tokens (audio so far)."""

    def __init__(self, text: TextConfig, audio: AudioConfig | None = None, audio_token_id: int | None = None):
        super().__init__()
        self.lm = ThinkerLM(text)
        self.audio_tower = AudioEncoder(audio) if audio is not None else None
        self.audio_token_id = audio_token_id
        if audio is not None and audio.output_dim != text.hidden_size:
            raise ConfigError(f"audio output_dim {audio.output_dim} != thinker hidden_size {text.hidden_size}")

    def embed(self, input_ids: torch.Tensor, audio_features: torch.Tensor | None = None,
              audio_lengths: torch.Tensor | list[int] | None = None) -> torch.Tensor:
        """Token embeddings (B, S, H) with each audio's encoder tokens written over its audio placeholders in order."""
        self.lm.check_input_ids(input_ids)
        x = self.lm.model.embed_tokens(input_ids)
        slots = input_ids == self.audio_token_id if self.audio_token_id is not None else None
        n_slots = int(slots.sum()) if slots is not None else 0
        if audio_features is None:
            if n_slots:
                raise InputError(f"prompt has {n_slots} audio placeholder tokens but no audio was given")
            return x
        if self.audio_tower is None:
            raise InputError("this checkpoint has no audio encoder")
        tokens = self.audio_tower(audio_features, audio_lengths)  # (N_audio_tokens, H)
        if tokens.shape[0] != n_slots:
            raise InputError(f"audio encodes to {tokens.shape[0]} tokens but the prompt has {n_slots} audio "
                             "placeholders; build prompts with the processor so the counts agree")
        return x.masked_scatter(slots.unsqueeze(-1), tokens.to(x.dtype))

    def forward(self, input_ids: torch.Tensor, audio_features: torch.Tensor | None = None,
                audio_lengths: torch.Tensor | list[int] | None = None, **kwargs) -> tuple[torch.Tensor, DecoderOutput]:
        """Logits and decoder output; kwargs (position_ids, attention_mask, cache, ...) go to ThinkerLM.forward."""
        cache = kwargs.get("cache")
        if cache is not None:
            self.lm.check_input_ids(input_ids, cache)
        return self.lm(inputs_embeds=self.embed(input_ids, audio_features, audio_lengths), **kwargs)
