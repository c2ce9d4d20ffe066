"""Joint CTC/attention decoding of the heard line: CTC prefix scores against brute force and torch's CTC loss, the
line's state machine, and the rule inside generation."""

from __future__ import annotations

import itertools
import math
import zlib

import pytest
import torch
import torch.nn.functional as F

from omnistream.config import tiny_qwen35
from omnistream.engine.heard import HeardLine, LineEnds, PrefixScore, ctc_log_probs
from omnistream.processor import Tokenizer
from omnistream.thinker import InputError, ThinkerLM
from tokenizer_fixture import build_tokenizer


def _log_probs(t: int, v: int, seed: int = 0) -> torch.Tensor:
    noise = torch.randn(t, v, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return noise.mul(2).log_softmax(-1)


def _collapse(path, blank):
    out = []
    for j, p in enumerate(path):
        if p != blank and (j == 0 or p != path[j - 1]):
            out.append(p)
    return out


def _brute(x: torch.Tensor, blank: int, prefix: list[int], whole: bool) -> float:
    """log of the summed probability of every alignment whose reading starts with (whole: equals) `prefix`."""
    t, v = x.shape
    kept = [x[range(t), list(path)].sum() for path in itertools.product(range(v), repeat=t)
            if (_collapse(path, blank) == prefix if whole else _collapse(path, blank)[:len(prefix)] == prefix)]
    return float(torch.logsumexp(torch.stack(kept), 0)) if kept else -math.inf


def test_prefix_scores_equal_the_sum_over_alignments():
    x = _log_probs(5, 3)
    for prefix in ([], [1], [1, 1], [1, 2], [2, 1, 2]):
        score = PrefixScore(x, blank=0)
        for token in prefix:
            score.push(token)
        assert score.score == pytest.approx(_brute(x, 0, prefix, whole=False), abs=1e-9)
        assert score.complete() == pytest.approx(_brute(x, 0, prefix, whole=True), abs=1e-9)
        grown = score.extended(2)
        assert score.prefix == prefix and grown.prefix == prefix + [2]  # the original stays as it was
        assert grown.score == pytest.approx(_brute(x, 0, prefix + [2], whole=False), abs=1e-9)
        for c, got in zip((1, 2), score.scores([1, 2]).tolist()):
            assert got + score.score == pytest.approx(_brute(x, 0, prefix + [c], whole=False), abs=1e-9)


def test_a_complete_line_scores_minus_the_ctc_loss():
    x = _log_probs(40, 12, seed=1)
    target = [3, 5, 5, 7, 1, 9, 3]
    loss = F.ctc_loss(x[:, None], torch.tensor([target]), torch.tensor([40]), torch.tensor([7]), blank=0,
                      reduction="sum")
    score = PrefixScore(x, blank=0)
    assert score.complete(tuple(target)) == pytest.approx(-float(loss), rel=1e-6)
    for token in target[:4]:
        score.push(token)
    assert score.complete(tuple(target[4:])) == pytest.approx(-float(loss), rel=1e-6)
    with pytest.raises(InputError, match=r"\(T, V\)"):
        PrefixScore(x[:0], blank=0)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tok")
    build_tokenizer(directory)
    return Tokenizer(directory)


class _Vocab:
    """A toy vocabulary: enough to see which tokens end a line and with what text."""

    pieces = ["what", "?", "?\n", "\n", "\n\n", " \n", "what\nb", "\ufffd\n"]
    vocab_size = len(pieces)

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces[i] for i in ids)

    def encode(self, text):
        return [self.pieces.index(text)] if text else []


def test_line_ends_carry_their_text_before_the_break(tokenizer):
    ends = LineEnds(_Vocab(), stops=[0])
    assert ends.text == {0: (), 2: (1,), 3: (), 4: (), 5: (), 6: (0,)}  # "what" is a stop here; "\ufffd\n" is no text
    assert ends.breaks == {3}
    assert ends.ids.tolist() == [0, 2, 3, 4, 5, 6]
    real = LineEnds(tokenizer, [tokenizer.token_to_id("<|im_end|>")])
    newline = tokenizer.encode("\n")
    assert len(newline) == 1 and newline[0] in real.breaks and real.text[newline[0]] == ()
    assert tokenizer.encode("fox")[0] not in real.text


def _line(tokenizer, weight, x=None, think=True):
    eos = tokenizer.token_to_id("<|im_end|>")
    ends = LineEnds(tokenizer, [eos])
    x = _log_probs(12, tokenizer.vocab_size, seed=2) if x is None else x
    think_open = tokenizer.token_to_id("<think>") if think else None
    return HeardLine(x, tokenizer.pad_id, think_open, ends, weight=weight, top_k=4), ends


def test_the_line_starts_after_the_think_tag_and_a_break_and_ends_at_a_line_end(tokenizer):
    line, ends = _line(tokenizer, 0.7)
    logits = torch.randn(1, tokenizer.vocab_size)
    assert torch.equal(line(logits), logits) and not line.active
    line.push(tokenizer.token_to_id("<think>"))
    assert torch.equal(line(logits), logits)
    line.push(tokenizer.encode("\n")[0])
    assert line.active
    out = line(logits)
    kept = torch.isfinite(out[0]).nonzero().flatten().tolist()
    assert 1 <= len(kept) <= 5  # the top 4 and the likeliest line end
    assert set(logits[0].topk(4).indices.tolist()) <= set(kept)
    assert any(k in ends.text for k in kept)
    line.push(tokenizer.encode("fox")[0])
    assert line.prefix.prefix == tokenizer.encode("fox")[:1]
    line.push(tokenizer.encode("\n")[0])
    assert not line.active and torch.equal(line(logits), logits)
    other, _ = _line(tokenizer, 0.7)
    other.push(tokenizer.token_to_id("<think>"))
    other.push(tokenizer.encode("fox")[0])  # no break after the tag: no heard line
    assert not other.active


def test_a_transcript_ends_the_reply_with_its_line_and_a_think_line_does_not(tokenizer):
    eos, newline, fox = tokenizer.token_to_id("<|im_end|>"), tokenizer.encode("\n")[0], tokenizer.encode("fox")[0]
    logits = torch.randn(1, tokenizer.vocab_size)
    transcript, _ = _line(tokenizer, 0.7, think=False)
    transcript.push(fox)
    transcript.push(newline)  # the line ends with a break: the stop comes next, whatever the LM says
    out = transcript(logits)
    assert int(out.argmax()) == eos and int(torch.isfinite(out).sum()) == 1
    transcript.push(eos)
    assert torch.equal(transcript(logits), logits)
    stopped, _ = _line(tokenizer, 0.7, think=False)
    stopped.push(eos)  # ended by the stop itself: nothing more to force
    assert torch.equal(stopped(logits), logits)
    think, _ = _line(tokenizer, 0.7)
    for token in (tokenizer.token_to_id("<think>"), newline, fox, newline):
        think.push(token)
    assert torch.equal(think(logits), logits)  # the think block goes on after its heard line


def test_the_clip_outvotes_the_lm_on_a_word_it_does_not_say(tokenizer):
    v, blank = tokenizer.vocab_size, tokenizer.pad_id
    said, other = tokenizer.encode("fox")[0], tokenizer.encode("dog")[0]
    x = torch.full((6, v), -30.0)
    x[:, blank] = 0.0
    x[1:3, said] = 0.0  # the clip says "fox"
    x = x.log_softmax(-1)
    logits = torch.full((1, v), -5.0)
    logits[0, other], logits[0, said] = 3.0, 1.0  # the LM would write "dog"
    for weight, expected in ((0.0, other), (0.7, said)):
        line, ends = _line(tokenizer, weight, x, think=False)
        assert line.active
        assert int(line(logits).argmax()) == expected
    line, ends = _line(tokenizer, 0.7, x, think=False)
    line.push(said)
    eos = tokenizer.token_to_id("<|im_end|>")
    logits[0, eos] = 0.0
    assert int(line(logits).argmax()) in ends.text  # all it says is written: the line ends
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        _line(tokenizer, 1.5)


def test_ctc_log_probs_are_a_distribution_over_the_table():
    tokens, table = torch.randn(7, 16), torch.randn(30, 16)
    lp = ctc_log_probs(tokens, table)
    assert lp.shape == (7, 30)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(7))
    assert torch.equal(lp.argmax(-1), (F.normalize(tokens, dim=-1) @ F.normalize(table, dim=-1).T).argmax(-1))


class _Histories:
    """A stand-in inference cache whose rows are the token histories they have decoded."""

    def __init__(self, rows, max_len):
        self.h, self.max_len, self.length = list(rows), max_len, 0

    def rows(self, idx):
        out = _Histories([self.h[i] for i in idx.tolist()], self.max_len)
        out.length = self.length
        return out

    def reorder_(self, idx):
        self.h = [self.h[i] for i in idx.tolist()]


class _HistoryLM:
    """A stand-in LM whose next-token logits are a fixed random function of the history."""

    def __init__(self, vocab_size):
        self.v = vocab_size

    def logits(self, history):
        seed = zlib.crc32(repr(tuple(history)).encode())
        return 3 * torch.randn(self.v, generator=torch.Generator().manual_seed(seed))

    def decode(self, tokens, cache):
        cache.h = [h + (int(t),) for h, t in zip(cache.h, tokens)]
        cache.length += 1
        return torch.stack([self.logits(h) for h in cache.h])


def _exhaustive(line, lm, room):
    """The best (joint score, line) over every line the candidate rule allows, of at most room - 1 words."""
    best = (-math.inf, None)

    def visit(history, prefix, score):
        nonlocal best
        tokens, joint = line._candidates(lm.logits(history), prefix)
        for t, j in zip(tokens, joint.tolist()):
            if j == -math.inf:
                continue
            if t in line.ends.text:
                best = max(best, (score + j, list(history) + [t]))
            elif len(history) < room - 1:
                visit(history + (t,), prefix.extended(t), score + j)

    visit((), line.prefix, 0.0)
    return best


def _searched(line, lm, room):
    line.attach(lm, _Histories([()], room + 1))
    line(lm.logits(())[None])
    return line.plan


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_wide_beam_finds_the_best_line_and_a_beam_of_one_is_greedy(tokenizer, seed):
    lm, room = _HistoryLM(tokenizer.vocab_size), 4
    x = _log_probs(10, tokenizer.vocab_size, seed=10 + seed)
    eos = tokenizer.token_to_id("<|im_end|>")
    ends = LineEnds(tokenizer, [eos])
    make = lambda beam: HeardLine(x, tokenizer.pad_id, None, ends, weight=0.6, top_k=3, beam=beam)  # noqa: E731
    score, best = _exhaustive(make(1), lm, room)
    assert best is not None and best[-1] in ends.text
    assert _searched(make(1000), lm, room) == best
    greedy, history, long = make(1), (), 16
    while greedy.active and len(history) < long:
        token = int(greedy(lm.logits(history)[None]).argmax())
        greedy.push(token)
        history += (token,)
    one = make(1)  # a beam of one is never searched (the rule is greedy step by step); searching it gives the same
    one.attach(lm, _Histories([()], long + 1))
    assert one._search(lm.logits(())[None]) == (list(history) if history[-1] in ends.text else [])
    narrow = make(2)
    plan = _searched(narrow, lm, long)
    assert plan and plan[-1] in ends.text
    for token in list(plan):  # the rule hands out the searched line, token by token, then lets the reply go on
        out = narrow(torch.randn(1, tokenizer.vocab_size))
        assert int(out.argmax()) == token and int(torch.isfinite(out).sum()) == 1
        narrow.push(token)
    assert not narrow.active and narrow.prefix.prefix == plan[:-1]


def test_cache_rows_follow_their_parents():
    torch.manual_seed(0)
    model = ThinkerLM(tiny_qwen35()).eval()
    assert {"linear_attention", "full_attention"} <= set(model.config.layer_types)
    ids = torch.randint(0, model.config.vocab_size, (2, 11))
    cache = model.new_cache(2, 32)
    model.prefill(ids, cache)
    step = torch.tensor([5, 9])
    copy = cache.rows(torch.tensor([0, 1]))
    expected = model.decode(step, copy)  # (2, V)
    assert copy.length == cache.length + 1 and not torch.equal(copy.valid, cache.valid)  # the copy is its own
    picked = cache.rows(torch.tensor([1, 1, 0]))
    torch.testing.assert_close(model.decode(step[[1, 1, 0]], picked), expected[[1, 1, 0]], rtol=0, atol=1e-6)
    cache.reorder_(torch.tensor([1, 0]))
    torch.testing.assert_close(model.decode(step[[1, 0]], cache), expected[[1, 0]], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="3 rows"):
        cache.reorder_(torch.tensor([0, 1, 1]))
