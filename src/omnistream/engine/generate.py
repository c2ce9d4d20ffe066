"""Autoregressive generation over an explicit inference cache: batched generate and a streaming iterator."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..thinker import InputError, ThinkerLM
from ..sampling import SamplingParams, sample
from .heard import HeardLine


@dataclass
class GenerationResult:
    """New tokens per row (B, N, padded with the first stop token or 0 after a row stops) and their counts."""

    tokens: torch.Tensor
    lengths: list[int]


def stream(model: ThinkerLM, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
           max_new_tokens: int = 256, sampling: SamplingParams | None = None, stop_tokens: Sequence[int] = (),
           prefill_chunk: int = 2048, cache=None, inputs_embeds: torch.Tensor | None = None,
           deepstack: list[torch.Tensor] | None = None,
           position_ids: torch.Tensor | None = None, guide: HeardLine | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token of every row (B,) as soon as it is chosen; stops when all rows hit a stop token.

    Multimodal prompts pass what Thinker.embed returns: `inputs_embeds` (B, S, H) replacing the token embeddings
    and `deepstack`, with their 3-row `position_ids`; decoding continues from the prompt's largest position.
    `guide` (one prompt only) rescores the logits of the line that writes down what the prompt's audio says
    (engine.heard: joint CTC/attention decoding)."""
    sampling = sampling or SamplingParams()
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    model.check_input_ids(input_ids)
    b, s = input_ids.shape
    if guide is not None and b != 1:
        raise InputError(f"heard-line guidance decodes one prompt at a time, got a batch of {b}")
    total = s + max_new_tokens
    limit = model.config.max_position_embeddings
    if s >= limit:
        raise InputError(f"prompt of {s} tokens leaves no room in the context limit of {limit} tokens")
    total = min(total, limit)
    if cache is None:
        cache = model.new_cache(b, total)
    else:
        cache.reset()
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(sampling.seed)
    seen = None
    if sampling.repetition_penalty != 1.0:
        real = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
        counts = torch.zeros(b, model.config.vocab_size, dtype=torch.long, device=model.device)
        seen = counts.scatter_add_(1, input_ids, real) > 0  # (B, V) tokens of the prompt, padding excluded
    stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=model.device)
    done = torch.zeros(b, dtype=torch.bool, device=model.device)
    with torch.no_grad():
        logits = model.prefill(input_ids, cache, attention_mask, prefill_chunk, position_ids, inputs_embeds, deepstack)
        if guide is not None:
            guide.attach(model, cache)
        for step in range(total - s):
            if guide is not None:
                logits = guide(logits)
            token = sample(logits, sampling, seen, generator)
            if guide is not None:
                guide.push(int(token[0]))
            if stops.numel():
                token = torch.where(done, stops[0], token)
                done = done | torch.isin(token, stops)
            yield token
            if bool(done.all()) or step == total - s - 1:
                return
            if seen is not None:
                seen.scatter_(1, token[:, None], True)
            logits = model.decode(token, cache)


def generate(model: ThinkerLM, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             max_new_tokens: int = 256, sampling: SamplingParams | None = None, stop_tokens: Sequence[int] = (),
             prefill_chunk: int = 2048, cache=None, inputs_embeds: torch.Tensor | None = None,
             deepstack: list[torch.Tensor] | None = None, position_ids: torch.Tensor | None = None,
             guide: HeardLine | None = None) -> GenerationResult:
    """Run `stream` to the end; a row's length counts its stop token."""
    steps = list(stream(model, input_ids, attention_mask, max_new_tokens, sampling, stop_tokens, prefill_chunk,
                        cache, inputs_embeds, deepstack, position_ids, guide))
    tokens = torch.stack(steps, dim=1)  # (B, N)
    lengths = []
    for row in tokens.tolist():
        hit = [i for i, t in enumerate(row) if t in set(stop_tokens)]
        lengths.append(hit[0] + 1 if hit else len(row))
    return GenerationResult(tokens, lengths)
