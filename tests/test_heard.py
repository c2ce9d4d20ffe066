"""Joint CTC/attention decoding of the heard line: CTC prefix scores against brute force and torch's CTC loss, the
line's state machine, and the rule inside generation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from omnistream.engine.heard import HeardLine, LineEnds, PrefixScore, ctc_log_probs
from omnistream.processor import Tokenizer
from omnistream.thinker import InputError
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
