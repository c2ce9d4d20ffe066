"""Drawn scenes: 1-3 coloured shapes on a 3x3 grid, questions about them (what, where, how many) with answers.

A scene is SIZE x SIZE pixels on a white background, cut into a 3x3 grid of cells; each shape fills the middle of
its own cell (a circle, a square, or a triangle pointing up), so its cell centre always has its colour. No two
shapes of a scene share a colour and a kind, so "the red circle" names one shape. Words for colours, kinds and
positions are given in English, Spanish and Mandarin (characters); every Spanish shape noun is masculine.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from PIL import Image, ImageDraw

from . import numbers

SIZE = 96
GRID = 3
CELL = SIZE // GRID
RADIUS = 11
BACKGROUND = (255, 255, 255)
COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 90, 220), "yellow": (235, 200, 30)}
KINDS = ("circle", "square", "triangle")

# Words: colour -> (English, Spanish masculine singular, Mandarin)
_COLOUR_WORDS = {"red": ("red", "rojo", "红色"), "green": ("green", "verde", "绿色"), "blue": ("blue", "azul", "蓝色"),
                 "yellow": ("yellow", "amarillo", "黄色")}
_KIND_WORDS = {"circle": ("circle", "círculo", "圆形"), "square": ("square", "cuadrado", "正方形"),
               "triangle": ("triangle", "triángulo", "三角形")}
# Cell (row, column) -> where it is: English, Spanish, Mandarin.
_POSITIONS = {
    (0, 0): ("in the top left", "arriba a la izquierda", "左上角"), (0, 1): ("at the top", "arriba", "上方"),
    (0, 2): ("in the top right", "arriba a la derecha", "右上角"), (1, 0): ("on the left", "a la izquierda", "左边"),
    (1, 1): ("in the middle", "en el centro", "中间"), (1, 2): ("on the right", "a la derecha", "右边"),
    (2, 0): ("in the bottom left", "abajo a la izquierda", "左下角"), (2, 1): ("at the bottom", "abajo", "下方"),
    (2, 2): ("in the bottom right", "abajo a la derecha", "右下角"),
}
_COLUMN = {"en": 0, "es": 1, "zh": 2}
QUESTIONS = ("what", "where", "count_all", "count_colour", "count_kind")


@dataclass(frozen=True)
class Shape:
    """One drawn shape: its colour name, its kind and its grid cell."""

    colour: str
    kind: str
    row: int
    col: int

    @property
    def center(self) -> tuple[int, int]:
        """(x, y) pixel at the middle of the shape (inside it for every kind)."""
        return self.col * CELL + CELL // 2, self.row * CELL + CELL // 2


def random_shapes(rng: random.Random, count: int) -> list[Shape]:
    """`count` shapes in distinct cells with distinct (colour, kind), in row-major cell order."""
    cells = sorted(rng.sample([(r, c) for r in range(GRID) for c in range(GRID)], count))
    looks = rng.sample([(colour, kind) for colour in COLOURS for kind in KINDS], count)
    return [Shape(colour, kind, r, c) for (colour, kind), (r, c) in zip(looks, cells)]


def draw_shape(draw: ImageDraw.ImageDraw, shape: Shape) -> None:
    """Paint one shape, centred in its cell."""
    x, y = shape.center
    fill = COLOURS[shape.colour]
    if shape.kind == "circle":
        draw.ellipse((x - RADIUS, y - RADIUS, x + RADIUS, y + RADIUS), fill=fill)
    elif shape.kind == "square":
        draw.rectangle((x - RADIUS, y - RADIUS, x + RADIUS, y + RADIUS), fill=fill)
    else:
        draw.polygon([(x, y - RADIUS), (x - RADIUS, y + RADIUS), (x + RADIUS, y + RADIUS)], fill=fill)


def draw_scene(shapes: list[Shape]) -> Image.Image:
    """An RGB image of the shapes on a white background."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        draw_shape(draw, shape)
    return image


def phrase(shape: Shape, lang: str, definite: bool = False) -> str:
    """"a red circle" / "the red circle", "un círculo rojo" / "el círculo rojo", "一个红色的圆形" / "红色的圆形"."""
    c = _COLUMN[lang]
    colour, kind = _COLOUR_WORDS[shape.colour][c], _KIND_WORDS[shape.kind][c]
    if lang == "en":
        return f"{'the' if definite else 'a'} {colour} {kind}"
    if lang == "es":
        return f"{'el' if definite else 'un'} {kind} {colour}"
    return f"{'' if definite else '一个'}{colour}的{kind}"


def listing(shapes: list[Shape], lang: str) -> str:
    """Several shapes joined: "a red circle, a blue square and a green triangle" (and translations)."""
    parts = [phrase(s, lang) for s in shapes]
    if len(parts) == 1:
        return parts[0]
    last = {"en": " and ", "es": " y ", "zh": "和"}[lang]
    comma = "、" if lang == "zh" else ", "
    return comma.join(parts[:-1]) + last + parts[-1]


def capital(text: str) -> str:
    """The text with its first letter upper-cased."""
    return text[0].upper() + text[1:]


def _spanish_plural(word: str) -> str:
    """Plural of the Spanish nouns and adjectives used here (azul -> azules, círculo -> círculos)."""
    return word + ("es" if word.endswith("l") else "s")


def _count_answer(n: int, lang: str, colour: str | None = None, kind: str | None = None) -> tuple[str, str]:
    """(question, answer) for "how many shapes / red shapes / circles are there?" with n of them."""
    if lang == "zh":
        noun = f"{_COLOUR_WORDS[colour][2]}的图形" if colour else _KIND_WORDS[kind][2] if kind else "图形"
        where = "" if colour or kind else "图片里"
        return f"{where}有几个{noun}？", f"{where}有{numbers.chinese(n, measure=True)}个{noun}。"
    if lang == "en":
        noun = f"{_COLOUR_WORDS[colour][0]} shape" if colour else _KIND_WORDS[kind][0] if kind else "shape"
        question = f"How many {noun}s are there{'' if colour or kind else ' in the picture'}?"
        return question, f"There {'is' if n == 1 else 'are'} {numbers.english(n)} {noun}{'' if n == 1 else 's'}."
    if kind:
        noun = _KIND_WORDS[kind][1]
        answer = f"Hay {numbers.spanish(n, 'm')} {noun if n == 1 else _spanish_plural(noun)}."
        return f"¿Cuántos {_spanish_plural(noun)} hay?", answer
    words = ["figura"] + ([_feminine(_COLOUR_WORDS[colour][1])] if colour else [])
    plural = " ".join(_spanish_plural(w) for w in words)
    question = f"¿Cuántas {plural} hay{'' if colour else ' en la imagen'}?"
    return question, f"Hay {numbers.spanish(n, 'f')} {' '.join(words) if n == 1 else plural}."


def _feminine(adjective: str) -> str:
    """rojo -> roja, amarillo -> amarilla; verde and azul stay."""
    return adjective[:-1] + "a" if adjective.endswith("o") else adjective


def question(rng: random.Random, shapes: list[Shape], lang: str) -> tuple[str, str, dict]:
    """(question, full-sentence answer, meta) about the scene; meta names the asked kind and its target."""
    kind = rng.choice(QUESTIONS)
    c = _COLUMN[lang]
    if kind == "what":
        shape = rng.choice(shapes)
        where = _POSITIONS[(shape.row, shape.col)][c]
        meta = {"question": kind, "cell": [shape.row, shape.col]}
        if lang == "en":
            return f"What shape is {where}?", f"There is {phrase(shape, lang)} {where}.", meta
        if lang == "es":
            return f"¿Qué figura hay {where}?", f"{capital(where)} hay {phrase(shape, lang)}.", meta
        return f"图片{where}有什么？", f"{where}有{phrase(shape, lang)}。", meta
    if kind == "where":
        shape = rng.choice(shapes)
        where = _POSITIONS[(shape.row, shape.col)][c]
        the = phrase(shape, lang, definite=True)
        meta = {"question": kind, "colour": shape.colour, "kind": shape.kind, "cell": [shape.row, shape.col]}
        if lang == "en":
            return f"Where is {the}?", f"{capital(the)} is {where}.", meta
        if lang == "es":
            return f"¿Dónde está {the}?", f"{capital(the)} está {where}.", meta
        return f"{the}在哪里？", f"{the}在{where}。", meta
    if kind == "count_all":
        q, a = _count_answer(len(shapes), lang)
        return q, a, {"question": kind, "count": len(shapes)}
    if kind == "count_colour":
        colour = rng.choice(shapes).colour
        n = sum(s.colour == colour for s in shapes)
        q, a = _count_answer(n, lang, colour=colour)
        return q, a, {"question": kind, "colour": colour, "count": n}
    shape_kind = rng.choice(shapes).kind
    n = sum(s.kind == shape_kind for s in shapes)
    q, a = _count_answer(n, lang, kind=shape_kind)
    return q, a, {"question": kind, "kind": shape_kind, "count": n}


def shape_meta(shapes: list[Shape]) -> list[dict]:
    """The shapes as JSON-ready dicts (colour, kind, row, col, center)."""
    return [{**asdict(s), "center": list(s.center)} for s in shapes]
