"""Joint CTC/attention decoding of what the Thinker heard: the audio encoder's own CTC reading guides the line of a
reply that writes down a clip's words (Watanabe et al. 2017, "Hybrid CTC/Attention Architecture for End-to-End
Speech Recognition"; one-pass beam search over the line).

AuT pretraining teaches the audio encoder a CTC reading in the LM's own token space (train/aut_stage.py: cosine
similarity to the input-embedding table x CTC_SCALE, the pad id as the blank), and S1 / S2 keep that loss, so every
audio token the Thinker reads is also a distribution over the words it says. The LM, reading those tokens, can
still write a word the audio does not say ("after thirty-one" as "after thirteen"); the encoder's reading alone
drops short words. Joint decoding takes the LM's top-k next tokens and scores each by

    (1 - w) * log p_LM(token) + w * (log psi(prefix + token) - log psi(prefix))

where psi is the CTC prefix probability of the line written so far (every alignment of the clip whose reading starts
with it); a token that ends the line scores the CTC probability of the whole line instead. Outside the line the LM's
logits pass unchanged. The choice is greedy, token by token; with a beam of more hypotheses (HEARD_BEAM is 1: 4
gained nothing on dev questions), the line is searched when it starts, each hypothesis on its own copy of the
decoder's cache, to its end by the sum of those scores, which only falls as a line grows, so the search stops once
an ended line beats every live one; the rule then hands out that line's tokens. The line is a transcript (a
transcribe reply, from its first token; the reply ends with it), or the first line of a think block (`<think>` then
a line break), where the demo model writes a spoken question as heard before working on it. `Heard` holds the weight
w and the beam (a checkpoint's config: thinker_config.ctc_heard_weight, ctc_heard_beam) and builds one `HeardLine`
rule per prompt; generate.stream and SpeechSession apply it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..thinker import InputError

if TYPE_CHECKING:
    from ..processor import Tokenizer
    from ..thinker import Thinker

CTC_SCALE = 20.0  # cosine-similarity logit scale of the CTC classifier (AuT pretraining trains with it)
HEARD_WEIGHT = 0.7  # w: chosen on a dev split of spoken questions (0 / 0.3 / 0.5 / 0.7 / 0.9)
TOP_K = 8  # LM candidates rescored per step
HEARD_BEAM = 1  # hypotheses the beam search of a heard line keeps (1: greedy; 4 gained nothing on dev questions)
NEG = -math.inf


def ctc_log_probs(tokens: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """CTC log-probabilities (T, V) of audio tokens (T, H) over the vocabulary of an embedding table (V, H)."""
    unit = F.normalize(table.float(), dim=-1)
    return F.log_softmax(CTC_SCALE * F.normalize(tokens.float(), dim=-1) @ unit.T, dim=-1)


def _check(weight: float, beam: int) -> None:
    """Refuse a CTC weight outside [0, 1] or a beam of no hypothesis."""
    if not 0.0 <= weight <= 1.0:
        raise InputError(f"the CTC weight must lie in [0, 1], got {weight}")
    if beam < 1:
        raise InputError(f"the heard line's beam must hold at least 1 hypothesis, got {beam}")


def _scan(start: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """The recursion r[t] = logaddexp(r[t-1], start[t]) + step[t] (r[-1] = -inf) solved at once (T, K)."""
    total = step.cumsum(0)  # (T, K)
    return total + torch.logcumsumexp(start + step - total, dim=0)


def _extend(x: torch.Tensor, blank: int, r_n: torch.Tensor, r_b: torch.Tensor, last: int | None,
            tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A prefix's state (r_n, r_b: (T,) log-probs of it ending at frame t on its last label / on a blank; `last`
    its last label, None when empty) extended by each candidate c (K,): log psi(prefix + c) (K,), r_n, r_b (T, K)."""
    x_c = x[:, tokens]  # (T, K)
    either = torch.logaddexp(r_n, r_b)[:, None].expand_as(x_c)
    repeat = tokens == (-1 if last is None else last)  # (K,): a repeated label needs a blank between
    before = torch.where(repeat[None, :], r_b[:, None], either)  # (T, K): c may follow at t + 1
    first = x_c[:1] if last is None else torch.full_like(x_c[:1], NEG)  # (1, K)
    enter = torch.cat([first, before[:-1] + x_c[1:]])  # (T, K): c's first frame is t
    new_n = _scan(enter - x_c, x_c)  # c held from its first frame to t
    new_b = _scan(torch.cat([torch.full_like(new_n[:1], NEG), new_n[:-1]]),
                  x[:, blank, None].expand_as(x_c))  # then blanks up to t
    return torch.logsumexp(enter, dim=0), new_n, new_b


class PrefixScore:
    """CTC prefix scores of one clip for a label prefix that grows one token at a time (Watanabe et al. 2017)."""

    def __init__(self, log_probs: torch.Tensor, blank: int):
        if log_probs.ndim != 2 or log_probs.shape[0] == 0:
            raise InputError(f"CTC log-probabilities must be (T, V) with T >= 1, got {tuple(log_probs.shape)}")
        self.x = log_probs.double()  # (T, V)
        self.blank = blank
        self.prefix: list[int] = []
        self.r_n = torch.full((self.x.shape[0],), NEG, dtype=torch.float64)
        self.r_b = self.x[:, blank].cumsum(0)
        self.score = 0.0  # log psi(prefix); the empty prefix is certain

    @property
    def _last(self) -> int | None:
        return self.prefix[-1] if self.prefix else None

    def scores(self, tokens: list[int]) -> torch.Tensor:
        """log psi(prefix + c) - log psi(prefix) of each candidate token c (K,)."""
        return _extend(self.x, self.blank, self.r_n, self.r_b, self._last, torch.tensor(tokens))[0] - self.score

    def extended(self, token: int) -> PrefixScore:
        """A new prefix state, this one's with `token` appended (the clip's log-probs shared); this one stays."""
        out = object.__new__(PrefixScore)
        out.__dict__.update(self.__dict__)
        out.prefix = list(self.prefix)
        out.push(token)
        return out

    def push(self, token: int) -> None:
        """Append `token` to the prefix."""
        psi, r_n, r_b = _extend(self.x, self.blank, self.r_n, self.r_b, self._last, torch.tensor([token]))
        self.prefix.append(token)
        self.r_n, self.r_b, self.score = r_n[:, 0], r_b[:, 0], float(psi[0])

    def complete(self, tail: tuple[int, ...] = ()) -> float:
        """log P_CTC(the clip says exactly prefix + tail): the prefix and tail as the whole transcript."""
        r_n, r_b, last = self.r_n, self.r_b, self._last
        for token in tail:
            _, r_n, r_b = _extend(self.x, self.blank, r_n, r_b, last, torch.tensor([token]))
            r_n, r_b, last = r_n[:, 0], r_b[:, 0], token
        return float(torch.logaddexp(r_n[-1], r_b[-1]))


class LineEnds:
    """The tokens that end a written line, each with the ids of its text before the break ("?\\n" -> the ids of
    "?"); the stop tokens end it with no text."""

    def __init__(self, tokenizer: Tokenizer, stops: list[int] | tuple[int, ...] = ()):
        self.text: dict[int, tuple[int, ...]] = {}
        self.breaks: set[int] = set()  # tokens that are exactly one line break
        for i in range(tokenizer.vocab_size):
            s = tokenizer.decode([i], skip_special_tokens=False)
            if "\n" not in s or "\ufffd" in s:
                continue
            head = s.split("\n", 1)[0]
            self.text[i] = tuple(tokenizer.encode(head)) if head.strip() else ()
            if s == "\n":
                self.breaks.add(i)
        self.stops = [int(stop) for stop in stops]  # end the reply, and so the line
        for stop in self.stops:
            self.text[stop] = ()
        self.ids = torch.tensor(sorted(self.text))  # (E,)


class HeardLine:
    """A logits rule for one prompt: inside its line, the LM's top-k tokens and its likeliest line end are
    rescored with the clip's CTC prefix scores (all others -inf); elsewhere logits pass unchanged. Once `attach`ed
    to the decoder and its cache, a beam of `beam` hypotheses searches the whole line when it starts, and the rule
    then hands out the best line's tokens in turn."""

    def __init__(self, log_probs: torch.Tensor, blank: int, think_open: int | None, line_ends: LineEnds,
                 weight: float = HEARD_WEIGHT, top_k: int = TOP_K, beam: int = HEARD_BEAM):
        _check(weight, beam)
        self.prefix = PrefixScore(log_probs, blank)
        self.think_open, self.ends = think_open, line_ends
        self.weight, self.top_k, self.beam = weight, top_k, beam
        self.state = "line" if think_open is None else "before"  # before -> opened -> line (-> closing) -> done
        self.decoder = None  # (lm, cache) the beam search decodes with
        self.plan: list[int] | None = None  # the searched line's tokens still to come (None: not searched)

    @property
    def active(self) -> bool:
        """True while the next token belongs to the heard line."""
        return self.state == "line"

    def attach(self, lm, cache) -> None:
        """Let the beam search decode copies of `cache` (the prompt's state, one row) with `lm`."""
        self.decoder = (lm, cache)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Joint scores (1, V) in place of the LM's next-token logits (1, V) while in the line."""
        if self.state == "closing":  # a transcript is one line: the reply ends with it
            out = torch.full_like(logits, NEG)
            out[:, self.ends.stops[0]] = 0.0
            return out
        if not self.active or self.weight == 0.0:
            return logits
        if logits.shape[0] != 1:
            raise InputError(f"heard-line guidance decodes one prompt at a time, got a batch of {logits.shape[0]}")
        if self.plan is None and self.beam > 1 and self.decoder is not None:
            self.plan = self._search(logits)
        out = torch.full_like(logits[0], NEG, dtype=torch.float64)  # (V,)
        if self.plan:
            out[self.plan[0]] = 0.0
        else:
            tokens, joint = self._candidates(logits[0], self.prefix)
            out[tokens] = joint
        return out[None].to(logits.dtype)

    def _candidates(self, logits: torch.Tensor, prefix: PrefixScore) -> tuple[list[int], torch.Tensor]:
        """The candidate next tokens of a hypothesis with CTC state `prefix` and LM logits (V,), and their joint
        scores (K,): the LM's top-k words by prefix gain, its top-k line ends and its likeliest one by the whole
        line's CTC probability."""
        lm = F.log_softmax(logits.float(), dim=-1).double()  # (V,)
        top = lm.topk(min(self.top_k, lm.numel())).indices.tolist()
        end = int(self.ends.ids[lm[self.ends.ids].argmax()]) if len(self.ends.ids) else None
        words = [t for t in top if t not in self.ends.text and t != prefix.blank]  # the blank is no word
        finals = sorted({t for t in top if t in self.ends.text} | ({end} if end is not None else set()))
        ctc = prefix.scores(words).tolist() if words else []
        ctc += [prefix.complete(self.ends.text[t]) - prefix.score for t in finals]
        tokens = words + finals
        w = self.weight
        return tokens, (1 - w) * lm[tokens] + w * torch.tensor(ctc, dtype=torch.float64)

    def _search(self, logits: torch.Tensor) -> list[int]:
        """The line (its tokens and its end) of the best joint score a beam search finds from next-token logits
        (1, V), decoding on copies of the attached cache; empty when no line ends within the cache's room."""
        lm, cache = self.decoder
        room = cache.max_len - cache.length - 1
        if room < 1:
            return []
        work = cache.rows(torch.zeros(self.beam, dtype=torch.long, device=logits.device))
        live = [([], self.prefix, 0.0)]  # (tokens, CTC state, joint score) of each hypothesis
        best: tuple[float, list[int]] | None = None  # the best ended line: (joint score, tokens with the end)
        for _ in range(room):
            grown = []
            for i, (_, prefix, score) in enumerate(live):
                cands, joint = self._candidates(logits[i], prefix)
                grown += [(score + j, i, t) for t, j in zip(cands, joint.tolist()) if j > NEG]
            grown.sort(key=lambda g: -g[0])
            kept = []
            for total, i, t in grown[:self.beam]:
                if t not in self.ends.text:
                    kept.append((total, i, t))
                elif best is None or total > best[0]:
                    best = (total, live[i][0] + [t])
            if not kept or (best is not None and best[0] >= kept[0][0]):  # every score only falls as a line grows
                break
            live = [(live[i][0] + [t], live[i][1].extended(t), total) for total, i, t in kept]
            fill = self.beam - len(kept)  # rows beyond the live ones repeat the last; their logits go unread
            work.reorder_(torch.tensor([i for _, i, _ in kept] + [kept[-1][1]] * fill, device=logits.device))
            logits = lm.decode(torch.tensor([t for _, _, t in kept] + [kept[-1][2]] * fill, device=logits.device),
                               work)  # (beam, V)
        return [] if best is None else best[1]

    def push(self, token: int) -> None:
        """Follow the reply: `token` was chosen."""
        if self.state == "before":
            self.state = "opened" if token == self.think_open else "before"
        elif self.state == "opened":
            self.state = "line" if token in self.ends.breaks else "done"
        elif self.state == "line":
            if self.plan:
                self.plan = self.plan[1:] if token == self.plan[0] else []
            if token in self.ends.text:
                transcript_goes_on = self.think_open is None and bool(self.ends.stops) and token not in self.ends.stops
                self.state = "closing" if transcript_goes_on else "done"
            else:
                self.prefix.push(token)
        elif self.state == "closing":
            self.state = "done"


@dataclass
class Heard:
    """Joint decoding of heard lines at CTC weight `weight` (blank: the CTC blank id, the tokenizer's pad)."""

    weight: float
    blank: int
    line_ends: LineEnds = field(repr=False)
    top_k: int = TOP_K
    beam: int = HEARD_BEAM

    def __post_init__(self):
        _check(self.weight, self.beam)

    @classmethod
    def from_checkpoint(cls, directory: str | Path, tokenizer: Tokenizer, stops) -> Heard | None:
        """The checkpoint's joint decoding (thinker_config.ctc_heard_weight, ctc_blank_token_id, optionally
        ctc_heard_beam), or None when its config names none (a reference checkpoint: its encoder has no CTC
        reading)."""
        config = json.loads((Path(directory) / "config.json").read_text()).get("thinker_config", {})
        weight, blank = config.get("ctc_heard_weight"), config.get("ctc_blank_token_id")
        if weight is None or blank is None:
            return None
        beam = int(config.get("ctc_heard_beam", HEARD_BEAM))
        return cls(float(weight), int(blank), LineEnds(tokenizer, stops), beam=beam)

    def guide(self, thinker: Thinker, input_ids: torch.Tensor, embeds: torch.Tensor, think_open: int | None,
              transcript: bool = False) -> HeardLine | None:
        """The rule for one prompt (1, S) whose embeddings (1, S, H) hold exactly one audio's tokens, or None
        when it holds no audio or several; `transcript`: the reply is the transcript, else the think block's
        first line."""
        if input_ids.shape[0] != 1:
            raise InputError(f"heard-line guidance decodes one prompt at a time, got a batch of {input_ids.shape[0]}")
        slots = input_ids[0] == thinker.audio_token_id  # (S,)
        runs = int(slots[0]) + int((slots[1:] & ~slots[:-1]).sum())
        if runs != 1 or self.weight == 0.0:
            return None
        log_probs = ctc_log_probs(embeds[0][slots], thinker.lm.model.embed_tokens.weight.detach())  # (T, V)
        return HeardLine(log_probs, self.blank, None if transcript else think_open, self.line_ends, self.weight,
                         self.top_k, self.beam)
