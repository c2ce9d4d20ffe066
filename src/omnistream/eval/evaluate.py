"""The evaluation: run a checkpoint (and optionally its fixed-rate twin) on held-out items and score everything.

Scores (see metrics.py for the text rules):
- ASR: WER (en, es) / CER (zh) of the Thinker's transcript of `transcribe` items; beside it the Whisper judge's
  error on the same input clips, as a reference point.
- Spoken questions (`arithmetic`, `counting`): accuracy of the Thinker's answers, per language.
- TTS: the session says each `read_aloud` / `voice_clone` reply; the Whisper judge transcribes it and its
  WER/CER against the reply is compared with the judge's error on espeak-ng's own audio of the same sentence
  (the item's target_speech): the floor. ARIA vs the fixed-rate twin: the same for both, with talker stalls.
- Voice clone: Resemblyzer similarity of the cloned speech to the reference clip, and its highest similarity to
  the centroid of any other voice of the data (all clips by that voice in the split's file); the same for
  espeak-ng's target speech as the floor.
- Image questions: accuracy; video: caption events and segments within 0.5 s.
Every acceptance criterion of the evaluation is listed with its measured value and whether it passes.
"""

from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image, UnidentifiedImageError

from ..audio.io import AudioInputError, load_audio
from ..data.synth import read_items
from ..data.tasks import TASKS
from . import metrics

TTS_TASKS = ("read_aloud", "voice_clone")
QUESTION_TASKS = ("arithmetic", "counting")
TOLERANCE_S = 0.5
JUDGE_FLOOR_LIMIT = 1.0  # a floor above 100% error: the judge hallucinates on the language, no TTS verdict
VOICE_BANK_CLIPS = 4  # clips per voice in the other-voices centroids


class EvalError(ValueError):
    """Bad input to `omnistream eval`: missing or unreadable data, media or options."""


# ----------------------------------------------------------------------------------------------- inputs
def load_items(data: str | Path, split: str = "eval", num: int | None = None,
               tasks: tuple[str, ...] | None = None) -> tuple[list[dict], list[dict]]:
    """(the items to evaluate, every item of the split's file) from DIR/{split}.jsonl, media paths absolute."""
    directory = Path(data)
    path = directory / f"{split}.jsonl"
    if not directory.is_dir():
        raise EvalError(f"--data {directory}: no such directory (make one with `omnistream data synth --out "
                        f"{directory} --seed 1 --split {split}`)")
    if not path.is_file():
        raise EvalError(f"--data {directory} has no {split}.jsonl (make it with `omnistream data synth --out "
                        f"{directory} --seed 1 --split {split}`)")
    try:
        every = read_items(path)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise EvalError(f"{path}: not a data file written by `omnistream data synth` ({type(e).__name__}: {e})") \
            from None
    if tasks:
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise EvalError(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    chosen = [i for i in every if not tasks or i.get("task") in tasks]
    if num is not None:
        if num < 1:
            raise EvalError(f"--num must be at least 1, got {num}")
        chosen = chosen[:num]
    if not chosen:
        raise EvalError(f"{path} has no items" + (f" of the tasks {', '.join(tasks)}" if tasks else ""))
    return chosen, every


def _media(item: dict) -> list[tuple[str, str]]:
    """(kind, path) of every media file an item uses: its prompt's parts and its speech targets."""
    found = [(p["type"], p[p["type"]]) for p in item["messages"][0]["content"] if p["type"] in ("audio", "image",
                                                                                                  "video")]
    found += [("speech", item[k]) for k in ("target_speech", "reference_speech") if item.get(k)]
    return found


def check_items(items: list[dict]) -> None:
    """Refuse, before any model runs, items whose media are missing, unreadable or (audio) hold no speech."""
    from ..voice import MIN_SPEECH_SECONDS, speech_seconds

    for item in items:
        for kind, path in _media(item):
            where = f"item {item.get('id')} ({item.get('task')}): {kind} {path}"
            if not Path(path).is_file():
                raise EvalError(f"{where}: no such file")
            if kind in ("audio", "speech"):
                try:
                    wave = load_audio(path, target_rate=16000, max_seconds=600)
                except AudioInputError as e:
                    raise EvalError(f"{where}: unsupported or unreadable audio ({e})") from None
                heard = speech_seconds(wave, 16000)
                if heard < MIN_SPEECH_SECONDS:
                    raise EvalError(f"{where} has no speech ({heard:.2f} s of speech-like sound; at least "
                                    f"{MIN_SPEECH_SECONDS} s is needed)")
            elif kind == "image":
                try:
                    with Image.open(path) as im:
                        im.verify()
                except (UnidentifiedImageError, OSError) as e:
                    raise EvalError(f"{where}: unsupported or unreadable image ({e})") from None
            elif kind == "video":
                import av

                try:
                    with av.open(path) as container:
                        if not container.streams.video:
                            raise EvalError(f"{where}: the file has no video stream")
                except av.error.FFmpegError as e:
                    raise EvalError(f"{where}: unsupported or unreadable video ({e})") from None


def _read_wave(path: str) -> tuple[np.ndarray, int]:
    wave, rate = soundfile.read(path, dtype="float32", always_2d=True)
    return wave.mean(axis=1), rate


def _mean(values) -> float:
    found = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(found)) if found else float("nan")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- evaluation
def _by_language(records: list[dict], score: Callable[[list[dict]], dict]) -> dict:
    """score() of each language's records and of all of them ("all")."""
    out = {}
    for lang in sorted({r["language"] for r in records}):
        out[lang] = score([r for r in records if r["language"] == lang])
    if records:
        out["all"] = score(records)
    return out


def _wer_score(key: str) -> Callable[[list[dict]], dict]:
    def score(records):
        pairs = [(r[key], r["reference"], r["language"]) for r in records if r.get(key) is not None]
        return {"n": len(records), "error_rate": metrics.corpus_error_rate(pairs)}
    return score


def _accuracy(records: list[dict]) -> dict:
    return {"n": len(records), "accuracy": metrics.rate(sum(r["correct"] for r in records), len(records))}


def _question_score(records: list[dict]) -> dict:
    """Accuracy, the share whose think block heard the question word for word, and the accuracy of each share:
    what hearing costs and what reasoning costs."""
    heard = [r for r in records if r["heard"]]
    misheard = [r for r in records if not r["heard"]]
    return {**_accuracy(records), "heard": metrics.rate(len(heard), len(records)),
            "accuracy_heard": _accuracy(heard)["accuracy"], "accuracy_misheard": _accuracy(misheard)["accuracy"]}


def _timing(records: list[dict]) -> dict:
    hits, total = sum(r["hits"] for r in records), sum(r["total"] for r in records)
    errors = [e for r in records for e in r["errors"]]
    return {"n": len(records), "within": metrics.rate(hits, total), "hits": hits, "total": total,
            "mean_error_s": _mean(errors)}


class Evaluation:
    """Scores of one run; `run()` fills `results` (JSON-ready) and returns it."""

    def __init__(self, runner, items: list[dict], every: list[dict], judge=None, speaker=None, twin=None,
                 audio_dir: Path | None = None):
        self.runner, self.items, self.every = runner, items, every
        self.judge, self.speaker, self.twin = judge, speaker, twin
        self.audio_dir = audio_dir
        self._floor: dict[str, str] = {}
        self._embeddings: dict[str, np.ndarray | None] = {}

    # ------------------------------------------------------------------ helpers
    def _judge(self, wave: np.ndarray, rate: int, lang: str) -> str | None:
        return None if self.judge is None else self.judge.transcribe(wave, rate, lang)

    def _floor_text(self, item: dict) -> str | None:
        """The judge's transcript of espeak-ng's audio of the item's reply (its target_speech), once per item."""
        if self.judge is None or not item.get("target_speech"):
            return None
        if item["id"] not in self._floor:
            self._floor[item["id"]] = self._judge(*_read_wave(item["target_speech"]), item["language"])
        return self._floor[item["id"]]

    def _embed_file(self, path: str):
        if path not in self._embeddings:
            self._embeddings[path] = self.speaker.embed(*_read_wave(path))
        return self._embeddings[path]

    def _voice_bank(self) -> dict[str, list[str]]:
        """Up to VOICE_BANK_CLIPS clips of each voice of the split's file (inputs, references, targets)."""
        clips: dict[str, list[str]] = defaultdict(list)
        for item in self.every:
            voice = item.get("voice")
            own = [p["audio"] for p in item["messages"][0]["content"] if p["type"] == "audio"]
            if item["task"] in TTS_TASKS:
                own = [item["target_speech"]] + ([item["reference_speech"]] if item.get("reference_speech") else [])
            if voice:
                clips[voice] += own
            answer_voice = item.get("meta", {}).get("answer_voice")
            if answer_voice and item.get("target_speech"):
                clips[answer_voice].append(item["target_speech"])
        return {voice: list(dict.fromkeys(paths))[:VOICE_BANK_CLIPS] for voice, paths in sorted(clips.items())}

    def _centroid(self, paths: list[str], leave_out: tuple[str, ...] = ()):
        """The centroid embedding of clips (those in `leave_out` left out), None when none has voiced audio."""
        from .speaker import mean_embedding

        return mean_embedding(self._embed_file(p) for p in paths if p not in leave_out)

    def _save(self, name: str, wave: np.ndarray) -> str | None:
        if self.audio_dir is None:
            return None
        self.audio_dir.mkdir(parents=True, exist_ok=True)
        path = self.audio_dir / f"{name}.wav"
        soundfile.write(path, wave, 24000)
        return str(path)

    # ------------------------------------------------------------------ tasks
    def _text_records(self, tasks: tuple[str, ...]) -> list[dict]:
        records = []
        for item in [i for i in self.items if i["task"] in tasks]:
            self.runner.check_media(item)
            thought, hyp, seconds = self.runner.text(item)
            _log(f"  {item['id']} {item['task']} {item['language']}: {seconds:.1f} s: {hyp[:60]!r}")
            records.append({"id": item["id"], "task": item["task"], "language": item["language"],
                            "reference": item["reply"], "thought": thought, "hypothesis": hyp, "seconds": seconds,
                            "item": item})
        return records

    def asr(self) -> dict:
        records = self._text_records(("transcribe",))
        for r in records:
            r["error_rate"] = metrics.error_rate(r["hypothesis"], r["reference"], r["language"])
            audio = next(p["audio"] for p in r["item"]["messages"][0]["content"] if p["type"] == "audio")
            r["judge"] = self._judge(*_read_wave(audio), r["language"]) if self.judge else None
        return {"per_language": _by_language(records, _wer_score("hypothesis")),
                "judge_per_language": _by_language(records, _wer_score("judge")) if self.judge else None,
                "items": records}

    def questions(self) -> dict:
        records = self._text_records(QUESTION_TASKS)
        for r in records:
            r["expected"] = r["item"]["meta"]["result"]
            r["correct"] = metrics.answer_correct(r["hypothesis"], r["reference"], r["language"])
            heard = r["thought"].split("\n", 1)[0].strip()
            r["heard"] = bool(heard) and metrics.error_rate(heard, r["item"]["meta"]["question"], r["language"]) == 0
        return {"per_language": _by_language(records, _question_score), "items": records}

    def image_qa(self) -> dict:
        records = self._text_records(("image_qa",))
        for r in records:
            r["question"] = r["item"]["meta"]["question"]
            r["correct"] = metrics.image_answer_correct(r["hypothesis"], r["reference"], r["question"],
                                                        r["language"])
        return {"per_language": _by_language(records, _accuracy), "items": records}

    def video(self) -> dict:
        records = self._text_records(("video_caption", "video_segments"))
        for r in records:
            if r["task"] == "video_segments":
                s = metrics.segment_score(metrics.parse_segments(r["hypothesis"]),
                                          metrics.parse_segments(r["reference"]), TOLERANCE_S)
            else:
                s = metrics.event_score(metrics.parse_events(r["hypothesis"]), metrics.parse_events(r["reference"]),
                                        TOLERANCE_S)
            r.update(hits=s.hits, total=s.total, reference_count=s.reference, predicted_count=s.predicted,
                     errors=s.errors)
        segs = [r for r in records if r["task"] == "video_segments"]
        caps = [r for r in records if r["task"] == "video_caption"]
        return {"segments": _by_language(segs, _timing), "captions": _by_language(caps, _timing), "items": records}

    def tts(self, runner, label: str) -> dict:
        """Speak every TTS item with `runner`, judge it, and compare with the floor."""
        records = []
        for item in [i for i in self.items if i["task"] in TTS_TASKS]:
            spoken = runner.speak(item)
            heard = self._judge(spoken.pcm, 24000, item["language"]) if self.judge else None
            floor = self._floor_text(item)
            r = {"id": item["id"], "task": item["task"], "language": item["language"], "reference": item["reply"],
                 "voice": spoken.voice, "judged": heard, "floor": floor, "stalls": spoken.stalls,
                 "frames": spoken.frames, "audio_seconds": spoken.pcm.size / 24000, "seconds": spoken.seconds,
                 "audio": self._save(f"{label}-{item['id']}", spoken.pcm), "item": item, "pcm": spoken.pcm}
            if heard is not None:
                r["error_rate"] = metrics.error_rate(heard, item["reply"], item["language"])
                r["floor_error_rate"] = metrics.error_rate(floor, item["reply"], item["language"])
            _log(f"  [{label}] {item['id']} {item['task']} {item['language']}: {r['audio_seconds']:.1f} s of "
                 f"speech in {spoken.seconds:.1f} s, {spoken.stalls:.0f} stalls; judge: {heard!r}")
            records.append(r)

        def score(rs):
            out = {"n": len(rs), "stalls_mean": _mean([r["stalls"] for r in rs]),
                   "frames_mean": _mean([r["frames"] for r in rs]),
                   "rtf": (sum(r["seconds"] for r in rs) / max(sum(r["audio_seconds"] for r in rs), 1e-9))}
            if self.judge is not None:
                out["error_rate"] = metrics.corpus_error_rate((r["judged"], r["reference"], r["language"]) for r in rs)
                out["floor"] = metrics.corpus_error_rate((r["floor"], r["reference"], r["language"]) for r in rs)
            return out

        return {"label": label, "checkpoint": str(runner.directory), "interleave": runner.interleave,
                "per_language": _by_language(records, score), "items": records}

    def similarity(self, tts_records: list[dict]) -> dict | None:
        """Voice-clone and named-voice similarity of the spoken replies (and of espeak-ng's targets: the floor)."""
        if self.speaker is None:
            return None
        from .speaker import cosine

        bank = self._voice_bank()
        records = []
        for r in tts_records:
            item = r["item"]
            voice = item.get("voice")
            out = self.speaker.embed(r["pcm"], 24000)
            target = self._embed_file(item["target_speech"]) if item.get("target_speech") else None
            if item["task"] == "voice_clone":
                ref = self._embed_file(item["reference_speech"])
            else:  # the named voice's other clips (its own target left out)
                ref = self._centroid(bank.get(voice, []), leave_out=(item.get("target_speech"),))
            others = [self._centroid(paths) for v, paths in bank.items() if v != voice]

            def best_other(e):
                sims = [s for s in (cosine(e, c) for c in others) if not math.isnan(s)]
                return max(sims) if sims else float("nan")

            records.append({"id": r["id"], "task": r["task"], "language": r["language"], "voice": voice,
                            "own": cosine(out, ref), "other": best_other(out),
                            "floor_own": cosine(target, ref), "floor_other": best_other(target)})

        def score(rs):
            own = [r["own"] for r in rs]
            other = [r["other"] for r in rs]
            above = [o > x for o, x in zip(own, other) if not (math.isnan(o) or math.isnan(x))]
            return {"n": len(rs), "own": _mean(own), "other": _mean(other),
                    "above_rate": metrics.rate(sum(above), len(above)),
                    "floor_own": _mean([r["floor_own"] for r in rs]),
                    "floor_other": _mean([r["floor_other"] for r in rs])}

        clone = [r for r in records if r["task"] == "voice_clone"]
        named = [r for r in records if r["task"] == "read_aloud"]
        return {"voice_clone": _by_language(clone, score), "read_aloud": _by_language(named, score),
                "voices": sorted(bank), "items": records}

    # ------------------------------------------------------------------ all
    def run(self) -> dict:
        tasks = {i["task"] for i in self.items}
        results: dict = {"counts": {t: sum(i["task"] == t for i in self.items) for t in sorted(tasks)}}
        stages = [("asr", "transcribe" in tasks, self.asr), ("questions", bool(tasks & set(QUESTION_TASKS)),
                                                              self.questions),
                  ("image_qa", "image_qa" in tasks, self.image_qa),
                  ("video", bool(tasks & {"video_caption", "video_segments"}), self.video)]
        for name, wanted, stage in stages:
            if wanted:
                start = time.perf_counter()
                _log(f"{name} ...")
                results[name] = stage()
                _log(f"{name}: {time.perf_counter() - start:.1f} s")
        if tasks & set(TTS_TASKS):
            _log("tts ...")
            main = self.tts(self.runner, "model")
            results["tts"] = [main]
            if self.twin is not None:
                results["tts"].append(self.tts(self.twin, "twin"))
            results["similarity"] = self.similarity(main["items"])
        results["acceptance"] = acceptance(results, judge=self.judge is not None, speaker=self.speaker is not None)
        for section in results.values():  # arrays and items are for the run only, not for results.json
            for entry in (section if isinstance(section, list) else [section]):
                if isinstance(entry, dict):
                    for r in entry.get("items", []):
                        if isinstance(r, dict):
                            r.pop("item", None)
                            r.pop("pcm", None)
        return results


def judge_floor(items: list[dict], judge) -> dict:
    """The judge alone on espeak-ng's audio of the TTS items' replies (target_speech): its floor per language."""
    records = []
    for item in [i for i in items if i["task"] in TTS_TASKS and i.get("target_speech")]:
        start = time.perf_counter()
        heard = judge.transcribe(*_read_wave(item["target_speech"]), item["language"])
        records.append({"id": item["id"], "task": item["task"], "language": item["language"], "voice": item["voice"],
                        "reference": item["reply"], "floor": heard, "seconds": time.perf_counter() - start,
                        "error_rate": metrics.error_rate(heard, item["reply"], item["language"])})
        _log(f"  {item['id']} {item['language']} {item['voice']}: {heard!r} ({records[-1]['error_rate']:.2f})")

    def score(rs):
        return {"n": len(rs), "error_rate": metrics.corpus_error_rate((r["floor"], r["reference"], r["language"])
                                                                      for r in rs),
                "seconds_per_clip": _mean([r["seconds"] for r in rs])}

    return {"per_language": _by_language(records, score), "items": records}


def _check(rows: list, name: str, value: float, target: str, ok: bool | None,
           counted: tuple[int, int] | None = None) -> None:
    """One criterion; a rate measured as hits of `counted` = (hits, total) also gets its count and 95% interval."""
    row = {"criterion": name, "measured": value, "target": target,
           "pass": None if ok is None or (isinstance(value, float) and math.isnan(value)) else bool(ok)}
    if counted is not None and counted[1]:
        row.update(count=counted[1], interval=list(metrics.wilson_interval(*counted)))
    rows.append(row)


def _fmt(value: float, spec: str, scale: float = 1.0, unit: str = "") -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value * scale:{spec}}{unit}"


def _counted(rate: float, n: int) -> tuple[int, int] | None:
    """(hits, n) of an accuracy over n items; None when it was not measured."""
    return None if not n or math.isnan(rate) else (round(rate * n), n)


def acceptance(results: dict, judge: bool = True, speaker: bool = True) -> list[dict]:
    """The evaluation's acceptance criteria with measured values (NaN / pass None when not measured)."""
    rows: list[dict] = []
    nan = float("nan")
    asr = results.get("asr", {}).get("per_language", {}).get("all", {}).get("error_rate", nan)
    _check(rows, "ASR WER/CER (held-out voices and sentences)", asr, "<= 10%", asr <= 0.10)
    q = results.get("questions", {}).get("per_language", {})
    for lang, name in (("en", "English"), ("zh", "Mandarin")):
        acc, n = q.get(lang, {}).get("accuracy", nan), q.get(lang, {}).get("n", 0)
        _check(rows, f"spoken-question accuracy, {name}", acc, ">= 90%", acc >= 0.90, _counted(acc, n))
    tts = (results.get("tts") or [{}])[0].get("per_language", {})
    for lang in [k for k in tts if k != "all"] + (["all"] if "all" in tts else []):
        wer, floor = tts[lang].get("error_rate", nan), tts[lang].get("floor", nan)
        usable = floor <= JUDGE_FLOOR_LIMIT  # a judge that fails on espeak-ng's own audio cannot judge the model
        gap = (wer - floor) * 100 if judge and usable else nan
        _check(rows, f"TTS WER/CER by the Whisper judge minus its floor on espeak-ng ({lang}; floor "
                     f"{_fmt(floor, '.1f', 100, '%')}{'' if usable else ': the judge cannot hear this language'})",
               gap, "<= 5 points", gap <= 5)
    sim = (results.get("similarity") or {}).get("voice_clone", {}).get("all", {}) if speaker else {}
    own, other = sim.get("own", nan), sim.get("other", nan)
    _check(rows, "voice-clone similarity to the reference", own, ">= 0.75", own >= 0.75)
    margin = own - other
    _check(rows, f"voice-clone similarity minus the highest similarity to another voice (mean other "
                 f"{_fmt(other, '.3f')}; {_fmt(sim.get('above_rate', nan), '.0f', 100, '%')} of items above)",
           margin, "> 0", margin > 0)
    img = results.get("image_qa", {}).get("per_language", {}).get("all", {})
    acc = img.get("accuracy", nan)
    _check(rows, "image-question accuracy", acc, ">= 90%", acc >= 0.90, _counted(acc, img.get("n", 0)))
    for kind, name in (("segments", "video segments with both boundaries"), ("captions", "caption events")):
        timing = results.get("video", {}).get(kind, {}).get("all", {})
        within = timing.get("within", nan)
        _check(rows, f"{name} within {TOLERANCE_S} s", within, ">= 90%", within >= 0.90,
               (timing["hits"], timing["total"]) if "hits" in timing else None)
    return rows


__all__ = ["EvalError", "Evaluation", "acceptance", "check_items", "judge_floor", "load_items"]
