"""`omnistream data synth`: deterministic by seed, every task in the processor's chat format, held-out voices and
content for eval, answers that match the question / the drawn pixels / the decoded video frames, clear errors."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
from PIL import Image
from tokenizer_fixture import build_tokenizer

from omnistream.config import AudioConfig, VisionConfig
from omnistream.data import DataError, main, numbers, read_items, scenes, synthesize, text, videos
from omnistream.data import voices as voices_mod
from omnistream.data.tasks import SPEECH_TASKS, TASKS
from omnistream.data.voices import CROWD_VARIANTS, ROSTER, Voice, check_voice, crowd_voice, speak
from omnistream.processor import IMAGE_PAD, VIDEO_PAD, Processor, Tokenizer, chat_template

HAVE_ESPEAK = shutil.which("espeak-ng") is not None
needs_espeak = pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng is not installed (Debian: apt-get install "
                                                          "espeak-ng); speech tasks need it")
ALL_TASKS = list(TASKS) if HAVE_ESPEAK else [t for t in TASKS if t not in SPEECH_TASKS]
PARTS = {"transcribe": ["audio", "text"], "arithmetic": ["audio"], "counting": ["audio"], "read_aloud": ["text"],
         "voice_clone": ["audio", "text"], "image_qa": ["image", "text"], "video_caption": ["video", "text"],
         "video_segments": ["video", "text"]}
NUM = 5 * len(ALL_TASKS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Train (seed 7) written twice with 1 and 2 workers, train with seed 8, and eval (seed 7)."""
    root = tmp_path_factory.mktemp("synth")
    out = {}
    for name, seed, split, workers in (("a", 7, "train", 1), ("b", 7, "train", 2), ("c", 8, "train", 1),
                                       ("eval", 7, "eval", 2)):
        path = synthesize(root / name, seed, split, NUM, ALL_TASKS, workers)
        out[name] = (root / name, read_items(path))
    return out


def decoded(path):
    """The RGB frames of a video, as bytes."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24").tobytes() for f in container.decode(video=0)]


def all_items(runs):
    return runs["a"][1] + runs["eval"][1]


def of_task(runs, task):
    return [item for item in all_items(runs) if item["task"] == task]


# --- determinism ---------------------------------------------------------------------------------------------

def test_same_seed_gives_identical_bytes_whatever_the_workers(runs):
    (a, _), (b, _) = runs["a"], runs["b"]
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert len(files_a) > NUM
    for rel in files_a:
        if rel.suffix == ".mp4" and videos.CODEC == "libx264":  # lossless H.264: the frames, not the encoder's choices
            assert len(decoded(a / rel)) > 1 and decoded(a / rel) == decoded(b / rel), rel
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    for rel in (r for r in files_a if r.suffix == ".wav"):
        x, y = soundfile.read(a / rel, dtype="float32")[0], soundfile.read(b / rel, dtype="float32")[0]
        np.testing.assert_array_equal(x, y)


def test_different_seed_gives_different_items(runs):
    (a, items_a), (c, items_c) = runs["a"], runs["c"]
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()
    assert sum(x["reply"] != y["reply"] for x, y in zip(items_a, items_c)) > NUM // 2
    assert [x["task"] for x in items_a] == [y["task"] for y in items_c]  # tasks are taken in turn


def test_an_item_does_not_depend_on_how_many_are_made(runs, tmp_path):
    path = synthesize(tmp_path, 7, "train", 3, ALL_TASKS)
    assert path.read_text().splitlines() == (runs["a"][0] / "train.jsonl").read_text().splitlines()[:3]


# --- format --------------------------------------------------------------------------------------------------

def test_every_task_is_present_with_the_right_parts(runs):
    for split in ("a", "eval"):
        items = runs[split][1]
        assert {item["task"] for item in items} == set(ALL_TASKS)
        for item in items:
            (message,) = item["messages"]
            assert message["role"] == "user"
            assert [part["type"] for part in message["content"]] == PARTS[item["task"]], item["id"]
            for part in message["content"]:
                if part["type"] != "text":
                    assert Path(part[part["type"]]).is_file()
            assert isinstance(item["reply"], str) and item["reply"]
            assert item["language"] in text.LANGUAGES
            assert (item["task"] in ("read_aloud", "voice_clone", "arithmetic", "counting")) == ("target_speech" in item)
            if item["task"] == "voice_clone":
                assert message["content"][0]["audio"] == item["reference_speech"] != item["target_speech"]
                assert item["meta"]["sentence"] != item["meta"]["reference_sentence"]
            assert (item["voice"] is None) == (item["task"] not in SPEECH_TASKS)
            media = []
            chat_template(item["messages"], media=media)
            assert [m.kind for m in media] == [p for p in PARTS[item["task"]] if p != "text"]


def test_the_processor_reads_every_task(runs, tmp_path):
    build_tokenizer(tmp_path, 320)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    for i, token in enumerate(["<|vision_start|>", "<|vision_end|>", IMAGE_PAD, VIDEO_PAD]):
        config["added_tokens_decoder"][str(320 + i)] = {"content": token, "special": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer(tmp_path)
    processor = Processor(tok, AudioConfig(), vision_config=VisionConfig(), image_pixels=(1024, 4096),
                          video_pixels=(1024, 4096))
    for task in ALL_TASKS:
        item = of_task(runs, task)[0]
        prompt = processor(item["messages"])
        ids = prompt.input_ids[0].tolist()
        for kind in PARTS[task]:
            if kind == "audio":
                assert prompt.audio_features is not None and ids.count(tok.token_to_id("<|audio_pad|>")) > 5
            elif kind == "image":
                assert prompt.pixel_values is not None and ids.count(tok.token_to_id(IMAGE_PAD)) > 0
            elif kind == "video":
                assert prompt.pixel_values_videos is not None and ids.count(tok.token_to_id(VIDEO_PAD)) > 0


# --- voices and held-out content -----------------------------------------------------------------------------

def test_roster_has_disjoint_train_and_held_out_voices():
    train = {v.name for v in ROSTER if v.split == "train"}
    held = {v.name for v in ROSTER if v.split == "eval"}
    assert len(ROSTER) >= 14 and len(train) >= 10 and len(held) >= 3 and not train & held
    assert len({v.name for v in ROSTER}) == len(ROSTER)
    assert {v.variant for v in ROSTER} >= {f"m{i}" for i in range(1, 9)} | {f"f{i}" for i in range(1, 6)}
    for lang in text.LANGUAGES:
        assert {v.split for v in ROSTER if v.language == lang} == {"train", "eval"}
    assert len({(v.espeak_voice, v.pitch, v.speed) for v in ROSTER}) == len(ROSTER)
    assert {v.espeak for v in ROSTER if v.language == "zh"} == {"cmn-latn-pinyin"}


@needs_espeak
def test_eval_speaks_only_with_held_out_voices(runs):
    split_of = {v.name: v.split for v in ROSTER}
    crowd = []
    for run, split in (("a", "train"), ("eval", "eval")):
        for item in runs[run][1]:
            if item["voice"] is None:
                continue
            if item["voice"].startswith("crowd:"):
                crowd.append(item)
                continue
            assert next(v for v in ROSTER if v.name == item["voice"]).language == item["language"]
            # a named voice must be one the model trained on; its eval sentences are still held out
            expected = "train" if item["task"] == "read_aloud" else split
            assert split_of[item["voice"]] == expected, item["id"]
    # the crowd says only training clips (never a named voice's read-aloud), never with a held-out voice's timbre
    said = ("transcribe", "arithmetic", "counting", "voice_clone")
    assert crowd and all(it["split"] == "train" and it["task"] in said for it in crowd)
    assert {it["voice"].split(":")[1] for it in crowd} <= set(CROWD_VARIANTS)
    assert not set(CROWD_VARIANTS) & {v.variant for v in ROSTER}


@needs_espeak
def test_crowd_voices_are_seeded_and_spread():
    drawn = [crowd_voice(random.Random(i), "es") for i in range(40)]
    assert drawn == [crowd_voice(random.Random(i), "es") for i in range(40)]
    assert len({v.variant for v in drawn}) >= 15 and max(v.pitch for v in drawn) - min(v.pitch for v in drawn) >= 30
    assert all(v.espeak == "es" and v.split == "train" for v in drawn)
    samples = speak("uno dos tres", drawn[0])
    assert samples.dtype == np.float32 and np.abs(samples).max() > 0.01
    with pytest.raises(DataError, match="no voice for language 'fr'"):
        crowd_voice(random.Random(0), "fr")


def content_key(item):
    meta = item["meta"]
    if item["task"] in ("transcribe", "read_aloud", "voice_clone"):
        return meta["sentence"]
    if meta["kind"] == "arithmetic":
        return f"arith:{meta['a']}{meta['op']}{meta['b']}"
    return None


@needs_espeak
def test_eval_items_ask_only_held_out_sentences_and_number_pairs(runs):
    for run, held in (("a", False), ("eval", True)):
        keys = [content_key(item) for item in runs[run][1] if item["task"] in SPEECH_TASKS]
        assert all(text.held_out(k) == held for k in keys if k)


def test_the_splits_never_share_a_sentence_or_a_number_pair():
    for lang in text.LANGUAGES:
        for draw in (sentence_key, arithmetic_key):
            keys = {split: {draw(random.Random(i), split, lang) for i in range(200)} for split in ("train", "eval")}
            assert keys["train"] and keys["eval"] and not keys["train"] & keys["eval"]


def sentence_key(rng, split, lang):
    return text.sentence(rng, split, lang)[0]


def arithmetic_key(rng, split, lang):
    return "{a}{op}{b}".format(**text.arithmetic(rng, split, lang).meta)


# --- answers -------------------------------------------------------------------------------------------------

ZH_DIGITS = {c: i for i, c in enumerate("零一二三四五六七八九")} | {"两": 2}


def parse_chinese(s: str) -> int:
    """An independent reader of Chinese numerals 0..100."""
    if s == "一百":
        return 100
    if "十" in s:
        tens, _, ones = s.partition("十")
        return (ZH_DIGITS[tens] if tens else 1) * 10 + (ZH_DIGITS[ones] if ones else 0)
    return ZH_DIGITS[s]


def test_number_words_spot_checks():
    assert [numbers.english(n) for n in (0, 13, 42, 70, 100)] == ["zero", "thirteen", "forty-two", "seventy",
                                                                   "one hundred"]
    assert [numbers.spanish(n) for n in (16, 21, 22, 42, 71, 100)] == ["dieciséis", "veintiuno", "veintidós",
                                                                        "cuarenta y dos", "setenta y uno", "cien"]
    assert [numbers.spanish(n, "m") for n in (1, 21, 31)] == ["un", "veintiún", "treinta y un"]
    assert [numbers.spanish(n, "f") for n in (1, 21, 31)] == ["una", "veintiuna", "treinta y una"]
    assert [parse_chinese(numbers.chinese(n)) for n in range(101)] == list(range(101))
    assert numbers.chinese(2, measure=True) == "两" and numbers.chinese(12, measure=True) == "十二"
    with pytest.raises(DataError, match="outside 0..100"):
        numbers.english(101)


def expected_tail(lang, verb_en, verb_es, verb_zh, n):
    return {"en": f" {verb_en} {numbers.english(n)}.", "es": f" {verb_es} {numbers.spanish(n)}.",
            "zh": f"{verb_zh}{numbers.chinese(n)}。"}[lang]


def check_arithmetic(q: text.Question, lang: str) -> None:
    m = q.meta
    a, op, b = m["a"], m["op"], m["b"]
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    assert m["result"] == result and 0 <= result <= 100 and (op != "*" or max(a, b) <= 10)
    assert q.answer.endswith(expected_tail(lang, "is", "es igual a", "等于", result)), q
    if lang == "zh":
        lhs = re.fullmatch(r"(.+?)(加|减|乘以)(.+?)等于(.+)。", q.answer)
        assert [parse_chinese(g) for g in (lhs[1], lhs[3], lhs[4])] == [a, b, result]
    else:
        say = numbers.english if lang == "en" else numbers.spanish
        assert q.answer.lower().startswith(f"{say(a)} ") and f" {say(b)} " in q.answer


def check_counting(q: text.Question, lang: str) -> None:
    m = q.meta
    if m["kind"] == "repeat":
        said = re.split(r"[?？]", q.question.text, maxsplit=1)[1]
        assert said.lower().count(m["word"].lower()) == m["n"] == m["result"]
        n = numbers.chinese(m["n"], measure=True) if lang == "zh" else None
        say = {"en": numbers.english, "es": numbers.spanish}
        assert (f"{n}次" in q.answer) if lang == "zh" else (f" {say[lang](m['n'])} " in q.answer)
        return
    assert m["result"] == m["n"] + (1 if m["kind"] == "after" else -1)
    assert q.answer.endswith(expected_tail(lang, "is", "va el", "是", m["result"])), q


@needs_espeak
def test_arithmetic_and_counting_answers_in_the_data_are_right(runs):
    for item in of_task(runs, "arithmetic") + of_task(runs, "counting"):
        q = text.Question(text.Utterance(item["meta"]["question"], item["meta"]["speech_input"]), item["reply"],
                          item["meta"])
        (check_arithmetic if item["task"] == "arithmetic" else check_counting)(q, item["language"])


def test_arithmetic_and_counting_answers_are_right_in_every_language():
    kinds = set()
    for lang in text.LANGUAGES:
        for i in range(300):
            split = ("train", "eval")[i % 2]
            check_arithmetic(text.arithmetic(random.Random(i), split, lang), lang)
            q = text.counting(random.Random(i), split, lang)
            check_counting(q, lang)
            kinds.add(q.meta["kind"])
    assert kinds == {"after", "before", "repeat"}


@needs_espeak
def test_number_drills_are_a_named_file_of_spoken_number_lists_beside_the_split(tmp_path):
    path = synthesize(tmp_path, 7, "train", 24, ["numbers"], name="numbers")
    assert path == tmp_path / "numbers.jsonl" and not (tmp_path / "train.jsonl").exists()
    items = read_items(path)
    assert [it["id"] for it in items] == [f"numbers-{i:06d}" for i in range(24)]
    words = {"en": {numbers.english(n): n for n in range(101)}, "es": {numbers.spanish(n): n for n in range(101)},
             "zh": {numbers.chinese(n): n for n in range(101)}}
    for it in items:
        lang, reply = it["language"], it["reply"]
        pieces = re.split(r", |，", reply[:-1].lower())
        assert reply[-1] in ".。" and 3 <= len(pieces) <= 5 and all(p in words[lang] for p in pieces), reply
        assert it["task"] == "numbers" and it["messages"][0]["content"][1]["text"] == text.transcribe_prompt(lang)
        assert it["voice"].startswith("crowd:") or it["voice"] in {v.name for v in voices_mod.voices("train")}
        if lang == "zh":
            assert reads_as_pinyin(it["meta"]["speech_input"])
        else:
            assert it["meta"]["speech_input"] == reply
        wave, rate = soundfile.read(it["messages"][0]["content"][0]["audio"], dtype="float32")
        assert rate == 24000 and 0.3 * len(pieces) < len(wave) / rate < 2.0 * len(pieces) + 1.0
    assert {it["language"] for it in items} == set(text.LANGUAGES)
    assert any(it["voice"].startswith("crowd:") for it in items)
    assert "numbers" not in TASKS  # a drill is made on request only; the default rotation is unchanged
    with pytest.raises(DataError, match="--name must be lower-case .* got 'eval'"):
        synthesize(tmp_path, 7, "train", 1, ["numbers"], name="eval")


@needs_espeak
def test_transcripts_and_read_aloud_replies_are_the_spoken_sentence(runs):
    for task in ("transcribe", "read_aloud", "voice_clone"):
        for item in of_task(runs, task):
            if task != "transcribe":
                assert item["reply"] in item["messages"][0]["content"][-1]["text"]
                if task == "read_aloud":
                    assert item["voice"] in item["messages"][0]["content"][-1]["text"]
            if item["language"] != "zh" and task == "transcribe":
                assert item["meta"]["speech_input"] == item["reply"]


# --- Mandarin: characters for text, tone-numbered pinyin for espeak-ng --------------------------------------

CJK = re.compile(r"[\u4e00-\u9fff]")
TONES = {"1": {"55"}, "2": {"35"}, "3": {"21", "214", "35"}, "4": {"51"}, "5": {"11", "22", "33", "44"}}


def espeak_phonemes(pinyin: str, voice: str = "cmn-latn-pinyin") -> str:
    done = subprocess.run(["espeak-ng", "-q", "-x", "-v", voice], input=pinyin.encode(), capture_output=True,
                          check=True)
    return done.stdout.decode().strip()


def reads_as_pinyin(pinyin: str, voice: str = "cmn-latn-pinyin") -> bool:
    """espeak-ng read every syllable as one Mandarin syllable of its tone: no switch to English (which is how
    digits get read aloud), one phoneme group per syllable, and each group's tone contour fits the tone number
    (tone 3 also as 35 or 214: third-tone sandhi)."""
    syllables = re.findall(r"[a-zü]+([1-5])", pinyin)
    phonemes = espeak_phonemes(pinyin, voice)
    groups = [g for g in phonemes.split("_|") if g.strip()]
    if "(en)" in phonemes or len(groups) != len(syllables):
        return False
    return all(set(re.findall(r"\d+", g)) & TONES[t] for g, t in zip(groups, syllables))


@needs_espeak
def test_mandarin_text_uses_characters_and_espeak_reads_pinyin_tones_not_digits(runs):
    zh = [item for item in all_items(runs) if item["language"] == "zh"]
    assert zh
    for item in zh:
        written = re.sub(r"<\d+\.\d seconds>", "", item["reply"] + " ".join(
            p["text"] for p in item["messages"][0]["content"] if p["type"] == "text"))
        assert CJK.search(written) and not re.search(r"[A-Za-z0-9]", written.replace(item["voice"] or "", "")), item
        if "speech_input" in item["meta"]:
            pinyin = item["meta"]["speech_input"]
            assert not CJK.search(pinyin)
            assert re.fullmatch(r"([a-zü]+[1-5][,.?]? )*[a-zü]+[1-5][,.?]?", pinyin), pinyin
            assert reads_as_pinyin(pinyin), (pinyin, espeak_phonemes(pinyin))
    sample = "san1 shi2 qi1 jia1 er4 shi2 wu3 deng3 yu2 duo1 shao3?"
    assert reads_as_pinyin(sample)
    assert not reads_as_pinyin(sample, voice="cmn")  # plain cmn reads the tone digits aloud: the check sees it


@needs_espeak
def test_mandarin_number_pinyin_sounds_like_espeaks_reading_of_the_characters():
    """An independent check of the pinyin converter: espeak-ng's own dictionary reads the characters 0..100 the same.
    (One number per clause: espeak-ng drops syllables from very long unpunctuated clauses.)"""
    pinyin = "\n".join(numbers.pinyin(n) + "." for n in range(101))
    chars = "\n".join(numbers.chinese(n) + "。" for n in range(101))
    assert espeak_phonemes(pinyin).split("\n") == espeak_phonemes(chars).split("\n")
    assert reads_as_pinyin(pinyin)


ESPEAK_DICTIONARY_DIFFERS = {  # espeak-ng's own reading of these characters differs from the standard pinyin
    "我哥哥": "the second 哥 in a full tone, not neutral", "今天早上": "上 in a full tone, not neutral",
    "晚上": "上 in a full tone, not neutral", "个": "neutral tone (as in fast speech), not ge4",
    "睡觉": "觉 read as jue2 (to feel) instead of jiao4 (sleep)"}


@needs_espeak
def test_mandarin_lexicon_pinyin_matches_the_characters():
    """One tone-numbered syllable per character, and the same sounds as espeak-ng's reading of the characters
    except where its dictionary is known to differ."""
    words = list(text.ZH_WORDS)
    for word in words:
        assert re.fullmatch(r"([a-zü]+[1-5] )*[a-zü]+[1-5]", text.ZH_WORDS[word]) and \
            len(text.ZH_WORDS[word].split()) == len(word), word
    from_pinyin = espeak_phonemes("\n".join(text.ZH_WORDS[w] + "." for w in words)).split("\n")
    from_chars = espeak_phonemes("\n".join(w + "。" for w in words)).split("\n")
    differ = {w for w, a, b in zip(words, from_pinyin, from_chars) if a != b}
    assert differ == set(ESPEAK_DICTIONARY_DIFFERS)


@needs_espeak
def test_every_mandarin_template_reads_as_pinyin():
    utterances = []
    for i in range(120):
        rng = random.Random(i)
        split = ("train", "eval")[i % 2]
        utterances += [text.sentence(rng, split, "zh")[1], text.arithmetic(rng, split, "zh").question,
                       text.counting(rng, split, "zh").question]
    assert reads_as_pinyin("\n".join(u.speech for u in utterances))


# --- audio ---------------------------------------------------------------------------------------------------

@needs_espeak
def test_audio_is_24khz_speech_of_plausible_length(runs):
    for item in all_items(runs):
        paths = [p["audio"] for p in item["messages"][0]["content"] if p["type"] == "audio"]
        paths += [item[k] for k in ("target_speech",) if k in item]
        for path in paths:
            info = soundfile.info(path)
            assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
            wave, _ = soundfile.read(path, dtype="float32")
            seconds = len(wave) / 24000
            assert np.sqrt(np.mean(wave**2)) > 0.02, path
            spoken = item["reply"] if path == item.get("target_speech") or item["task"] == "transcribe" else None
            if spoken:
                units = len(CJK.findall(spoken)) if item["language"] == "zh" else len(spoken.split())
                assert 0.12 * units < seconds < 1.0 * units + 1.0, (spoken, seconds)
            assert 0.5 < seconds < 20
    wave = speak("Hello there.", ROSTER[0])
    assert wave.dtype == np.float32 and wave.ndim == 1 and 0.5 < len(wave) / 24000 < 3


# --- images --------------------------------------------------------------------------------------------------

def pixel_scene(image: np.ndarray) -> dict[tuple[int, int], tuple[str, str]]:
    """(row, col) -> (colour, kind) read from the pixels alone: the colour at each cell centre, the kind from the
    bounding-box corners (a square fills its top corners, a triangle only its bottom ones, a circle neither)."""
    found = {}
    by_rgb = {rgb: name for name, rgb in scenes.COLOURS.items()}
    r = scenes.RADIUS - 1
    for row in range(scenes.GRID):
        for col in range(scenes.GRID):
            x, y = col * scenes.CELL + scenes.CELL // 2, row * scenes.CELL + scenes.CELL // 2
            colour = by_rgb.get(tuple(int(v) for v in image[y, x]))
            if colour is None:
                assert tuple(image[y, x]) == scenes.BACKGROUND
                continue
            filled = [tuple(int(v) for v in image[py, px]) != scenes.BACKGROUND
                      for px, py in ((x - r, y - r), (x - r, y + r))]
            found[(row, col)] = (colour, {(True, True): "square", (False, True): "triangle",
                                          (False, False): "circle"}[tuple(filled)])
    return found


EN_POSITIONS = {(0, 0): "in the top left", (0, 1): "at the top", (0, 2): "in the top right", (1, 0): "on the left",
                (1, 1): "in the middle", (1, 2): "on the right", (2, 0): "in the bottom left",
                (2, 1): "at the bottom", (2, 2): "in the bottom right"}


def check_image_answer(image: np.ndarray, lang: str, answer: str, meta: dict, shapes_meta: list[dict]) -> None:
    seen = pixel_scene(image)
    assert seen == {(s["row"], s["col"]): (s["colour"], s["kind"]) for s in shapes_meta}
    shapes = {cell: scenes.Shape(c, k, *cell) for cell, (c, k) in seen.items()}
    q = meta["question"]
    if q == "what":
        assert scenes.phrase(shapes[tuple(meta["cell"])], lang) in answer
    elif q == "where":
        (cell,) = [cell for cell, look in seen.items() if look == (meta["colour"], meta["kind"])]
        assert list(cell) == meta["cell"]
        if lang == "en":
            assert answer.endswith(f" is {EN_POSITIONS[cell]}.")
    else:
        count = {"count_all": len(seen), "count_colour": sum(c == meta.get("colour") for c, _ in seen.values()),
                 "count_kind": sum(k == meta.get("kind") for _, k in seen.values())}[q]
        assert count == meta["count"] >= 1
        word = {"en": numbers.english(count), "zh": numbers.chinese(count, measure=True) + "个",
                "es": numbers.spanish(count, "f" if q != "count_kind" else "m")}[lang]
        assert f"{word} " in answer or (lang == "zh" and word in answer), (answer, count)
        if lang == "en":
            assert answer.startswith("There is one " if count == 1 else "There are ")


def test_image_answers_match_the_drawn_pixels(runs):
    items = of_task(runs, "image_qa")
    assert items
    for item in items:
        image = np.asarray(Image.open(item["messages"][0]["content"][0]["image"]).convert("RGB"))
        assert image.shape == (scenes.SIZE, scenes.SIZE, 3)
        check_image_answer(image, item["language"], item["reply"], item["meta"], item["meta"]["shapes"])
    questions = set()
    for i in range(150):
        rng = random.Random(i)
        shapes = scenes.random_shapes(rng, rng.randint(1, 3))
        lang = text.LANGUAGES[i % 3]
        _, answer, meta = scenes.question(rng, shapes, lang)
        questions.add(meta["question"])
        check_image_answer(np.asarray(scenes.draw_scene(shapes)), lang, answer, meta, scenes.shape_meta(shapes))
    assert questions == set(scenes.QUESTIONS)


# --- videos --------------------------------------------------------------------------------------------------

def decoded_presence(path: str, shapes: list[dict]) -> tuple[list[float], list[set[int]]]:
    """Frame times and, per frame, the shapes whose colour shows at their centre (within codec error)."""
    times, present = [], []
    with av.open(path) as container:
        for frame in container.decode(video=0):
            pixels = frame.to_ndarray(format="rgb24").astype(int)
            times.append(float(frame.time))
            present.append({i for i, s in enumerate(shapes)
                            if np.abs(pixels[s["center"][1], s["center"][0]] - scenes.COLOURS[s["colour"]]).max() < 40})
    return times, present


def test_video_segments_and_captions_match_the_frames(runs):
    items = of_task(runs, "video_caption") + of_task(runs, "video_segments")
    assert items
    for item in items:
        meta = item["meta"]
        path = item["messages"][0]["content"][0]["video"]
        times, present = decoded_presence(path, meta["shapes"])
        assert len(times) == round(meta["duration"] * meta["fps"]) and 4 <= meta["duration"] <= 8
        np.testing.assert_allclose(times, np.arange(len(times)) / meta["fps"])
        step = 1 / meta["fps"]
        for seg in meta["segments"]:
            for t, shown in zip(times, present):
                if seg["start"] + step <= t < seg["end"] - step:  # away from the cuts (one frame either side)
                    assert shown == set(seg["shapes"]), (item["id"], t, seg)
        for i, s in enumerate(meta["shapes"]):
            inside = [t for t, shown in zip(times, present) if i in shown]
            assert inside and s["appear"] - step <= min(inside) <= s["appear"] + step
            assert s["leave"] - 2 * step <= max(inside) <= s["leave"]  # the last frame shown is before `leave`
            for t, shown in zip(times, present):
                if abs(t - s["appear"]) > step and abs(t - s["leave"]) > step:
                    assert (i in shown) == (s["appear"] <= t < s["leave"]), (item["id"], t, s)
        stamps = [float(x) for x in re.findall(r"^<(\d+\.\d) seconds>", item["reply"], flags=re.M)]
        if item["task"] == "video_caption":
            events = sorted([s["appear"] for s in meta["shapes"]] +
                            [s["leave"] for s in meta["shapes"] if s["leave"] < meta["duration"]])
            assert stamps == events
            if item["language"] == "en":
                for line in item["reply"].splitlines():
                    t, colour, kind, verb = re.fullmatch(r"<(\S+) seconds> (?:A|The) (\w+) (\w+) (appears|leaves)\.",
                                                         line).groups()
                    (s,) = [s for s in meta["shapes"] if (s["colour"], s["kind"]) == (colour, kind)]
                    assert float(t) == s["appear" if verb == "appears" else "leave"]
        else:
            assert stamps == [seg["start"] for seg in meta["segments"]]
            assert meta["segments"][0]["start"] == 0 and meta["segments"][-1]["end"] == meta["duration"]


def test_processor_video_loader_agrees_on_timing(runs):
    from omnistream.vision.video import load_video

    item = of_task(runs, "video_segments")[0]
    video = load_video(item["messages"][0]["content"][0]["video"])
    assert video.duration == pytest.approx(item["meta"]["duration"])
    assert video.fps == videos.FPS


# --- errors --------------------------------------------------------------------------------------------------

def test_bad_options_raise_data_errors(tmp_path):
    with pytest.raises(DataError, match="--num must be a whole number >= 1, got 0"):
        synthesize(tmp_path, 0, num=0)
    with pytest.raises(DataError, match=r"unknown task 'dance'; choose from transcribe, .*video_segments"):
        synthesize(tmp_path, 0, tasks=["image_qa", "dance"])
    with pytest.raises(DataError, match="unknown split 'test'"):
        synthesize(tmp_path, 0, split="test")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match=f"cannot write to --out {blocker / 'out'}"):
        synthesize(blocker / "out", 0, num=1, tasks=["image_qa"])


def test_missing_espeak_or_voice_is_a_clear_error(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(voices_mod.shutil, "which", lambda name: None)
        voices_mod._installed.cache_clear()
        with pytest.raises(DataError, match="espeak-ng is not installed .*apt-get install espeak-ng"):
            synthesize(tmp_path / "a", 0, num=2, tasks=["transcribe"])
        path = synthesize(tmp_path / "b", 0, num=2, tasks=["image_qa", "video_caption"])  # no speech: no espeak
        assert len(path.read_text().splitlines()) == 2
    voices_mod._installed.cache_clear()
    if not HAVE_ESPEAK:
        return
    with pytest.raises(DataError, match="voice Zed: espeak-ng has no variant 'zz'"):
        check_voice(Voice("Zed", "en", "en", "zz", 50, 160, "train"))
    with pytest.raises(DataError, match="voice Zed: espeak-ng has no language voice 'xx-nowhere'"):
        speak("hello", Voice("Zed", "en", "xx-nowhere", "m1", 50, 160, "train"))


def test_main_exit_codes_and_messages(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "ok"), "--seed", "3", "--num", "2", "--tasks", "image_qa,video_caption",
                 "--workers", "1"]) == 0
    assert "wrote 2 train items" in capsys.readouterr().err
    lines = (tmp_path / "ok" / "train.jsonl").read_text().splitlines()
    assert [json.loads(line)["task"] for line in lines] == ["image_qa", "video_caption"]
    assert main(["--out", str(tmp_path / "bad"), "--seed", "3", "--num", "0"]) == 2
    assert capsys.readouterr().err.strip() == "omnistream: error: --num must be a whole number >= 1, got 0"
    assert main(["--out", str(tmp_path / "bad"), "--seed", "3", "--tasks", "juggling"]) == 2
    assert "omnistream: error: unknown task 'juggling'" in capsys.readouterr().err
