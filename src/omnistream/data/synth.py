"""`omnistream data synth`: write a split of deterministic synthetic chat items (JSON lines + media) to a directory.

Layout of --out DIR: DIR/{split}.jsonl (DIR/{name}.jsonl with --name), one item per line, in index order;
DIR/audio/*.wav (24 kHz mono 16-bit), DIR/images/*.png, DIR/videos/*.mp4. Media paths in the items are relative to
DIR. An item holds "id", "split", "task", "language", "voice" (the speaking voice's name, or null), "messages" (the
user turn in the processor's chat format; the processor adds the assistant opener), "reply" (the assistant's text),
"target_speech" / "reference_speech" for the speech-out tasks, and "meta" (what the item asks, for checking
answers). The same (seed, split, num, tasks, name) writes byte-identical files, whatever the number of workers.
A drill file (--tasks numbers --name numbers: lists of spoken numbers) sits beside the split it trains with.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from .errors import DataError
from .tasks import BUILDERS, DRILLS, MEDIA_DIRS, MEDIA_KINDS, SPEECH_TASKS, TASKS, build_item
from .voices import ROSTER, SPLITS, check_voice, voices


def _check_options(split: str, num: int, tasks: Sequence[str], workers: int, name: str | None) -> tuple[str, ...]:
    """Validate the options; return the task names as a tuple."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if name is not None and (not re.fullmatch(r"[a-z0-9_]+", name) or (name in SPLITS and name != split)):
        raise DataError(f"--name must be lower-case letters, digits and _ and not another split's name, got {name!r}")
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise DataError(f"--num must be a whole number >= 1, got {num!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DataError(f"--workers must be a whole number >= 1, got {workers!r}")
    tasks = tuple(tasks)
    if not tasks:
        raise DataError(f"no tasks given; choose from {', '.join(BUILDERS)}")
    unknown = [t for t in tasks if t not in BUILDERS]
    if unknown:
        raise DataError(f"unknown task {unknown[0]!r}; choose from {', '.join(BUILDERS)}")
    return tasks


def _prepare(out: Path) -> None:
    """Create the output directory and its media folders, or raise a DataError saying why it cannot be written."""
    try:
        for sub in MEDIA_DIRS:
            (out / sub).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot write to --out {out}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise DataError(f"cannot write to --out {out}: permission denied")


def synthesize(out: str | Path, seed: int, split: str = "train", num: int = 100,
               tasks: Sequence[str] = TASKS, workers: int = 1, name: str | None = None) -> Path:
    """Write items 0..num-1 of `split` (tasks taken in turn) and their media under `out` as the file `name`
    (default: the split's); return the .jsonl path."""
    tasks = _check_options(split, num, tasks, workers, name)
    if SPEECH_TASKS.intersection(tasks):
        for voice in voices(split) + voices("train"):  # read_aloud speaks with training voices in both splits
            check_voice(voice)
    out = Path(out)
    _prepare(out)
    build = partial(build_item, out, seed, split, tasks, name=name)
    if workers == 1:
        items = [build(i) for i in range(num)]
    else:
        with ProcessPoolExecutor(workers) as pool:
            items = list(pool.map(build, range(num), chunksize=max(1, num // (4 * workers))))
    path = out / f"{name or split}.jsonl"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def read_items(path: str | Path) -> list[dict]:
    """The items of a .jsonl written by `synthesize`, with media paths made absolute (ready for the processor)."""
    path = Path(path)
    root = path.resolve().parent
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        for part in item["messages"][0]["content"]:
            if part["type"] in MEDIA_KINDS:
                part[part["type"]] = str(root / part[part["type"]])
        for key in ("target_speech", "reference_speech"):
            if key in item:
                item[key] = str(root / item[key])
        items.append(item)
    return items


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `omnistream data synth`."""
    roster = ", ".join(f"{v.name} ({v.language}, {v.split})" for v in ROSTER)
    parser = argparse.ArgumentParser(
        prog="omnistream data synth",
        description="Write deterministic synthetic training or eval data: speech from espeak-ng (en, zh, es), "
                    "drawn images and videos, as chat items in DIR/{split}.jsonl with media under DIR.",
        epilog=f"Voices: {roster}.")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory (created)")
    parser.add_argument("--seed", required=True, type=int, help="the items are a pure function of seed, split, index")
    parser.add_argument("--split", choices=SPLITS, default="train",
                        help="eval uses held-out voices, sentences and questions (default: train)")
    parser.add_argument("--num", type=int, default=100, help="number of items (default: 100)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), metavar="TASK",
                        help=f"tasks, taken in turn (space- or comma-separated; default: all): {', '.join(TASKS)}; "
                             f"on request only: {', '.join(DRILLS)}")
    parser.add_argument("--name", metavar="NAME",
                        help="write DIR/NAME.jsonl (items NAME-000000...) instead of DIR/{split}.jsonl, e.g. a drill "
                             "file beside the split")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes generating items (default: min(4, CPUs)); the output does not depend on it")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `omnistream data synth`; problems print `omnistream: error: ...` and return 2."""
    args = build_parser().parse_args(argv)
    tasks = [name for arg in args.tasks for name in arg.split(",") if name]
    start = time.perf_counter()
    try:
        path = synthesize(args.out, args.seed, args.split, args.num, tasks, args.workers, args.name)
    except DataError as e:
        print(f"omnistream: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.num} {args.split} items to {path} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0
