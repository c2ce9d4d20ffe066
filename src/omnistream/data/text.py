"""Templated speech text in English, Mandarin and Spanish: sentences, arithmetic and counting questions, prompts.

Every utterance has a written form (the chat text; Mandarin in Chinese characters) and a spoken form (what
espeak-ng reads; Mandarin in pinyin with tone numbers for the `cmn-latn-pinyin` voice). Numbers are written as
words in every language, so a transcript is exactly what was said.

Held-out content: each sentence, number pair and counting question has a language-independent key (e.g.
"arith:17+25", "have:3:2:42"); `held_out(key)` is true for one key in eight by its SHA-256. The train split draws
only keys that are not held out, the eval split only keys that are, so evaluation asks questions and reads
sentences never seen in training (in any language). Draws are rejection sampling from the item's own RNG.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from . import numbers
from .errors import DataError

LANGUAGES = ("en", "zh", "es")
HELD_OUT_ONE_IN = 8

# The Mandarin words of the templates: characters -> pinyin with tone numbers (5 = neutral tone).
ZH_WORDS = {
    "小猫": "xiao3 mao1", "小狗": "xiao3 gou3", "老师": "lao3 shi1", "孩子": "hai2 zi5", "医生": "yi1 sheng1",
    "我哥哥": "wo3 ge1 ge5", "我们的邻居": "wo3 men5 de5 lin2 ju1", "农民": "nong2 min2",
    "看书": "kan4 shu1", "喝茶": "he1 cha2", "走路回家": "zou3 lu4 hui2 jia1", "睡觉": "shui4 jiao4",
    "做晚饭": "zuo4 wan3 fan4", "唱歌": "chang4 ge1", "写信": "xie3 xin4", "等公共汽车": "deng3 gong1 gong4 qi4 che1",
    "今天早上": "jin1 tian1 zao3 shang5", "晚上": "wan3 shang5", "星期天": "xing1 qi1 tian1", "现在": "xian4 zai4",
    "在": "zai4", "有": "you3", "本": "ben3", "书": "shu1", "支": "zhi1", "铅笔": "qian1 bi3", "个": "ge4",
    "气球": "qi4 qiu2", "鸡蛋": "ji1 dan4", "盘子": "pan2 zi5",
    "加": "jia1", "减": "jian3", "乘以": "cheng2 yi3", "等于": "deng3 yu2", "多少": "duo1 shao3",
    "后面": "hou4 mian4", "前面": "qian2 mian4", "的": "de5", "数": "shu4", "是": "shi4", "几": "ji3",
    "我": "wo3", "你": "ni3", "说了": "shuo1 le5", "次": "ci4",
    "苹果": "ping2 guo3", "太阳": "tai4 yang2", "树": "shu4", "鸟": "niao3",
}
_ZH_PUNCTUATION = {"，": ",", "。": ".", "？": "?"}

# Sentence slots, (English, Spanish, Mandarin).
_SUBJECTS = (("the cat", "el gato", "小猫"), ("the dog", "el perro", "小狗"),
             ("the teacher", "el profesor", "老师"), ("the child", "el niño", "孩子"),
             ("the doctor", "el médico", "医生"), ("my brother", "mi hermano", "我哥哥"),
             ("our neighbour", "nuestro vecino", "我们的邻居"), ("the farmer", "el granjero", "农民"))
_ACTIONS = (("reading a book", "leyendo un libro", "看书"), ("drinking tea", "bebiendo té", "喝茶"),
            ("walking home", "caminando a casa", "走路回家"), ("sleeping", "durmiendo", "睡觉"),
            ("cooking dinner", "cocinando la cena", "做晚饭"), ("singing a song", "cantando una canción", "唱歌"),
            ("writing a letter", "escribiendo una carta", "写信"),
            ("waiting for the bus", "esperando el autobús", "等公共汽车"))
_TIMES = (("this morning", "esta mañana", "今天早上"), ("in the evening", "por la noche", "晚上"),
          ("on Sunday", "el domingo", "星期天"), ("right now", "ahora mismo", "现在"))
# Objects: English, Spanish (all masculine), Mandarin measure word, Mandarin noun.
_OBJECTS = (("books", "libros", "本", "书"), ("pencils", "lápices", "支", "铅笔"), ("balloons", "globos", "个", "气球"),
            ("eggs", "huevos", "个", "鸡蛋"), ("plates", "platos", "个", "盘子"))
_REPEAT_WORDS = (("apple", "manzana", "苹果"), ("sun", "sol", "太阳"), ("tree", "árbol", "树"), ("book", "libro", "书"),
                 ("bird", "pájaro", "鸟"))
_OPS = {"+": ("plus", "más", "加"), "-": ("minus", "menos", "减"), "*": ("times", "por", "乘以")}
_COLUMN = {"en": 0, "es": 1, "zh": 2}
QUESTION_KINDS = ("arithmetic", "after", "before", "repeat")  # meta["kind"] of the questions that think first


@dataclass(frozen=True)
class Utterance:
    """One thing said: its written form and the input espeak-ng reads (different only for Mandarin)."""

    text: str
    speech: str


@dataclass(frozen=True)
class Question:
    """A spoken question, the full-sentence answer (written), and what it asks (for checking)."""

    question: Utterance
    answer: str
    meta: dict = field(default_factory=dict)
    answer_speech: str = ""  # what espeak-ng reads to say the answer (pinyin for Mandarin)


def _question(question: Utterance, answer: Utterance, meta: dict) -> Question:
    """A Question whose answer is said as well as written."""
    return Question(question, answer.text, meta, answer.speech)


def held_out(key: str) -> bool:
    """Whether a content key belongs to the eval split (one key in HELD_OUT_ONE_IN, by SHA-256)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % HELD_OUT_ONE_IN == 0


def _draw(rng: random.Random, split: str, make: Callable[[random.Random], tuple[str, object]]):
    """(key, value) from `make`, redrawn until the key belongs to `split`."""
    while True:
        key, value = make(rng)
        if held_out(key) == (split == "eval"):
            return key, value


def _check_language(lang: str) -> None:
    """Raise a DataError for a language the templates do not cover."""
    if lang not in LANGUAGES:
        raise DataError(f"unknown language {lang!r}; expected one of {', '.join(LANGUAGES)}")


def _same(text: str) -> Utterance:
    """An English or Spanish utterance, first letter capitalised (after any "¿"); espeak-ng reads the text itself."""
    i = next(i for i, c in enumerate(text) if c.isalpha())
    text = text[:i] + text[i].upper() + text[i + 1:]
    return Utterance(text, text)


def _zh(*pieces) -> Utterance:
    """A Mandarin utterance from lexicon words, punctuation and number utterances."""
    text, speech = [], []
    for piece in pieces:
        if isinstance(piece, Utterance):
            text.append(piece.text)
            speech.append(piece.speech)
        elif piece in _ZH_PUNCTUATION:
            text.append(piece)
            speech[-1] += _ZH_PUNCTUATION[piece]
        else:
            text.append(piece)
            speech.append(ZH_WORDS[piece])
    return Utterance("".join(text), " ".join(speech))


def _zh_number(n: int, measure: bool = False) -> Utterance:
    """A number in characters and in pinyin."""
    return Utterance(numbers.chinese(n, measure), numbers.pinyin(n, measure))


def _activity(s: int, a: int, t: int, lang: str) -> Utterance:
    """"The cat is reading a book this morning." and its translations."""
    if lang == "zh":
        return _zh(_TIMES[t][2], _SUBJECTS[s][2], "在", _ACTIONS[a][2], "。")
    verb = "is" if lang == "en" else "está"
    c = _COLUMN[lang]
    return _same(f"{_SUBJECTS[s][c]} {verb} {_ACTIONS[a][c]} {_TIMES[t][c]}.")


def _possession(s: int, o: int, n: int, lang: str) -> Utterance:
    """"The teacher has forty-two books." and its translations."""
    if lang == "zh":
        _, _, measure, noun = _OBJECTS[o]
        return _zh(_SUBJECTS[s][2], "有", _zh_number(n, measure=True), measure, noun, "。")
    if lang == "en":
        return _same(f"{_SUBJECTS[s][0]} has {numbers.english(n)} {_OBJECTS[o][0]}.")
    return _same(f"{_SUBJECTS[s][1]} tiene {numbers.spanish(n, 'm')} {_OBJECTS[o][1]}.")


def sentence(rng: random.Random, split: str, lang: str, avoid: str | None = None) -> tuple[str, Utterance]:
    """(key, sentence) for transcription or read-aloud, from `split`'s sentences, never the one keyed `avoid`."""
    _check_language(lang)

    def make(r: random.Random):
        if r.random() < 0.5:
            s, a, t = r.randrange(len(_SUBJECTS)), r.randrange(len(_ACTIONS)), r.randrange(len(_TIMES))
            return f"do:{s}:{a}:{t}", _activity(s, a, t, lang)
        s, o, n = r.randrange(len(_SUBJECTS)), r.randrange(len(_OBJECTS)), r.randint(2, 100)
        return f"have:{s}:{o}:{n}", _possession(s, o, n, lang)

    while True:
        key, value = _draw(rng, split, make)
        if key != avoid:
            return key, value


def number_list(rng: random.Random, lang: str) -> Utterance:
    """Three to five numbers in 0..100 said as a list, "Sixty-four, thirty-one, twelve, eighty-nine." (a number-dense
    clip to transcribe: a spoken question turns on one or two number words among six to eight)."""
    _check_language(lang)
    picks = [rng.randint(0, 100) for _ in range(rng.randint(3, 5))]
    if lang == "zh":
        return _zh(*[p for n in picks for p in (_zh_number(n), "，")][:-1], "。")
    say = numbers.english if lang == "en" else numbers.spanish
    return _same(", ".join(say(n) for n in picks) + ".")


def _arithmetic_pair(r: random.Random) -> tuple[str, tuple[int, str, int]]:
    """A random sum, difference (never negative) or small product, all within 0..100."""
    op = r.choice("+-*")
    if op == "*":
        a, b = r.randint(1, 10), r.randint(1, 10)
    else:
        a = r.randint(0, 100)
        b = r.randint(0, 100 - a) if op == "+" else r.randint(0, a)
    return f"arith:{a}{op}{b}", (a, op, b)


def arithmetic(rng: random.Random, split: str, lang: str) -> Question:
    """"What is seventeen plus twenty-five?" -> "Seventeen plus twenty-five is forty-two." (and translations)."""
    _check_language(lang)
    _, (a, op, b) = _draw(rng, split, _arithmetic_pair)
    result = a + b if op == "+" else a - b if op == "-" else a * b
    meta = {"kind": "arithmetic", "a": a, "op": op, "b": b, "result": result}
    word = _OPS[op][_COLUMN[lang]]
    if lang == "zh":
        lhs = (_zh_number(a), word, _zh_number(b), "等于")
        return _question(_zh(*lhs, "多少", "？"), _zh(*lhs, _zh_number(result), "。"), meta)
    say = numbers.english if lang == "en" else numbers.spanish
    lhs = f"{say(a)} {word} {say(b)}"
    if lang == "en":
        return _question(_same(f"what is {lhs}?"), _same(f"{lhs} is {say(result)}."), meta)
    return _question(_same(f"¿cuánto es {lhs}?"), _same(f"{lhs} es igual a {say(result)}."), meta)


def reasoning(meta: Mapping) -> str | None:
    """What a question's reply thinks before answering, from its meta: the question as heard (its text, so a spoken
    question is first transcribed and then worked on in text, where the LM counts and reads numbers best), then
    `worked_step` in digits; a repeated word is counted from the transcript alone. None for other items."""
    if meta.get("kind") not in QUESTION_KINDS:
        return None
    step = worked_step(meta)
    return meta["question"] if step is None else f"{meta['question']}\n{step}"


def worked_step(meta: Mapping) -> str | None:
    """The digits line of a question's think block: a sum or difference with its result ("17+25=42"); a product
    turned larger factor first and added up while the smaller counts down ("5*8=8*5=8+8*4=16+8*3=24+8*2=32+8*1=40"),
    so a product never seen is still worked out, one addition a step; the number after or before n as n+1 or n-1
    ("41+1=42"). None for a repeated word."""
    kind = meta["kind"]
    if kind in ("after", "before"):
        return f"{meta['n']}{'+' if kind == 'after' else '-'}1={meta['result']}"
    if kind != "arithmetic":
        return None
    a, op, b, result = meta["a"], meta["op"], meta["b"], meta["result"]
    if op == "*":
        big, small = max(a, b), min(a, b)
        added = [f"{big * k}+{big}*{small - k}" for k in range(1, small)]  # k of the larger added, small - k to go
        return "=".join([f"{a}*{b}", f"{big}*{small}", *added, str(result)])
    return f"{a}{op}{b}={result}"


def _counting_case(r: random.Random) -> tuple[str, tuple[str, int, int]]:
    """A random counting question: the number after or before n, or how often a word is repeated."""
    kind = r.choice(("after", "before", "repeat"))
    if kind == "repeat":
        w, n = r.randrange(len(_REPEAT_WORDS)), r.randint(2, 9)
        return f"repeat:{w}:{n}", (kind, n, w)
    n = r.randint(0, 99) if kind == "after" else r.randint(1, 100)
    return f"{kind}:{n}", (kind, n, -1)


def counting(rng: random.Random, split: str, lang: str) -> Question:
    """"What number comes after forty-one?" / "How many times do I say the word sun? Sun, sun, sun." and answers."""
    _check_language(lang)
    _, (kind, n, w) = _draw(rng, split, _counting_case)
    if kind == "repeat":
        return _repeat(n, w, lang)
    result = n + 1 if kind == "after" else n - 1
    meta = {"kind": kind, "n": n, "result": result}
    if lang == "zh":
        side = "后面" if kind == "after" else "前面"
        lhs = (_zh_number(n), side, "的", "数", "是")
        return _question(_zh(*lhs, "几", "？"), _zh(*lhs, _zh_number(result), "。"), meta)
    if lang == "en":
        lhs = f"{kind} {numbers.english(n)}"
        return _question(_same(f"what number comes {lhs}?"),
                         _same(f"the number {lhs} is {numbers.english(result)}."), meta)
    side = "después" if kind == "after" else "antes"
    return _question(_same(f"¿qué número va {side} del {numbers.spanish(n)}?"),
                     _same(f"{side} del {numbers.spanish(n)} va el {numbers.spanish(result)}."), meta)


def _repeat(n: int, w: int, lang: str) -> Question:
    """"How many times do I say the word sun? Sun, sun, sun." -> "You said the word sun three times."."""
    word = _REPEAT_WORDS[w][_COLUMN[lang]]
    meta = {"kind": "repeat", "word": word, "n": n, "result": n}
    if lang == "zh":
        said = []
        for i in range(n):
            said += [word, "，" if i < n - 1 else "。"]
        question = _zh("我", "说了", "几", "次", word, "？", *said)
        return _question(question, _zh("你", "说了", _zh_number(n, measure=True), "次", word, "。"), meta)
    said = ", ".join([word] * n)
    if lang == "en":
        return _question(_same(f"how many times do I say the word {word}? {said.capitalize()}."),
                         _same(f"you said the word {word} {numbers.english(n)} times."), meta)
    return _question(_same(f"¿cuántas veces digo la palabra {word}? {said.capitalize()}."),
                     _same(f"dijiste la palabra {word} {numbers.spanish(n)} veces."), meta)


def transcribe_prompt(lang: str) -> str:
    """The instruction that asks for a transcript, in the speech's language."""
    return {"en": "Transcribe this audio.", "es": "Transcribe este audio.", "zh": "请转写这段音频。"}[lang]


def read_aloud_prompt(lang: str, voice_name: str, text: str) -> str:
    """The instruction to read `text` aloud in the named voice."""
    return {"en": f"Read this aloud in {voice_name}'s voice: {text}",
            "es": f"Lee esto en voz alta con la voz de {voice_name}: {text}",
            "zh": f"请用{voice_name}的声音朗读：{text}"}[lang]


def clone_prompt(lang: str, text: str) -> str:
    """The instruction to read `text` aloud in the voice of the recording that precedes it."""
    return {"en": f"Read this aloud in the voice of the speaker in this recording: {text}",
            "es": f"Lee esto en voz alta con la voz de la persona de esta grabación: {text}",
            "zh": f"请用这段录音中说话人的声音朗读：{text}"}[lang]
