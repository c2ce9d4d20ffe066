"""ARIA: the packer keeps every prefix within the item's ratio; the online schedulers never outrun the text."""

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnistream.aria import (Act, Action, Allowed, AriaError, AriaScheduler, FixedRateScheduler, Kind, ObservedRate,
                             PriorRate, Unit, is_valid, pack, training_targets, unpack)

SETTINGS = settings(max_examples=200, deadline=None)
TEXT_SLOT, EOS = 4096, 4097

items = st.tuples(st.integers(1, 40), st.integers(0, 200)).map(
    lambda ts: ([("t", i) for i in range(ts[0])], [("s", i) for i in range(ts[1])]))


def kinds(stream):
    return [u.kind for u in stream]


# ---- packer ---------------------------------------------------------------------------------------------


@SETTINGS
@given(items)
def test_pack_keeps_every_prefix_within_the_ratio(item):
    text, speech = item
    T, S = len(text), len(speech)
    stream = pack(text, speech)
    t = s = 0
    for unit in stream:
        t += unit.kind is Kind.TEXT
        s += unit.kind is Kind.SPEECH
        assert s * T <= S * t
    assert (t, s) == (T, S) and s * T == S * t
    assert is_valid(stream, T, S)
    assert stream[0].kind is Kind.TEXT


@SETTINGS
@given(items)
def test_pack_is_monotone_lossless_and_bijective(item):
    text, speech = item
    stream = pack(text, speech)
    assert len(stream) == len(text) + len(speech)
    assert unpack(stream) == (text, speech)
    for kind in (Kind.TEXT, Kind.SPEECH):
        order = [u.value[1] for u in stream if u.kind is kind]
        assert order == sorted(order) and len(set(order)) == len(order)
    other = pack([object() for _ in text], [object() for _ in speech])
    assert kinds(other) == kinds(stream)  # the shape depends on (T, S) only


@SETTINGS
@given(items)
def test_pack_spreads_speech_evenly(item):
    text, speech = item
    T, S = len(text), len(speech)
    runs, run = [], None
    for unit in pack(text, speech):
        if unit.kind is Kind.TEXT:
            if run is not None:
                runs.append(run)
            run = 0
        else:
            run += 1
    runs.append(run)
    assert runs == [S * t // T - S * (t - 1) // T for t in range(1, T + 1)]
    assert max(runs) - min(runs) <= 1


@SETTINGS
@given(items)
def test_pack_places_speech_as_early_as_allowed(item):
    text, speech = item
    T, S = len(text), len(speech)
    stream = pack(text, speech)
    for i in range(1, len(stream)):
        if stream[i].kind is Kind.SPEECH and stream[i - 1].kind is Kind.TEXT:
            moved = stream[:i - 1] + [stream[i], stream[i - 1]] + stream[i + 1:]
            assert not is_valid(moved, T, S)


@SETTINGS
@given(items, st.randoms(use_true_random=False))
def test_pack_dominates_every_valid_stream(item, rng):
    text, speech = item
    T, S = len(text), len(speech)
    t = s = 0
    walk = []
    while t < T or s < S:
        speech_ok = s < S and (s + 1) * T <= S * t
        if speech_ok and (t == T or rng.random() < 0.5):
            walk.append(Unit(Kind.SPEECH, speech[s]))
            s += 1
        else:
            walk.append(Unit(Kind.TEXT, text[t]))
            t += 1
    assert is_valid(walk, T, S)
    greedy = pack(text, speech)
    for n in range(len(walk) + 1):
        assert sum(u.kind is Kind.SPEECH for u in walk[:n]) <= sum(u.kind is Kind.SPEECH for u in greedy[:n])


def test_pack_examples():
    assert kinds(pack("ab", [1, 2, 3])) == [Kind.TEXT, Kind.SPEECH, Kind.TEXT, Kind.SPEECH, Kind.SPEECH]
    assert kinds(pack("abc", [])) == [Kind.TEXT] * 3
    assert kinds(pack("abc", [9])) == [Kind.TEXT] * 3 + [Kind.SPEECH]


def test_pack_refuses_an_item_without_text():
    with pytest.raises(AriaError, match="at least one text unit"):
        pack([], [1, 2])


def test_is_valid_rejects_wrong_shapes():
    stream = pack("ab", [1, 2])
    assert is_valid(stream, 2, 2)
    assert not is_valid(stream, 2, 3) and not is_valid(stream, 3, 2) and not is_valid([], 0, 0)
    assert not is_valid([Unit(Kind.SPEECH, 1), Unit(Kind.TEXT, "a")], 1, 1)


# ---- training targets -----------------------------------------------------------------------------------


@SETTINGS
@given(items, st.booleans(), st.booleans())
def test_training_targets_predict_the_next_unit(item, with_eos, frames):
    text, speech = item
    codes = [i % 4096 for i in range(len(speech))]
    values = [(c, 7, 8) for c in codes] if frames else codes
    stream = pack(text, values)
    example = training_targets(stream, TEXT_SLOT, EOS if with_eos else None)
    assert example.inputs == stream
    assert len(example.targets) == len(example.loss_mask) == len(stream)
    for i, nxt in enumerate(stream[1:]):
        expected = TEXT_SLOT if nxt.kind is Kind.TEXT else (nxt.value[0] if frames else nxt.value)
        assert example.targets[i] == expected and example.loss_mask[i]
    speech_targets = [tgt for tgt in example.targets[:-1] if tgt != TEXT_SLOT]
    assert speech_targets == codes
    assert example.targets[-1] == (EOS if with_eos else -100) and example.loss_mask[-1] == with_eos
    assert TEXT_SLOT not in [tgt for tgt, u in zip(example.targets, stream[1:]) if u.kind is Kind.SPEECH]


def test_training_targets_refuse_a_code_colliding_with_the_marker():
    with pytest.raises(AriaError, match="collides"):
        training_targets(pack("a", [TEXT_SLOT]), TEXT_SLOT, EOS)


# ---- estimators -----------------------------------------------------------------------------------------


def test_prior_rate_per_language():
    prior = PriorRate({"en": 3.0, "zh": 6.0}, default=5.0)
    assert prior.upper_ratio(1, 0) == 5.0
    assert prior.for_language("zh").upper_ratio(10, 3) == 6.0
    assert prior.for_language("fr").upper_ratio(10, 3) == 5.0


@SETTINGS
@given(st.floats(0, 10), st.integers(1, 20), st.floats(0, 1), st.integers(1, 100), st.integers(0, 1000))
def test_observed_rate_stays_between_the_observation_and_the_prior(r, warmup, slack, t, s):
    est = ObservedRate(PriorRate({}, r), warmup, slack)
    got = est.upper_ratio(t, s)
    assert got <= r
    if t < warmup:
        assert got == r
    elif s / t <= r:
        assert got >= s / t


@pytest.mark.parametrize("make", [
    lambda: PriorRate({}, -1.0),
    lambda: PriorRate({"en": -0.5}, 3.0),
    lambda: PriorRate({}, float("nan")),
    lambda: ObservedRate(PriorRate({}, 3.0), slack=-0.1),
    lambda: ObservedRate(PriorRate({}, 3.0), warmup=0),
    lambda: AriaScheduler(PriorRate({}, 3.0), TEXT_SLOT, EOS, max_ratio=-2.0),
    lambda: AriaScheduler(PriorRate({}, 3.0), TEXT_SLOT, TEXT_SLOT),
    lambda: FixedRateScheduler(EOS, max_ratio=-1.0),
])
def test_bad_ratios_and_ids_are_refused(make):
    with pytest.raises(AriaError):
        make()


def test_an_estimator_returning_a_negative_ratio_is_refused():
    class Broken:
        def upper_ratio(self, t_seen, s_done):
            return -1.0

    sched = AriaScheduler(Broken(), TEXT_SLOT, EOS)
    sched.push_text("a")
    assert sched.next_action(TEXT_SLOT).act is Act.TEXT
    with pytest.raises(AriaError, match="upper_ratio"):
        sched.next_action(5)


# ---- online scheduler -----------------------------------------------------------------------------------


def _arrivals():
    """Tokens the Thinker produces before each Talker step: bursty, slow, stalled then burst, or random."""
    bursty = st.lists(st.sampled_from([0, 0, 0, 5, 9]), max_size=30)
    slow = st.integers(1, 6).map(lambda k: [1 if i % k == 0 else 0 for i in range(120)])
    stalled = st.tuples(st.integers(0, 40), st.integers(1, 50)).map(lambda zb: [0] * zb[0] + [zb[1]])
    upfront = st.just([1000])
    return st.one_of(bursty, slow, stalled, upfront, st.lists(st.integers(0, 4), max_size=60))


def _talker(name, rng):
    """A Talker policy proposing codebook-0 ids; text-slot is masked out once allowed() forbids it."""
    def propose(sched, step):
        allowed = sched.allowed()
        code = step % 1000
        if name == "speech":
            return code
        if name == "text":
            return TEXT_SLOT if allowed.text_slot else EOS
        if name == "eos":
            return EOS
        if name == "greedy":
            return code if allowed.speech else (TEXT_SLOT if allowed.text_slot else EOS)
        choices = [code, EOS] + ([TEXT_SLOT] if allowed.text_slot else [])
        return rng.choice(choices)
    return propose


def _estimators():
    prior = st.one_of(st.floats(0, 6), st.integers(0, 6)).map(lambda r: PriorRate({}, r))
    observed = st.tuples(prior, st.integers(1, 10), st.floats(0, 0.5)).map(lambda p: ObservedRate(*p))
    return st.one_of(prior, observed)


class _Thinker:
    """Feeds T text tokens to a scheduler in bursts (`arrivals[step]`, then 1 a step); ends `end_delay` steps later."""

    def __init__(self, sched, T, arrivals, end_delay):
        self.sched, self.arrivals, self.end_delay = sched, arrivals, end_delay
        self.tokens = [f"tok{i}" for i in range(T)]
        self.pushed, self.ended, self.end_at = 0, False, None

    def step(self, step: int) -> None:
        burst = self.arrivals[step] if step < len(self.arrivals) else 1
        for _ in range(min(burst, len(self.tokens) - self.pushed)):
            self.sched.push_text(self.tokens[self.pushed])
            self.pushed += 1
        if self.pushed == len(self.tokens) and not self.ended:
            self.end_at = step + self.end_delay if self.end_at is None else self.end_at
            if step >= self.end_at:
                self.sched.end_text()
                self.ended = True


def _drive(sched, T, arrivals, end_delay, talker, max_steps):
    """Run Thinker arrivals and Talker proposals against the scheduler; return the actions and guard records."""
    thinker = _Thinker(sched, T, arrivals, end_delay)
    tokens = thinker.tokens
    actions, speech_records = [], []
    for step in range(max_steps):
        thinker.step(step)
        t, s, closed = sched.t, sched.s, sched.allowed().eos
        action = sched.next_action(talker(sched, step))
        actions.append(action)
        if action.act is Act.SPEECH:
            speech_records.append((t, s, closed))
        if action.act is Act.DONE:
            return tokens, actions, speech_records
    raise AssertionError(f"scheduler did not finish within {max_steps} steps")


@SETTINGS
@given(st.integers(1, 30), _arrivals(), st.integers(0, 10), _estimators(),
       st.sampled_from(["speech", "text", "eos", "greedy", "random"]), st.integers(0, 6),
       st.randoms(use_true_random=False))
def test_scheduler_never_outruns_the_text_and_terminates(T, arrivals, end_delay, est, policy, margin, rng):
    sched = AriaScheduler(est, TEXT_SLOT, EOS, margin=margin)
    r_max = est.prior.default if isinstance(est, ObservedRate) else est.default
    speech_bound = math.ceil(r_max * T) + margin
    max_steps = len(arrivals) + T + end_delay + T + speech_bound + 5
    tokens, actions, records = _drive(sched, T, arrivals, end_delay, _talker(policy, rng), max_steps)

    for t, s, closed in records:
        if closed:
            assert s + 1 <= sched.cap
        else:
            assert t > 0 and s + 1 <= est.upper_ratio(t, s) * t
    text, speech = unpack(sched.stream)
    assert text == tokens  # all text consumed, in order, nothing lost
    assert speech == [a.value for a in actions if a.act is Act.SPEECH]
    assert sched.stream[0].kind is Kind.TEXT
    assert len(speech) <= speech_bound
    assert sched.stalls == sum(a.act is Act.WAIT for a in actions)
    assert sched.done and sched.allowed() == Allowed(False, False, False)
    assert sched.next_action(5).act is Act.DONE
    if policy == "text":
        assert not any(a.forced for a in actions)
    if policy in ("speech", "eos"):
        assert sched.forced == sum(a.act is Act.TEXT for a in actions)


@SETTINGS
@given(items)
def test_scheduler_with_the_true_ratio_reproduces_the_packer(item):
    text, speech = item
    T, S = len(text), len(speech)
    sched = AriaScheduler(PriorRate({}, Fraction(S, T)), TEXT_SLOT, EOS, margin=0)
    for token in text:
        sched.push_text(token)
    sched.end_text()
    codes = iter(range(S))
    while True:
        allowed = sched.allowed()
        action = sched.next_action(next(codes) if allowed.speech else (TEXT_SLOT if allowed.text_slot else EOS))
        if action.act is Act.DONE:
            break
    assert sched.stream == pack(text, list(range(S)))
    assert sched.stalls == 0


def test_scheduler_waits_while_the_thinker_is_stalled():
    sched = AriaScheduler(PriorRate({}, 2.0), TEXT_SLOT, EOS)
    for _ in range(10):
        assert sched.next_action(7).act is Act.WAIT
    assert sched.stalls == 10
    sched.push_text("a")
    assert sched.next_action(7) == Action(Act.TEXT, "a", True)
    assert sched.next_action(7).act is Act.SPEECH
    assert sched.next_action(8).act is Act.SPEECH
    assert sched.next_action(9).act is Act.WAIT  # third frame would exceed 2 frames per text token
    assert sched.next_action(TEXT_SLOT).act is Act.WAIT
    assert sched.stalls == 12


def test_scheduler_finishes_on_text_end():
    sched = AriaScheduler(PriorRate({}, 2.0), TEXT_SLOT, EOS, margin=1)
    sched.push_text("a")
    sched.end_text()
    assert sched.allowed() == Allowed(False, True, False)
    assert sched.next_action(TEXT_SLOT).act is Act.TEXT
    assert sched.allowed() == Allowed(True, False, True)
    with pytest.raises(AriaError, match="text-slot"):
        sched.next_action(TEXT_SLOT)
    assert [sched.next_action(c).act for c in (1, 2, 3, 4)] == [Act.SPEECH] * 3 + [Act.DONE]  # cap 2·1 + 1
    assert sched.cap == 3


def test_scheduler_ends_at_speech_eos_and_with_no_text():
    sched = AriaScheduler(PriorRate({}, 2.0), TEXT_SLOT, EOS)
    sched.push_text("a")
    sched.end_text()
    assert sched.next_action(EOS) == Action(Act.TEXT, "a", True)  # EOS before the text is consumed is refused
    assert sched.next_action(EOS).act is Act.DONE
    empty = AriaScheduler(PriorRate({}, 2.0), TEXT_SLOT, EOS)
    empty.end_text()
    assert empty.next_action(3).act is Act.DONE and empty.stream == []


def test_text_after_end_is_refused():
    sched = AriaScheduler(PriorRate({}, 2.0), TEXT_SLOT, EOS)
    sched.end_text()
    with pytest.raises(AriaError, match="after end_text"):
        sched.push_text("late")
    with pytest.raises(AriaError, match="twice"):
        sched.end_text()


# ---- fixed-rate mode ------------------------------------------------------------------------------------


@SETTINGS
@given(st.integers(0, 30), _arrivals(), st.integers(0, 10), st.booleans(), st.integers(0, 5))
def test_fixed_rate_adds_one_text_per_frame_then_pads(T, arrivals, end_delay, runaway, margin):
    sched = FixedRateScheduler(EOS, max_ratio=2.0, margin=margin)
    thinker = _Thinker(sched, T, arrivals, end_delay)
    tokens, eos = thinker.tokens, 0
    max_steps = len(arrivals) + end_delay + 2 * T + math.ceil(2.0 * T) + margin + 5
    for step in range(max_steps):
        thinker.step(step)
        action = sched.next_input()
        if action.act is Act.DONE:
            break
        if action.act is not Act.WAIT:
            pads = sum(a.act is Act.PAD for a in sched.inputs)
            code = EOS if not runaway and pads >= 2 else step
            eos += code == EOS
            sched.record(code)
    else:
        raise AssertionError("fixed-rate scheduler did not finish")
    acts = [a.act for a in sched.inputs]
    assert [a.value for a in sched.inputs if a.act is Act.TEXT] == tokens
    assert acts == [Act.TEXT] * T + [Act.PAD] * (len(acts) - T)
    assert sched.s == len(acts) - eos
    if runaway:
        assert sched.s == max(T, math.ceil(2.0 * T) + margin)


def test_fixed_rate_waits_and_enforces_call_order():
    sched = FixedRateScheduler(EOS)
    assert sched.next_input().act is Act.WAIT and sched.stalls == 1
    with pytest.raises(AriaError, match="record"):
        sched.record(3)
    sched.push_text("a")
    assert sched.next_input() == Action(Act.TEXT, "a")
    with pytest.raises(AriaError, match="twice"):
        sched.next_input()
    sched.record(3)
    sched.end_text()
    assert sched.next_input().act is Act.PAD
    sched.record(EOS)
    assert sched.next_input().act is Act.DONE and sched.s == 1
    with pytest.raises(AriaError, match="after end_text"):
        sched.push_text("b")
