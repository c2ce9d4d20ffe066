"""ARIA (Adaptive Rate Interleave Alignment): the training packer and the online Talker scheduler.

The rule, for an item of T text units and S speech units: after any prefix holding t text and s speech
units, s·T ≤ S·t. The packer builds that stream for training; the schedulers decide, frame by frame during
generation, whether the Talker speaks, takes the next Thinker token, or waits for it. See shared/ARIA.md.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence


class AriaError(ValueError):
    """An ARIA input or call that breaks the specification (empty text, bad ratio, call out of order)."""


class Kind(enum.Enum):
    """What a unit of the interleaved stream carries."""

    TEXT = "text"
    SPEECH = "speech"


@dataclass(frozen=True)
class Unit:
    """One unit of the stream: a text token or a speech frame (its codes, or its codebook-0 code)."""

    kind: Kind
    value: Any


# ---- packing for training -------------------------------------------------------------------------------


def pack(text_units: Sequence, speech_units: Sequence) -> list[Unit]:
    """Interleave one item's text and speech, each speech unit as early as s·T ≤ S·t allows."""
    T, S = len(text_units), len(speech_units)
    if T == 0:
        raise AriaError(f"an ARIA item needs at least one text unit; got 0 text and {S} speech units")
    stream: list[Unit] = []
    t = s = 0
    while t < T or s < S:
        if s < S and (s + 1) * T <= S * t:
            stream.append(Unit(Kind.SPEECH, speech_units[s]))
            s += 1
        else:
            stream.append(Unit(Kind.TEXT, text_units[t]))
            t += 1
    return stream


def unpack(stream: Sequence[Unit]) -> tuple[list, list]:
    """The text units and the speech units of a stream, each in stream order."""
    return ([u.value for u in stream if u.kind is Kind.TEXT], [u.value for u in stream if u.kind is Kind.SPEECH])


def is_valid(stream: Sequence[Unit], T: int, S: int) -> bool:
    """Whether the stream holds exactly T text and S speech units and every prefix keeps s·T ≤ S·t."""
    if T <= 0:
        return False
    t = s = 0
    for unit in stream:
        if unit.kind is Kind.TEXT:
            t += 1
        else:
            s += 1
            if s * T > S * t:
                return False
    return t == T and s == S


@dataclass
class TrainingExample:
    """Teacher-forced Talker inputs, the codebook-0 target of each position, and where the loss counts."""

    inputs: list[Unit]
    targets: list[int]
    loss_mask: list[bool]


def training_targets(stream: Sequence[Unit], text_slot: int, speech_eos: int | None = None,
                     ignore_index: int = -100) -> TrainingExample:
    """Each position predicts the next unit: its speech code, `text_slot` before text, `speech_eos` at the end.

    Text tokens are inputs only (never a target). Without `speech_eos` the last position has no target
    (`ignore_index`, masked out). Speech values are codebook-0 ints or frames whose first entry is codebook 0.
    """
    reserved = {text_slot} | ({speech_eos} if speech_eos is not None else set())
    targets: list[int] = []
    for unit in stream[1:]:
        if unit.kind is Kind.TEXT:
            targets.append(text_slot)
            continue
        code = unit.value if isinstance(unit.value, int) else unit.value[0]
        if code in reserved:
            raise AriaError(f"speech code {code} collides with a reserved codebook-0 id (text-slot {text_slot}, "
                            f"speech-EOS {speech_eos})")
        targets.append(int(code))
    mask = [True] * len(targets)
    if stream:
        targets.append(ignore_index if speech_eos is None else speech_eos)
        mask.append(speech_eos is not None)
    return TrainingExample(list(stream), targets, mask)


# ---- ratio estimators -----------------------------------------------------------------------------------


class RateEstimator(Protocol):
    """An upper estimate R̂ of speech frames per text unit, given t text units consumed and s frames spoken."""

    def upper_ratio(self, t_seen: int, s_done: int) -> float:
        """R̂ for the next decision; must be ≥ 0."""
        ...


def _check_ratio(name: str, value: float) -> None:
    if not value >= 0 or math.isinf(value):  # also refuses NaN
        raise AriaError(f"{name} must be a finite ratio ≥ 0 frames per text token, got {value}")


@dataclass(frozen=True)
class PriorRate:
    """A fixed per-language prior of frames per text token (`default` for languages not in the table)."""

    frames_per_text_token: Mapping[str, float]
    default: float
    language: str | None = None

    def __post_init__(self):
        _check_ratio("PriorRate default", self.default)
        for lang, ratio in self.frames_per_text_token.items():
            _check_ratio(f"PriorRate[{lang!r}]", ratio)

    def upper_ratio(self, t_seen: int, s_done: int) -> float:
        """The prior for this language, whatever has been seen."""
        return self.frames_per_text_token.get(self.language, self.default)

    def for_language(self, language: str) -> "PriorRate":
        """The same table, answering for `language`."""
        return PriorRate(self.frames_per_text_token, self.default, language)


@dataclass(frozen=True)
class ObservedRate:
    """`prior` until `warmup` text units are consumed, then the observed s/t plus `slack`, capped by the prior.

    After warm-up R̂ = min(prior, (s/t)·(1 + slack)): never above the prior, and never below the observed s/t
    while that is within the prior (so the stream already emitted stays within the estimate, and speech can
    still grow by the slack when the Talker is faster than it has been so far).
    """

    prior: RateEstimator
    warmup: int = 8
    slack: float = 0.25

    def __post_init__(self):
        if self.warmup < 1:
            raise AriaError(f"ObservedRate warmup must be ≥ 1 text unit, got {self.warmup}")
        _check_ratio("ObservedRate slack", self.slack)

    def upper_ratio(self, t_seen: int, s_done: int) -> float:
        """The prior before warm-up, the slackened observed ratio (at most the prior) after."""
        prior = self.prior.upper_ratio(t_seen, s_done)
        if t_seen < self.warmup:
            return prior
        return min(prior, s_done / t_seen * (1 + self.slack))


# ---- online scheduling ----------------------------------------------------------------------------------


class Act(enum.Enum):
    """What the engine does this step."""

    SPEECH = "speech"  # run MTP + Code2Wav on this codebook-0 code
    TEXT = "text"      # append this Thinker token's projected embedding to the Talker stream (ARIA)
    PAD = "pad"        # add tts_pad to this speech step (fixed-rate mode, text exhausted)
    WAIT = "wait"      # the next text token has not arrived: push it (or end the text) and ask again
    DONE = "done"      # speech is finished


@dataclass(frozen=True)
class Action:
    """The scheduler's decision: its kind, the code or token it carries, and whether a proposal was overridden."""

    act: Act
    value: Any = None
    forced: bool = False


@dataclass(frozen=True)
class Allowed:
    """Which codebook-0 choices the Talker may sample now (for masking its logits)."""

    speech: bool
    text_slot: bool
    eos: bool


class _TextFeed:
    """Thinker tokens as they arrive, how many have been consumed, and whether the Thinker has finished."""

    def __init__(self):
        self.received: list = []
        self.t = 0
        self.ended = False

    def push(self, token: Any) -> None:
        if self.ended:
            raise AriaError(f"text token {token!r} pushed after end_text(); the Thinker's text is already closed")
        self.received.append(token)

    def end(self) -> None:
        if self.ended:
            raise AriaError("end_text() called twice")
        self.ended = True

    @property
    def pending(self) -> bool:
        return self.t < len(self.received)

    @property
    def closed(self) -> bool:
        return self.ended and not self.pending

    def take(self) -> Any:
        token = self.received[self.t]
        self.t += 1
        return token


class _TextFed:
    """The Thinker-facing half shared by both schedulers: text arrives with push_text, closes with end_text."""

    _text: _TextFeed

    @property
    def t(self) -> int:
        """Text units consumed so far."""
        return self._text.t

    def push_text(self, token: Any) -> None:
        """A text token from the Thinker, in order."""
        self._text.push(token)

    def end_text(self) -> None:
        """The Thinker has produced its last text token (its EOS already pushed, if it is to be spoken)."""
        self._text.end()


class AriaScheduler(_TextFed):
    """Online ARIA guard between Thinker and Talker: speech only while s + 1 ≤ R̂·t, waits for slow text.

    Drive it with `push_text` / `end_text` as the Thinker produces text, and per Talker step
    `next_action(codebook0_id)` (optionally masking logits with `allowed()` first). Once the text is
    closed and consumed, text-slot is masked out and speech runs until `speech_eos` or the frame cap
    ceil(max_ratio·T) + margin, where max_ratio defaults to the estimator's R̂ at that moment.
    """

    def __init__(self, estimator: RateEstimator, text_slot: int, speech_eos: int, max_ratio: float | None = None,
                 margin: int = 4):
        if text_slot == speech_eos:
            raise AriaError(f"text-slot and speech-EOS need distinct codebook-0 ids, both are {text_slot}")
        if max_ratio is not None:
            _check_ratio("AriaScheduler max_ratio", max_ratio)
        if margin < 0:
            raise AriaError(f"AriaScheduler margin must be ≥ 0 frames, got {margin}")
        self.estimator, self.text_slot, self.speech_eos = estimator, text_slot, speech_eos
        self.max_ratio, self.margin = max_ratio, margin
        self._text = _TextFeed()
        self.s = 0
        self.stalls = 0
        self.forced = 0
        self.stream: list[Unit] = []
        self.cap: int | None = None
        self.done = False

    def _ratio(self) -> float:
        r = self.estimator.upper_ratio(self.t, self.s)
        _check_ratio(f"{type(self.estimator).__name__}.upper_ratio({self.t}, {self.s})", r)
        return r

    def _speech_ok(self) -> bool:
        if self._text.closed:
            return self.s < self._frame_cap()
        return self.t > 0 and self.s + 1 <= self._ratio() * self.t

    def _frame_cap(self) -> int:
        if self.cap is None:
            ratio = self._ratio() if self.max_ratio is None else self.max_ratio
            self.cap = math.ceil(ratio * self.t) + self.margin
        return self.cap

    def _finished(self) -> bool:
        if not self.done and self._text.closed and (self.t == 0 or self.s >= self._frame_cap()):
            self.done = True
        return self.done

    def allowed(self) -> Allowed:
        """The codebook-0 choices the guard would accept as proposed right now."""
        if self._finished():
            return Allowed(False, False, False)
        closed = self._text.closed
        return Allowed(self._speech_ok(), not closed, closed)

    def next_action(self, proposal: int) -> Action:
        """Enforce the guard on the Talker's codebook-0 `proposal` (a speech code, text-slot or speech-EOS)."""
        if self._finished():
            return Action(Act.DONE)
        if self._text.closed:
            if proposal == self.speech_eos:
                self.done = True
                return Action(Act.DONE)
            if proposal == self.text_slot:
                raise AriaError("text-slot proposed after the text was closed and consumed; mask it with allowed()")
            return self._speak(proposal)
        wants_speech = proposal not in (self.text_slot, self.speech_eos)
        if wants_speech and self._speech_ok():
            return self._speak(proposal)
        forced = proposal != self.text_slot
        if not self._text.pending:
            self.stalls += 1
            return Action(Act.WAIT, forced=forced)
        self.forced += forced
        token = self._text.take()
        self.stream.append(Unit(Kind.TEXT, token))
        return Action(Act.TEXT, token, forced)

    def _speak(self, code: int) -> Action:
        self.s += 1
        self.stream.append(Unit(Kind.SPEECH, code))
        return Action(Act.SPEECH, code)


@dataclass
class FixedRateScheduler(_TextFed):
    """Qwen3-Omni fixed-rate mode: every speech step adds one text token, or tts_pad once text is exhausted.

    Per Talker step: `next_input()` says which text token to sum in (TEXT), PAD, WAIT for the Thinker, or
    DONE; then `record(codebook0_id)` with the sampled code (or `speech_eos`). Speech stops at EOS (at any
    step, as such checkpoints do) or, once text is exhausted, at the cap ceil(max_ratio·T) + margin frames.
    """

    speech_eos: int
    max_ratio: float = 8.0
    margin: int = 4
    s: int = field(default=0, init=False)
    stalls: int = field(default=0, init=False)
    done: bool = field(default=False, init=False)
    inputs: list[Action] = field(default_factory=list, init=False)
    _text: _TextFeed = field(default_factory=_TextFeed, init=False, repr=False)
    _awaiting: bool = field(default=False, init=False, repr=False)

    def __post_init__(self):
        _check_ratio("FixedRateScheduler max_ratio", self.max_ratio)
        if self.margin < 0:
            raise AriaError(f"FixedRateScheduler margin must be ≥ 0 frames, got {self.margin}")

    def next_input(self) -> Action:
        """What to add to this speech step's input: TEXT(token), PAD, WAIT (Thinker behind) or DONE."""
        if self._awaiting:
            raise AriaError("next_input() called twice; record() the Talker's frame for the previous step first")
        if self._text.closed and self.s >= math.ceil(self.max_ratio * self.t) + self.margin:
            self.done = True
        if self.done:
            return Action(Act.DONE)
        if self._text.pending:
            action = Action(Act.TEXT, self._text.take())
        elif self._text.ended:
            action = Action(Act.PAD)
        else:
            self.stalls += 1
            return Action(Act.WAIT)
        self._awaiting = True
        self.inputs.append(action)
        return action

    def record(self, code: int) -> None:
        """The Talker's codebook-0 output for the step just prepared: a speech code, or `speech_eos`."""
        if not self._awaiting:
            raise AriaError("record() without a step prepared by next_input()")
        self._awaiting = False
        if code == self.speech_eos:
            self.done = True
        else:
            self.s += 1
