"""The evaluation report: report.md (tables), plots/*.png (bar charts drawn with PIL) and results.json (NaN as null).

Bar charts follow train/plot.py's look: white background, one framed panel, the same colour cycle, names in a
legend on the right; a dashed grey line marks a criterion's threshold.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

from ..train.plot import COLOURS

LANG_NAMES = {"en": "English", "zh": "Mandarin", "es": "Spanish", "all": "all"}


def bar_chart(path: str | Path, title: str, groups: list[str], series: dict[str, list[float]],
              threshold: float | None = None, ylabel: str = "", ymax: float | None = None,
              size: tuple[int, int] = (800, 420)) -> None:
    """Grouped bars: one group per x label, one bar per series (NaN values are left out, marked "n/a")."""
    w, h = size
    left, right, top, bottom = 70, 190, 36, 44
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.text((left, 10), title, fill="black")
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    hi = ymax if ymax is not None else max(values + ([threshold] if threshold is not None else []) + [1e-9])
    hi = hi * (1.0 if ymax is not None else 1.1) or 1.0
    lo = min(0.0, min(values, default=0.0))

    def y_of(v: float) -> float:
        return h - bottom - (v - lo) / (hi - lo) * (h - top - bottom)

    for i in range(5):  # y ticks
        v = lo + (hi - lo) * i / 4
        y = y_of(v)
        d.line([left - 4, y, left, y], fill="black")
        d.text((4, y - 6), f"{v:.3g}", fill="black")
    d.text((4, top - 16), ylabel, fill="black")
    n_groups, n_series = max(len(groups), 1), max(len(series), 1)
    slot = (w - left - right) / n_groups
    bar = slot * 0.8 / n_series
    zero = y_of(max(lo, 0.0))
    for g, name in enumerate(groups):
        x0 = left + g * slot + slot * 0.1
        d.text((left + g * slot + slot / 2 - 3 * len(name), h - bottom + 8), name, fill="black")
        for s, (label, vs) in enumerate(series.items()):
            v = vs[g] if g < len(vs) else None
            bx = x0 + s * bar
            if v is None or not math.isfinite(v):
                d.text((bx + 2, zero - 14), "n/a", fill=(127, 127, 127))
                continue
            y = y_of(min(v, hi))
            d.rectangle([bx + 1, min(y, zero), bx + bar - 1, max(y, zero)], fill=COLOURS[s % len(COLOURS)])
            d.text((bx + 2, min(y, zero) - 12), f"{v:.3g}", fill="black")
    if threshold is not None and lo <= threshold <= hi:
        y = y_of(threshold)
        for x in range(left, w - right, 10):
            d.line([x, y, min(x + 5, w - right), y], fill=(127, 127, 127), width=1)
        d.text((w - right + 10, y - 6), f"target {threshold:g}", fill=(127, 127, 127))
    for s, label in enumerate(series):
        d.text((w - right + 10, top + 16 * s), label, fill=COLOURS[s % len(COLOURS)])
    img.save(path)


# ----------------------------------------------------------------------------------------------- markdown
def _pct(v) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v * 100:.1f}%"


def _num(v, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _cell(value) -> str:
    """A table cell: pipes escaped, newlines shown as ⏎, control and unprintable characters as U+FFFD."""
    text = str(value).replace("|", "\\|").replace("\n", " ⏎ ")
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _langs(per: dict) -> list[str]:
    return [k for k in per if k != "all"] + (["all"] if "all" in per else [])


def _samples(records: list[dict], keys: list[tuple[str, str]], n: int = 6) -> list[str]:
    rows = [[r.get(k, "") if not isinstance(r.get(k), float) else _num(r[k]) for _, k in keys] for r in records[:n]]
    return _table([h for h, _ in keys], rows) if rows else []


def _measured(row: dict) -> str:
    v = row["measured"]
    if v is None or not math.isfinite(v):
        return "n/a"
    if "points" in row["target"]:
        return f"{v:+.1f} points"
    if "similarity" in row["criterion"]:
        return f"{v:.3f}"
    return _pct(v)


def _interval(row: dict) -> str:
    """"26 (71.0-96.0%)" for a counted rate, "" for other criteria."""
    if not row.get("count"):
        return ""
    lo, hi = row["interval"]
    return f"{row['count']} ({lo * 100:.1f}-{hi * 100:.1f}%)"


def _plain(value):
    """JSON-ready: NaN and infinities as null, numpy scalars and tuples as plain values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(results: dict, out: str | Path) -> Path:
    """Write report.md, plots/*.png and results.json under `out`; return the report's path."""
    out = Path(out)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_plain(results), indent=1, ensure_ascii=False))
    meta = results.get("meta", {})
    md = ["# omnistream evaluation", ""]
    md += [f"- checkpoint: `{meta.get('checkpoint') or 'none (--floor-only)'}`" +
           (f" (fixed-rate twin: `{meta['twin']}`)" if meta.get("twin") else ""),
           f"- data: `{meta.get('data')}`, split `{meta.get('split')}`; items: " +
           ", ".join(f"{t} {n}" for t, n in results.get("counts", {}).items()),
           f"- speech judge: {meta.get('judge') or 'none (--no-judge)'}; speaker encoder: "
           f"{meta.get('speaker') or 'none (--no-speaker)'}",
           f"- took {meta.get('seconds', float('nan')):.0f} s on {meta.get('device')}", ""]
    if "ctc_weight" in meta:
        md.insert(-2, "- heard lines (transcripts, a think block's first line) decoded " +
                  (f"jointly with the audio's CTC reading at weight {meta['ctc_weight']}, beam "
                   f"{meta.get('ctc_beam') or 1}" if meta["ctc_weight"]
                   else "by the LM alone"))

    if "floor" in results:
        per = results["floor"]["per_language"]
        md += ["## Judge floor (espeak-ng's own speech)", "",
               "The Whisper judge on espeak-ng's audio of the data's read-aloud and voice-clone replies: the lowest "
               "TTS error it can be expected to report. WER for English and Spanish, CER for Mandarin.", ""]
        md += _table(["language", "sentences", "judge WER/CER", "seconds per clip"],
                     [[LANG_NAMES.get(k, k), per[k]["n"], _pct(per[k]["error_rate"]),
                       _num(per[k]["seconds_per_clip"], 2)] for k in _langs(per)])
        md += _samples(results["floor"]["items"], [("id", "id"), ("lang", "language"), ("voice", "voice"),
                                                   ("reference", "reference"), ("judge", "floor"),
                                                   ("error", "error_rate")], n=12)
        langs = _langs(per)
        bar_chart(plots / "floor.png", "Whisper judge error on espeak-ng speech (%)",
                  [LANG_NAMES.get(k, k) for k in langs], {"judge": [per[k]["error_rate"] * 100 for k in langs]},
                  ylabel="%")
        md += ["![floor](plots/floor.png)", ""]

    if results.get("acceptance"):
        md += ["## Acceptance", "", "A rate's count is what it was measured on (items, segments, events); its Wilson "
               "95% interval is the range of true rates that so many are consistent with.", ""]
        md += _table(["criterion", "measured", "count (95% interval)", "target", "pass"],
                     [[r["criterion"], _measured(r), _interval(r), r["target"],
                       "n/a" if r["pass"] is None else ("yes" if r["pass"] else "**no**")]
                      for r in results["acceptance"]])

    if "asr" in results:
        asr = results["asr"]
        per, judge = asr["per_language"], asr.get("judge_per_language") or {}
        md += ["## ASR (transcribe)", "", "WER for English and Spanish, CER for Mandarin; the judge's error on the "
               "same input clips is a reference point.", ""]
        md += _table(["language", "items", "model WER/CER", "Whisper judge on the inputs"],
                     [[LANG_NAMES.get(k, k), per[k]["n"], _pct(per[k]["error_rate"]),
                       _pct(judge.get(k, {}).get("error_rate"))] for k in _langs(per)])
        md += _samples(asr["items"], [("id", "id"), ("lang", "language"), ("reference", "reference"),
                                      ("model", "hypothesis"), ("error", "error_rate")])
        langs = _langs(per)
        series = {"model": [per[k]["error_rate"] * 100 for k in langs]}
        if judge:
            series["Whisper judge"] = [judge[k]["error_rate"] * 100 for k in langs]
        bar_chart(plots / "asr.png", "ASR error rate (%) by language", [LANG_NAMES.get(k, k) for k in langs],
                  series, threshold=10, ylabel="%")
        md += ["![ASR](plots/asr.png)", ""]

    if "questions" in results:
        q = results["questions"]
        per = q["per_language"]
        md += ["## Spoken questions (arithmetic, counting)", "",
               "An answer is right when it says the reference answer's numbers, in order (what was asked, then the "
               "result). Heard: the think block's first line is the question word for word (hearing); the last two "
               "columns split the accuracy by it (reasoning when heard, luck when not).", ""]
        md += _table(["language", "items", "accuracy", "heard", "accuracy when heard", "when misheard"],
                     [[LANG_NAMES.get(k, k), per[k]["n"], _pct(per[k]["accuracy"]), _pct(per[k].get("heard")),
                       _pct(per[k].get("accuracy_heard")), _pct(per[k].get("accuracy_misheard"))]
                      for k in _langs(per)])
        md += _samples(q["items"], [("id", "id"), ("lang", "language"), ("expected", "expected"),
                                    ("thought", "thought"), ("model", "hypothesis"), ("right", "correct")])
        langs = _langs(per)
        bar_chart(plots / "questions.png", "Spoken-question accuracy (%)", [LANG_NAMES.get(k, k) for k in langs],
                  {"accuracy": [per[k]["accuracy"] * 100 for k in langs]}, threshold=90, ylabel="%", ymax=100)
        md += ["![questions](plots/questions.png)", ""]

    if results.get("tts"):
        runs = results["tts"]
        md += ["## Speech output (read_aloud, voice_clone)", "",
               "Each reply is said by the streaming session (the reference text given); the Whisper judge "
               "transcribes it. The floor is the judge's error on espeak-ng's own audio of the same sentences.", ""]
        rows = []
        for run in runs:
            per = run["per_language"]
            for k in _langs(per):
                rows.append([f"{run['label']} ({run['interleave']})", LANG_NAMES.get(k, k), per[k]["n"],
                             _pct(per[k].get("error_rate")), _pct(per[k].get("floor")),
                             _num(per[k]["stalls_mean"], 1), _num(per[k]["frames_mean"], 1), _num(per[k]["rtf"], 2)])
        md += _table(["model", "language", "items", "TTS WER/CER", "floor (espeak-ng)", "stalls / reply",
                      "frames / reply", "RTF"], rows)
        md += _samples(runs[0]["items"], [("id", "id"), ("lang", "language"), ("reference", "reference"),
                                          ("judge on model", "judged"), ("judge on espeak-ng", "floor")])
        langs = _langs(runs[0]["per_language"])
        series = {f"{r['label']} ({r['interleave']})": [r["per_language"].get(k, {}).get("error_rate", math.nan) * 100
                                                        for k in langs] for r in runs}
        series["floor (espeak-ng)"] = [runs[0]["per_language"][k].get("floor", math.nan) * 100 for k in langs]
        bar_chart(plots / "tts.png", "TTS error rate by the Whisper judge (%)", [LANG_NAMES.get(k, k) for k in langs],
                  series, ylabel="%")
        md += ["![TTS](plots/tts.png)", ""]
        if len(runs) > 1:
            md += ["### ARIA vs the fixed-rate twin", ""]
            both = [(r, r["per_language"]["all"]) for r in runs]
            md += _table(["model", "interleave", "TTS WER/CER", "floor", "stalls / reply", "frames / reply"],
                         [[r["label"], r["interleave"], _pct(a.get("error_rate")), _pct(a.get("floor")),
                           _num(a["stalls_mean"], 1), _num(a["frames_mean"], 1)] for r, a in both])
            bar_chart(plots / "stalls.png", "Talker stalls per reply (steps that waited for text)",
                      ["stalls", "TTS WER %"],
                      {f"{r['label']} ({r['interleave']})": [r["per_language"]["all"]["stalls_mean"],
                                                             r["per_language"]["all"].get("error_rate", math.nan) * 100]
                       for r in runs})
            md += ["![stalls](plots/stalls.png)", ""]

    sim = results.get("similarity")
    if sim:
        md += ["## Speaker similarity (Resemblyzer)", "",
               "own: cosine similarity to the reference clip (voice_clone) or to the named voice's centroid "
               "(read_aloud); other: the highest similarity to another voice's centroid. The floor rows score "
               "espeak-ng's own target speech the same way.", ""]
        rows = []
        for task in ("voice_clone", "read_aloud"):
            per = sim.get(task) or {}
            for k in _langs(per):
                p = per[k]
                rows.append([task, LANG_NAMES.get(k, k), p["n"], _num(p["own"]), _num(p["other"]),
                             _pct(p["above_rate"]), _num(p["floor_own"]), _num(p["floor_other"])])
        md += _table(["task", "language", "items", "own", "other", "items own > other", "floor own",
                      "floor other"], rows)
        per = sim.get("voice_clone") or {}
        if per:
            langs = _langs(per)
            bar_chart(plots / "similarity.png", "Voice-clone similarity", [LANG_NAMES.get(k, k) for k in langs],
                      {"model: own": [per[k]["own"] for k in langs], "model: other": [per[k]["other"] for k in langs],
                       "espeak-ng: own": [per[k]["floor_own"] for k in langs],
                       "espeak-ng: other": [per[k]["floor_other"] for k in langs]},
                      threshold=0.75, ymax=1.0)
            md += ["![similarity](plots/similarity.png)", ""]

    vision_groups, vision_values = [], []
    if "image_qa" in results:
        per = results["image_qa"]["per_language"]
        md += ["## Image questions", ""]
        md += _table(["language", "items", "accuracy"],
                     [[LANG_NAMES.get(k, k), per[k]["n"], _pct(per[k]["accuracy"])] for k in _langs(per)])
        md += _samples(results["image_qa"]["items"], [("id", "id"), ("lang", "language"), ("question", "question"),
                                                      ("reference", "reference"), ("model", "hypothesis"),
                                                      ("right", "correct")])
        vision_groups.append("image QA")
        vision_values.append(per.get("all", {}).get("accuracy", math.nan) * 100)
    if "video" in results:
        v = results["video"]
        md += ["## Video captions and segments", "",
               "Predicted lines are matched one to one with the reference's (closest first); a hit is within "
               "0.5 s (segments: both boundaries). Missing and extra lines count against the rate.", ""]
        rows = []
        for name in ("segments", "captions"):
            per = v.get(name) or {}
            for k in _langs(per):
                p = per[k]
                rows.append([name, LANG_NAMES.get(k, k), p["n"], f"{p['hits']}/{p['total']}", _pct(p["within"]),
                             _num(p["mean_error_s"], 2)])
        md += _table(["kind", "language", "videos", "hits", "within 0.5 s", "mean matched error (s)"], rows)
        md += _samples(v["items"], [("id", "id"), ("task", "task"), ("reference", "reference"),
                                    ("model", "hypothesis")], n=4)
        for name, label in (("segments", "segments"), ("captions", "caption events")):
            if v.get(name):
                vision_groups.append(label)
                vision_values.append(v[name].get("all", {}).get("within", math.nan) * 100)
    if vision_groups:
        bar_chart(plots / "vision.png", "Image questions and video timing (%)", vision_groups,
                  {"model": vision_values}, threshold=90, ylabel="%", ymax=100)
        md += ["![vision](plots/vision.png)", ""]

    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
