"""Evaluation metrics on the synthetic data's replies: WER/CER, spoken-question and image-question accuracy, and
caption / segment timing errors.

Text normalisation (the same on both sides of every comparison): NFKC, lower case, hyphens and punctuation become
spaces, and numbers become digits: English and Spanish number words ("forty-two", "cuarenta y dos", "veintiún"),
Chinese numerals ("四十二", "两") and digits all read as the same number, since the data writes numbers as words
(data/numbers.py) while a Whisper judge may write digits ("60 y 5" in Spanish is 65 too); British spellings of
the data's words read as American ones ("neighbour" = "neighbor"). Units are words for English and Spanish and
characters for Mandarin (whitespace dropped; a run of digits or of non-Chinese letters, such as an English word
the judge wrote, is one unit), so `error_rate` is a WER for en/es and a CER for zh.

Spoken questions (arithmetic, counting): an answer is right when it says the reference answer's numbers, in order:
every reply restates what was asked and ends on the result ("seventeen plus twenty-five is forty-two" says 17, 25,
42; "你说了三次苹果" only the count), so a right number after a garbled result ("... es igual a-nine") is not right.
Image questions: the answer must name the same thing as the reference answer: the same colour and shape kind
("what"), the same position ("where"), the same count (the last number, "how many"); the vocabulary is the
scene module's. Videos: lines "<t seconds> ..." (captions: one event each) and "<a seconds> to <b seconds>: ..."
(segments) are parsed into timed events and segments, matched one to one with the reference's (closest first),
and a segment is within tolerance when both its boundaries are within `tolerance` seconds.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field

from ..data import scenes

# ----------------------------------------------------------------------------------------------- numbers
_EN_ONES = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_EN_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
            "eighty": 80, "ninety": 90}
_ES_ONES = {w: i for i, w in enumerate(
    "cero uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece catorce quince dieciséis diecisiete "
    "dieciocho diecinueve veinte veintiuno veintidós veintitrés veinticuatro veinticinco veintiséis veintisiete "
    "veintiocho veintinueve".split())}
_ES_ONES.update({"un": 1, "una": 1, "veintiún": 21, "veintiun": 21, "veintiuna": 21, "dieciseis": 16,
                 "veintidos": 22, "veintitres": 23, "veintiseis": 26})
_ES_TENS = {"treinta": 30, "cuarenta": 40, "cincuenta": 50, "sesenta": 60, "setenta": 70, "ochenta": 80,
            "noventa": 90}
_ZH_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "兩": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8,
              "九": 9}
_SPELLING = {"neighbour": "neighbor", "neighbours": "neighbors", "colour": "color", "colours": "colors"}
_ZH_NUMERAL = re.compile("[零〇一二两兩三四五六七八九十百]+")


def _en_number(words: list[str], i: int) -> tuple[int, int] | None:
    """(value, words used) of an English number starting at words[i], or None."""
    w = words[i]
    nxt = words[i + 1] if i + 1 < len(words) else None
    if w in ("a", "one") and nxt == "hundred" or w == "hundred":
        used = 2 if w != "hundred" else 1
        rest = _en_number(words, i + used + 1) if words[i + used:i + used + 1] == ["and"] else None
        if rest is None and i + used < len(words):
            rest = _en_number(words, i + used)
            rest = rest if rest is not None and rest[0] < 100 else None
        elif rest is not None:
            used += 1
        return (100 + rest[0], used + rest[1]) if rest else (100, used)
    if w in _EN_TENS:
        if nxt in _EN_ONES and 0 < _EN_ONES[nxt] < 10:
            return _EN_TENS[w] + _EN_ONES[nxt], 2
        return _EN_TENS[w], 1
    if w in _EN_ONES:
        return _EN_ONES[w], 1
    return None


def _es_number(words: list[str], i: int) -> tuple[int, int] | None:
    """(value, words used) of a Spanish number starting at words[i], or None."""
    w = words[i]
    if w in ("cien", "ciento"):
        rest = _es_number(words, i + 1) if w == "ciento" and i + 1 < len(words) else None
        return (100 + rest[0], 1 + rest[1]) if rest and rest[0] < 100 else (100, 1)
    if w in _ES_TENS:
        if words[i + 1:i + 2] == ["y"] and i + 2 < len(words) and 0 < _ES_ONES.get(words[i + 2], 0) < 10:
            return _ES_TENS[w] + _ES_ONES[words[i + 2]], 3
        return _ES_TENS[w], 1
    if w in _ES_ONES:
        return _ES_ONES[w], 1
    return None


def chinese_number(text: str) -> int | None:
    """The value of a run of Chinese numerals ("四十二" 42, "十" 10, "一百零五" 105, "两" 2); digit-by-digit runs
    ("二零二五") read as their digits; None for an empty or malformed run."""
    if not text:
        return None
    if "十" not in text and "百" not in text:
        return int("".join(str(_ZH_DIGITS[c]) for c in text))
    total, digit = 0, None
    for c in text:
        if c == "百":
            total += (1 if digit is None else digit) * 100
            digit = None
        elif c == "十":
            total += (1 if digit is None else digit) * 10
            digit = None
        elif c in _ZH_DIGITS:
            digit = _ZH_DIGITS[c] if _ZH_DIGITS[c] or digit is None else digit
        else:
            return None
    return total + (digit or 0)


# ----------------------------------------------------------------------------------------------- normalisation
def _clean(text: str) -> str:
    """NFKC, lower case, punctuation and symbols (hyphens included) as spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)


def units(text: str, language: str) -> list[str]:
    """The comparison units of a text: words (en, es) or characters (zh), numbers as digits (see the docstring)."""
    text = _clean(text)
    if language == "zh":
        text = _ZH_NUMERAL.sub(lambda m: f" {chinese_number(m.group())} ", text)
        return re.findall(r"[^\W\d_\u3400-\u9fff\uf900-\ufaff]+|\d+|\S", text)
    words = [_SPELLING.get(w, w) for w in text.split()] if language == "en" else text.split()
    parse = _es_number if language == "es" else _en_number
    out, i = [], 0
    while i < len(words):
        found = parse(words, i)
        if found is None:
            out.append(words[i])
            i += 1
        else:
            out.append(str(found[0]))
            i += found[1]
    if language == "es":  # "60 y 5" (digits written around the word) is sesenta y cinco
        merged = []
        for u in out:
            if (len(merged) >= 2 and merged[-1] == "y" and u.isdigit() and 0 < int(u) < 10
                    and merged[-2].isdigit() and int(merged[-2]) in _ES_TENS.values()):
                merged[-2:] = [str(int(merged[-2]) + int(u))]
            else:
                merged.append(u)
        out = merged
    return out


def normalize(text: str, language: str) -> str:
    """The normalised text (units joined by spaces; by nothing for zh)."""
    return ("" if language == "zh" else " ").join(units(text, language))


def numbers_in(text: str, language: str) -> list[int]:
    """The numbers a text says, in order (words, numerals and digits alike)."""
    found = []
    for u in re.findall(r"\d+", " ".join(units(text, language)) if language != "zh"
                        else _ZH_NUMERAL.sub(lambda m: f" {chinese_number(m.group())} ", _clean(text))):
        found.append(int(u))
    return found


def edit_distance(hyp: list[str], ref: list[str]) -> int:
    """Levenshtein distance between two unit lists (substitutions, insertions, deletions all cost 1)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def error_counts(hypothesis: str, reference: str, language: str) -> tuple[int, int]:
    """(edits, reference units) of a hypothesis against a reference."""
    ref = units(reference, language)
    return edit_distance(units(hypothesis, language), ref), len(ref)


def error_rate(hypothesis: str, reference: str, language: str) -> float:
    """WER (en, es) or CER (zh) of one hypothesis: edits / reference units (an empty reference counts as one)."""
    edits, n = error_counts(hypothesis, reference, language)
    return edits / max(n, 1)


def corpus_error_rate(pairs) -> float:
    """Pooled WER/CER of (hypothesis, reference, language) triples: total edits / total reference units."""
    edits = total = 0
    for hyp, ref, lang in pairs:
        e, n = error_counts(hyp, ref, lang)
        edits, total = edits + e, total + n
    return edits / total if total else float("nan")


# ----------------------------------------------------------------------------------------------- questions
def answer_correct(answer: str, reference: str, language: str) -> bool:
    """Whether a spoken-question answer says the numbers of the reference answer, in order (and says some)."""
    expected = numbers_in(reference, language)
    return bool(expected) and numbers_in(answer, language) == expected


_COLUMN = {"en": 0, "es": 1, "zh": 2}


def _es_stem(word: str) -> str:
    """A Spanish colour or noun without its gender/number ending, so rojo/roja/rojos and círculo/círculos match."""
    return word[:-1] if word.endswith(("o", "a")) else word


def _pattern(word: str, language: str) -> re.Pattern:
    if language == "zh":
        return re.compile(re.escape(word))
    if language == "es":
        stem = _es_stem(word)
        return re.compile(rf"\b{re.escape(stem)}(?:[oa]s?|es|s)?\b" if stem != word else
                          rf"\b{re.escape(word)}(?:es|s)?\b")
    return re.compile(rf"\b{re.escape(word)}s?\b")


@dataclass
class Slots:
    """What an image answer names: colours, shape kinds, positions (sets) and numbers (in order)."""

    colours: set = field(default_factory=set)
    kinds: set = field(default_factory=set)
    positions: set = field(default_factory=set)
    numbers: list = field(default_factory=list)


def slots(text: str, language: str) -> Slots:
    """The colours, kinds, positions and numbers a scene answer names (longest phrases first, each used once)."""
    c = _COLUMN.get(language, 0)
    rest = unicodedata.normalize("NFKC", text).lower()
    rest = re.sub(r"\s+", " ", rest)
    out = Slots()
    vocab = [(words[c], "positions", cell) for cell, words in scenes._POSITIONS.items()]
    vocab += [(words[c], "colours", name) for name, words in scenes._COLOUR_WORDS.items()]
    vocab += [(words[c], "kinds", name) for name, words in scenes._KIND_WORDS.items()]
    for phrase, slot, name in sorted(vocab, key=lambda v: -len(v[0])):
        pattern = _pattern(phrase, language)
        if pattern.search(rest):
            getattr(out, slot).add(name if slot != "positions" else tuple(name))
            rest = pattern.sub(" | ", rest)
    out.numbers = numbers_in(rest, language)
    return out


def image_answer_correct(answer: str, reference: str, question: str, language: str) -> bool:
    """Whether an image answer names what the reference answer names, for the asked kind of question."""
    got, want = slots(answer, language), slots(reference, language)
    if question == "what":
        return got.colours == want.colours and got.kinds == want.kinds
    if question == "where":
        return got.positions == want.positions
    return bool(got.numbers) and bool(want.numbers) and got.numbers[-1] == want.numbers[-1]


# ----------------------------------------------------------------------------------------------- videos
_STAMP = re.compile(r"<\s*(\d+(?:\.\d+)?)\s*(?:seconds?|s|秒)?\s*>")
_LEAVE = ("leave", "left", "disappear", "desaparece", "sale", "消失", "离开")


@dataclass
class Segment:
    """A timed stretch of a video reply: start and end seconds and what is said about it."""

    start: float
    end: float
    text: str = ""


@dataclass
class Event:
    """A timed caption line: its time, whether something appears (or leaves), and its text."""

    time: float
    appear: bool
    text: str = ""


def parse_segments(reply: str) -> list[Segment]:
    """Segments of a reply: each line with two timestamps ("<a seconds> to <b seconds>: ...")."""
    found = []
    for line in reply.splitlines():
        stamps = list(_STAMP.finditer(line))
        if len(stamps) >= 2:
            a, b = float(stamps[0].group(1)), float(stamps[1].group(1))
            found.append(Segment(a, b, line[stamps[1].end():].lstrip(" :：").strip()))
    return found


def parse_events(reply: str) -> list[Event]:
    """Caption events of a reply: each line that starts with a timestamp ("<2.5 seconds> A red circle appears.")."""
    found = []
    for line in reply.splitlines():
        m = _STAMP.search(line)
        if m is None:
            continue
        text = line[m.end():].strip()
        low = text.lower()
        found.append(Event(float(m.group(1)), not any(w in low for w in _LEAVE), text))
    return found


def _match(costs: list[tuple[float, int, int]]) -> list[tuple[float, int, int]]:
    """Greedy one-to-one matching, cheapest pairs first: (cost, i, j) -> the chosen pairs."""
    used_i, used_j, chosen = set(), set(), []
    for cost, i, j in sorted(costs):
        if i not in used_i and j not in used_j and math.isfinite(cost):
            used_i.add(i)
            used_j.add(j)
            chosen.append((cost, i, j))
    return chosen


@dataclass
class TimingScore:
    """One video's timing result: matched pairs within tolerance, the counts on both sides, matched errors (s)."""

    hits: int
    reference: int
    predicted: int
    errors: list = field(default_factory=list)

    @property
    def total(self) -> int:
        """What the hit rate is taken over: the larger of the two counts, so missing and extra lines both count."""
        return max(self.reference, self.predicted)


def segment_score(predicted: list[Segment], reference: list[Segment], tolerance: float = 0.5) -> TimingScore:
    """Match predicted to reference segments (by their larger boundary error) and count those within tolerance."""
    costs = [(max(abs(p.start - r.start), abs(p.end - r.end)), i, j)
             for i, r in enumerate(reference) for j, p in enumerate(predicted)]
    pairs = _match(costs)
    return TimingScore(sum(c <= tolerance for c, _, _ in pairs), len(reference), len(predicted),
                       [c for c, _, _ in pairs])


def event_score(predicted: list[Event], reference: list[Event], tolerance: float = 0.5) -> TimingScore:
    """Match caption events of the same kind (appear / leave) by time and count those within tolerance."""
    costs = [(abs(p.time - r.time) if p.appear == r.appear else math.inf, i, j)
             for i, r in enumerate(reference) for j, p in enumerate(predicted)]
    pairs = _match(costs)
    return TimingScore(sum(c <= tolerance for c, _, _ in pairs), len(reference), len(predicted),
                       [c for c, _, _ in pairs])


def rate(hits: int, total: int) -> float:
    """hits / total, NaN when there is nothing to count."""
    return hits / total if total else float("nan")


def wilson_interval(hits: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of the rate hits / total (95% at z = 1.96); NaNs when there is nothing to count."""
    if total <= 0:
        return float("nan"), float("nan")
    p, spread = hits / total, z * z / total
    centre = (p + spread / 2) / (1 + spread)
    half = z * math.sqrt(p * (1 - p) / total + spread / (4 * total)) / (1 + spread)
    return max(0.0, centre - half), min(1.0, centre + half)
