"""The Thinker language model: decoder stack plus LM head, with chunked prefill and one-token decode."""

from __future__ import annotations

import torch
from torch import nn

from .audio.encoder import AudioEncoder
from .cache import InferenceCache
from .config import AudioConfig, ConfigError, TextConfig, VisionConfig
from .decoder import Decoder, DecoderOutput
from .modules.moe import load_balancing_loss
from .vision.encoder import VisionEncoder


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
    """The Thinker: its language model plus the audio and vision encoders whose tokens replace placeholders."""

    def __init__(self, text: TextConfig, audio: AudioConfig | None = None, audio_token_id: int | None = None,
                 vision: VisionConfig | None = None, image_token_id: int | None = None,
                 video_token_id: int | None = None):
        super().__init__()
        self.lm = ThinkerLM(text)
        self.audio_tower = AudioEncoder(audio) if audio is not None else None
        self.visual = VisionEncoder(vision) if vision is not None else None
        self.audio_token_id, self.image_token_id, self.video_token_id = audio_token_id, image_token_id, video_token_id
        for name, cfg, width in (("audio output_dim", audio, audio and audio.output_dim),
                                 ("vision out_hidden_size", vision, vision and vision.out_hidden_size)):
            if cfg is not None and width != text.hidden_size:
                raise ConfigError(f"{name} {width} != thinker hidden_size {text.hidden_size}")

    def _slots(self, input_ids: torch.Tensor, token_id: int | None, name: str, given: bool, tower) -> torch.Tensor:
        """Placeholder mask (B, S) for one modality, checking that inputs and encoder exist when it is used."""
        slots = input_ids == token_id if token_id is not None else torch.zeros_like(input_ids, dtype=torch.bool)
        if bool(slots.any()) and not given:
            raise InputError(f"prompt has {int(slots.sum())} {name} placeholder tokens but no {name} was given")
        if given and tower is None:
            raise InputError(f"this checkpoint has no {name} encoder")
        return slots

    @staticmethod
    def _place(x: torch.Tensor, slots: torch.Tensor, tokens: torch.Tensor, name: str) -> torch.Tensor:
        """Write encoder tokens (n, H) over the n placeholder positions of x (B, S, H), in order."""
        if tokens.shape[0] != int(slots.sum()):
            raise InputError(f"{name} encodes to {tokens.shape[0]} tokens but the prompt has {int(slots.sum())} "
                             f"{name} placeholders; build prompts with the processor so the counts agree")
        return x.masked_scatter(slots.unsqueeze(-1), tokens.to(x.dtype))

    def embed(self, input_ids: torch.Tensor, audio_features: torch.Tensor | None = None,
              audio_lengths: torch.Tensor | list[int] | None = None, pixel_values: torch.Tensor | None = None,
              image_grid_thw: torch.Tensor | None = None, pixel_values_videos: torch.Tensor | None = None,
              video_grid_thw: torch.Tensor | None = None, spelled: torch.Tensor | None = None,
              ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Embeddings (B, S, H) with encoder tokens at their placeholders, and the deepstack additions (or None);
        `spelled` (B, S, K) ids (-1 rows: none) puts the mean embedding of a row's ids at its position (training)."""
        self.lm.check_input_ids(input_ids)
        x = self.lm.model.embed_tokens(input_ids)
        if spelled is not None:
            at = spelled[..., :1] >= 0  # (B, S, 1)
            x = torch.where(at, self.lm.model.embed_tokens(spelled.clamp(min=0)).mean(-2), x)
        audio = self._slots(input_ids, self.audio_token_id, "audio", audio_features is not None, self.audio_tower)
        if audio_features is not None:
            x = self._place(x, audio, self.audio_tower(audio_features, audio_lengths), "audio")
        deepstack = None
        for name, token_id, pixels, grid in (("image", self.image_token_id, pixel_values, image_grid_thw),
                                             ("video", self.video_token_id, pixel_values_videos, video_grid_thw)):
            slots = self._slots(input_ids, token_id, name, pixels is not None, self.visual)
            if pixels is None:
                continue
            tokens, extra = self.visual(pixels.to(x.dtype), grid)
            x = self._place(x, slots, tokens, name)
            if deepstack is None:
                deepstack = [torch.zeros_like(x) for _ in extra]
            deepstack = [self._place(d, slots, e, name) for d, e in zip(deepstack, extra)]
        return x, deepstack

    def forward(self, input_ids: torch.Tensor, audio_features: torch.Tensor | None = None,
                audio_lengths: torch.Tensor | list[int] | None = None, pixel_values: torch.Tensor | None = None,
                image_grid_thw: torch.Tensor | None = None, pixel_values_videos: torch.Tensor | None = None,
                video_grid_thw: torch.Tensor | None = None, spelled: torch.Tensor | None = None,
                **kwargs) -> tuple[torch.Tensor, DecoderOutput]:
        """Logits and decoder output; kwargs (position_ids, attention_mask, cache, ...) go to ThinkerLM.forward."""
        cache = kwargs.get("cache")
        if cache is not None:
            self.lm.check_input_ids(input_ids, cache)
        embeds, deepstack = self.embed(input_ids, audio_features, audio_lengths, pixel_values, image_grid_thw,
                                       pixel_values_videos, video_grid_thw, spelled)
        return self.lm(inputs_embeds=embeds, deepstack=deepstack, **kwargs)
