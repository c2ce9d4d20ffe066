"""`omnistream eval`: run a speaking checkpoint on held-out data and write a markdown report with tables and plots.

    omnistream eval --checkpoint DIR --data DIR [--split eval] [--num N] [--tasks T ...] [--twin DIR]
                    [--judge base|tiny.en] [--judge-model PATH] [--out report_dir]
    omnistream eval --floor-only --data DIR [--num N] [--out report_dir]   (the judge alone on espeak-ng speech)
    omnistream eval --stage WORK/STAGE --data DIR [...]   (a Thinker training stage: the tasks answered in text)

DIR/{split}.jsonl comes from `omnistream data synth --split eval` (held-out voices and sentences). The report
(report_dir/report.md, plots/*.png, results.json, audio/*.wav of the spoken replies) lists every acceptance
criterion with its measured value. The Whisper judge and the Resemblyzer speaker encoder come with the `eval`
extra (`pip install 'omnistream[eval]'`); without them the speech-output scores need --no-judge / --no-speaker.
Problems with the input (a missing file, an unsupported format, a clip with no speech, an unusable checkpoint)
print `omnistream: error: ...` and return 2 before any model runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..audio.features import AudioError
from ..config import ConfigError
from ..data.errors import DataError
from ..data.tasks import TASKS
from ..positions import PositionError
from ..processor import TokenizerError
from ..thinker import InputError
from ..vision.preprocess import VisionInputError
from ..voice import VoiceCloneError
from ..weights import CheckpointError
from .evaluate import TTS_TASKS, EvalError, Evaluation, check_items, load_items
from .judge import MODELS, JudgeError
from .speaker import SpeakerError

ERRORS = (EvalError, JudgeError, SpeakerError, DataError, ConfigError, CheckpointError, InputError, TokenizerError,
          AudioError, VisionInputError, VoiceCloneError, PositionError)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `omnistream eval`."""
    p = argparse.ArgumentParser(prog="omnistream eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", metavar="DIR", help="the speaking checkpoint (save_omni layout); required unless "
                                                        "--floor-only")
    p.add_argument("--stage", metavar="WORK/STAGE",
                   help="instead of --checkpoint: a Thinker stage of `omnistream train` (e.g. runs/work/thinker-s2), "
                        "scored on the tasks answered in text (transcripts, spoken, image and video questions)")
    p.add_argument("--data", required=True, metavar="DIR", help="a directory written by `omnistream data synth`")
    p.add_argument("--split", default="eval", help="which DIR/{split}.jsonl to read (default: eval)")
    p.add_argument("--num", type=int, metavar="N", help="evaluate only the first N items (after --tasks)")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help=f"only these tasks: {', '.join(TASKS)}")
    p.add_argument("--twin", metavar="DIR",
                   help="a fixed-rate twin checkpoint: its speech output is judged beside the checkpoint's (TTS "
                        "WER and stalls side by side)")
    p.add_argument("--out", default="eval-report", metavar="DIR", help="report directory (default: eval-report)")
    p.add_argument("--judge", choices=MODELS, default="base",
                   help="packaged Whisper judge: base (multilingual, default) or tiny.en (English only)")
    p.add_argument("--judge-model", metavar="PATH", help="a CTranslate2 Whisper model directory to judge with")
    p.add_argument("--judge-beam", type=int, default=5, metavar="K", help="judge beam size (1: greedy)")
    p.add_argument("--no-judge", action="store_true", help="skip the Whisper judge (no TTS WER)")
    p.add_argument("--floor-only", action="store_true",
                   help="no model: only the judge's error on espeak-ng's audio of the read_aloud / voice_clone "
                        "replies (its floor), per language")
    p.add_argument("--no-speaker", action="store_true", help="skip Resemblyzer (no speaker similarity)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--max-new-tokens", type=int, default=256, metavar="N", help="most reply tokens per item")
    p.add_argument("--max-audio-frames", type=int, default=600, metavar="N",
                   help="most codec frames (12.5 per second) per spoken reply")
    p.add_argument("--ctc-weight", type=float, metavar="W",
                   help="weight in [0, 1] of the audio encoder's CTC reading in decoding a transcript or a think "
                        "block's heard line (0: the LM alone; default: the checkpoint's, 0.7 for --stage)")
    p.add_argument("--ctc-beam", type=int, metavar="K",
                   help="hypotheses the beam search of a heard line keeps (1: greedy; default: the checkpoint's, "
                        "1 for --stage)")
    return p


def _to_task_list(raw: list[str] | None) -> tuple[str, ...] | None:
    if not raw:
        return None
    return tuple(name for arg in raw for name in arg.split(",") if name)


def _judge(args: argparse.Namespace, items: list[dict]):
    """The Whisper judge of the options, refused when it cannot understand the items' languages."""
    from .judge import WhisperJudge

    judge = WhisperJudge(args.judge_model, model=args.judge, device=args.device,
                         compute_type="int8" if args.device == "cpu" else "float16", beam_size=args.judge_beam)
    langs = {i["language"] for i in items}
    if judge.english_only and langs - {"en"}:
        raise EvalError(f"the judge {judge.name!r} is English-only but the items include "
                        f"{', '.join(sorted(langs - {'en'}))}; use --judge base")
    return judge


def _judge_meta(judge) -> str | None:
    return None if judge is None else f"Whisper {judge.name} (faster-whisper, {judge.path}, beam {judge.beam_size})"


def _floor_only(args: argparse.Namespace, start: float) -> Path:
    """--floor-only: the judge on espeak-ng's audio of the TTS items, no model."""
    from .evaluate import judge_floor
    from .report import write_report

    if args.no_judge:
        raise EvalError("--floor-only measures the judge; it cannot be combined with --no-judge")
    items, _ = load_items(args.data, args.split, None, _to_task_list(args.tasks) or TTS_TASKS)
    items = [i for i in items if i["task"] in TTS_TASKS][:args.num] if args.num else items
    if not any(i["task"] in TTS_TASKS for i in items):
        raise EvalError(f"--floor-only needs read_aloud or voice_clone items; {args.data} has none of those asked")
    check_items(items)
    judge = _judge(args, items)
    results = {"counts": {t: sum(i["task"] == t for i in items) for t in TTS_TASKS}, "floor": judge_floor(items, judge)}
    results["meta"] = {"checkpoint": None, "data": str(args.data), "split": args.split, "judge": _judge_meta(judge),
                       "speaker": None, "device": args.device, "seconds": time.perf_counter() - start}
    return write_report(results, args.out)


def run(args: argparse.Namespace) -> Path:
    """Check the inputs, load what is needed, evaluate and write the report; return the report's path."""
    from .report import write_report
    from .runner import ModelRunner

    start = time.perf_counter()
    if args.floor_only:
        return _floor_only(args, start)
    if (args.checkpoint is None) == (args.stage is None):
        raise EvalError("give one model: --checkpoint DIR or --stage WORK/STAGE (or --floor-only to measure only "
                        "the judge's floor)")
    if args.max_new_tokens < 1 or args.max_audio_frames < 1:
        raise EvalError("--max-new-tokens and --max-audio-frames must be at least 1")
    if args.ctc_weight is not None and not 0.0 <= args.ctc_weight <= 1.0:
        raise EvalError(f"--ctc-weight {args.ctc_weight}: give a weight in [0, 1]")
    if args.ctc_beam is not None and args.ctc_beam < 1:
        raise EvalError(f"--ctc-beam {args.ctc_beam}: give a beam of at least 1")
    tasks = _to_task_list(args.tasks)
    if args.stage is not None:
        spoken = sorted(set(tasks or ()) & set(TTS_TASKS))
        if spoken or args.twin:
            raise EvalError(f"--stage {args.stage} is a Thinker training stage and cannot speak: "
                            f"{', '.join(spoken) or '--twin'} needs whole models (--checkpoint, --twin)")
        tasks = tasks or tuple(t for t in TASKS if t not in TTS_TASKS)
    for name, path in (("--checkpoint", args.checkpoint), ("--twin", args.twin)):
        if path is not None and not (Path(path) / "config.json").is_file():
            raise EvalError(f"no model at {path}: {name} needs a checkpoint directory with config.json")
    items, every = load_items(args.data, args.split, args.num, tasks)
    check_items(items)
    speech_out = any(i["task"] in TTS_TASKS for i in items)
    judge = speaker = None
    if speech_out or any(i["task"] == "transcribe" for i in items):
        if not args.no_judge:
            judge = _judge(args, items)
    if speech_out and not args.no_speaker:
        from .speaker import SpeakerEncoder

        speaker = SpeakerEncoder("cuda" if args.device == "cuda" else "cpu")
    print(f"loading {args.checkpoint or args.stage} ...", file=sys.stderr)
    if args.stage is not None:
        runner = ModelRunner.from_stage(args.stage, args.device, args.max_new_tokens)
    else:
        runner = ModelRunner(args.checkpoint, args.device, args.max_new_tokens, args.max_audio_frames)
    for item in items:
        runner.check_media(item)
    if args.ctc_weight is not None or args.ctc_beam is not None:
        runner.use_heard(args.ctc_weight, args.ctc_beam)
    twin = None
    if args.twin and speech_out:
        twin = ModelRunner(args.twin, args.device, args.max_new_tokens, args.max_audio_frames)
    out = Path(args.out)
    results = Evaluation(runner, items, every, judge=judge, speaker=speaker, twin=twin,
                         audio_dir=out / "audio").run()
    model = str(args.checkpoint) if args.stage is None else f"{args.stage} (stage {runner.stage}, text only)"
    results["meta"] = {"checkpoint": model, "twin": args.twin, "data": str(args.data),
                       "split": args.split, "judge": _judge_meta(judge),
                       "speaker": None if speaker is None else "Resemblyzer VoiceEncoder",
                       "device": args.device, "seconds": time.perf_counter() - start,
                       "ctc_weight": None if runner.heard is None else runner.heard.weight,
                       "ctc_beam": None if runner.heard is None else runner.heard.beam}
    return write_report(results, out)


def main(argv: list[str] | None = None) -> int:
    """Run `omnistream eval`; input problems print `omnistream: error: ...` and return 2."""
    args = build_parser().parse_args(argv)
    try:
        path = run(args)
    except ERRORS as e:
        print(f"omnistream: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
