"""Numbers 0..100 as words: English, Spanish (with gender), Mandarin in characters and in tone-numbered pinyin."""

from __future__ import annotations

from .errors import DataError

_EN_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
            "sixteen seventeen eighteen nineteen").split()
_EN_TENS = {2: "twenty", 3: "thirty", 4: "forty", 5: "fifty", 6: "sixty", 7: "seventy", 8: "eighty", 9: "ninety"}

_ES_ONES = ("cero uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece catorce quince dieciséis "
            "diecisiete dieciocho diecinueve veinte veintiuno veintidós veintitrés veinticuatro veinticinco "
            "veintiséis veintisiete veintiocho veintinueve").split()
_ES_TENS = {3: "treinta", 4: "cuarenta", 5: "cincuenta", 6: "sesenta", 7: "setenta", 8: "ochenta", 9: "noventa"}

# Mandarin digits: (character, pinyin with tone number)
_ZH_DIGITS = (("零", "ling2"), ("一", "yi1"), ("二", "er4"), ("三", "san1"), ("四", "si4"), ("五", "wu3"),
              ("六", "liu4"), ("七", "qi1"), ("八", "ba1"), ("九", "jiu3"))
_ZH_TEN = ("十", "shi2")
_ZH_HUNDRED = (("一", "yi1"), ("百", "bai3"))
_ZH_LIANG = ("两", "liang3")  # "two" before a measure word


def _check(n: int) -> None:
    """Refuse numbers outside 0..100, the range the templates cover."""
    if not isinstance(n, int) or not 0 <= n <= 100:
        raise DataError(f"number {n!r} is outside 0..100, the range the text templates cover")


def english(n: int) -> str:
    """English words: 42 -> "forty-two", 100 -> "one hundred"."""
    _check(n)
    if n == 100:
        return "one hundred"
    if n < 20:
        return _EN_ONES[n]
    tens, ones = divmod(n, 10)
    return _EN_TENS[tens] + (f"-{_EN_ONES[ones]}" if ones else "")


def spanish(n: int, gender: str | None = None) -> str:
    """Spanish words; gender "m" or "f" when the number stands before a noun (21 -> veintiún / veintiuna)."""
    _check(n)
    if n == 100:
        word = "cien"
    elif n < 30:
        word = _ES_ONES[n]
    else:
        tens, ones = divmod(n, 10)
        word = _ES_TENS[tens] + (f" y {_ES_ONES[ones]}" if ones else "")
    if gender and word.endswith("uno"):
        stem = word[:-3]
        word = stem + ("una" if gender == "f" else ("ún" if stem == "veinti" else "un"))
    return word


def _zh_pairs(n: int, measure: bool) -> list[tuple[str, str]]:
    """(character, pinyin) syllables of n; `measure`: n stands before a measure word (2 -> 两)."""
    _check(n)
    if n == 100:
        return list(_ZH_HUNDRED)
    if n == 2 and measure:
        return [_ZH_LIANG]
    if n <= 10:
        return [_ZH_TEN] if n == 10 else [_ZH_DIGITS[n]]
    tens, ones = divmod(n, 10)
    pairs = ([_ZH_DIGITS[tens]] if tens > 1 else []) + [_ZH_TEN]
    return pairs + ([_ZH_DIGITS[ones]] if ones else [])


def chinese(n: int, measure: bool = False) -> str:
    """Mandarin in characters: 42 -> 四十二; with `measure`, 2 -> 两 (before a measure word such as 个)."""
    return "".join(c for c, _ in _zh_pairs(n, measure))


def pinyin(n: int, measure: bool = False) -> str:
    """Mandarin in pinyin with tone numbers, the input espeak-ng's cmn-latn-pinyin voice reads: 42 -> "si4 shi2 er4"."""
    return " ".join(p for _, p in _zh_pairs(n, measure))

