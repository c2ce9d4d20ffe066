"""`omnistream train STAGE`: the paper's recipe, scaled down, as resumable stages over one work directory.

Order (each stage starts from the checkpoint the one before it left in WORK; the codec and the Thinker stages do
not depend on each other):
  tokenizer -> thinker-text -> thinker-drill -> thinker-aut -> thinker-s1 -> thinker-s2 -> thinker-s3 -> codec
  -> talker-general -> talker-long -> talker-dpo -> talker-speaker -> talker-mtp -> export
  (talker-fixed, then talker-fixed-mtp: the fixed-rate twin, same budget, for the ARIA ablation)
WORK/<stage>/ holds checkpoint.pt, loss.png and history.json; WORK/tokenizer the tokenizer; WORK/codec/export the
frozen codec; `export` writes WORK/demo (fp16 safetensors + config + tokenizer + a spoken question), the layout of
checkpoints/demo. A stopped stage resumes where it stopped when run again (unless --fresh). Under
`torchrun --nproc_per_node N -m omnistream.cli train STAGE ...` the stage runs sharded with FSDP2.

Warm starts: `--init DIR` names a shipped checkpoint (checkpoints/demo). `tokenizer` and `codec` then take its
tokenizer and frozen codec as they are; a Thinker or Talker stage starts from its Thinker or Talker instead of the
previous stage's checkpoint. `--init FILE` starts a stage from a checkpoint.pt of a stage of the same model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from ..data import read_items
from ..voice import load_audio_tokenizer
from .loop import TrainConfig, TrainError, train
from .thinker_stages import GENERATED, MEDIA_STAGES

STAGES = ("tokenizer", "codec", "thinker-text", "thinker-drill", "thinker-aut", "thinker-s1", "thinker-s2",
          "thinker-s3", "talker-general", "talker-fixed", "talker-long", "talker-dpo", "talker-speaker", "talker-mtp",
          "talker-fixed-mtp", "export")
PREVIOUS = {"thinker-drill": "thinker-text", "thinker-aut": "thinker-drill", "thinker-s1": "thinker-aut",
            "thinker-s2": "thinker-s1", "thinker-s3": "thinker-s2", "talker-long": "talker-general",
            "talker-dpo": "talker-long", "talker-speaker": "talker-dpo", "talker-mtp": "talker-speaker",
            "talker-fixed-mtp": "talker-fixed"}
VOCAB_SIZE = 2048  # the tokenizer stage's BPE size
DPO_DEFAULTS = {"dpo_items": 64, "dpo_samples": 4, "dpo_frames": 300}  # talker-dpo: items, renderings, frames
SPOKEN_FILE = "spoken.jsonl"  # more transcripts and spoken questions for Thinker S1-S3 (make demo-data)
# default (steps, lr, batch) per stage at the demo size; --steps / --lr / --batch override
DEFAULTS = {"codec": (10000, 1e-3, 8), "thinker-text": (7000, 2e-3, 16), "thinker-drill": (2400, 1e-3, 64),
            "thinker-aut": (3000, 2e-3, 32), "thinker-s1": (400, 2e-3, 8), "thinker-s2": (4000, 1e-3, 8),
            "thinker-s3": (400, 2e-4, 4), "talker-general": (3000, 1e-3, 8), "talker-fixed": (3000, 1e-3, 8),
            "talker-long": (300, 5e-4, 4), "talker-dpo": (100, 1e-5, 4), "talker-speaker": (300, 5e-4, 8),
            "talker-mtp": (3000, 1e-3, 512), "talker-fixed-mtp": (3000, 1e-3, 512)}
# the spoken questions shipped with the demo model: language -> draw of the held-out arithmetic generator, said by a
# held-out voice; draws the shipped model answers right (of draws 0-11 it answers 8 in en, 10 in zh, 5 in es)
BUNDLED = {"en": 4, "zh": 4, "es": 10}


def bundled_questions(out: Path) -> list[dict]:
    """Write one held-out spoken arithmetic question per BUNDLED language (question.wav is the English one, the
    demo's default; question-zh.wav, ...) said by that language's eval voice, and questions.json listing each
    file with its question and the expected answer."""
    import random

    import soundfile

    from ..data import text
    from ..data.voices import speak, voices

    listed = []
    for lang, draw in BUNDLED.items():
        q = text.arithmetic(random.Random(f"omnistream.demo/{lang}/{draw}"), "eval", lang)
        name = "question.wav" if lang == "en" else f"question-{lang}.wav"
        soundfile.write(out / name, speak(q.question.speech, voices("eval", lang)[0]), 24000, subtype="PCM_16")
        listed.append({"audio": name, "language": lang, "question": q.question.text, "answer": q.answer,
                       "result": q.meta["result"]})
    (out / "questions.json").write_text(json.dumps(listed, indent=2, ensure_ascii=False) + "\n")
    return listed


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `omnistream train`."""
    p = argparse.ArgumentParser(prog="omnistream train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=STAGES)
    p.add_argument("--data", required=True, metavar="DIR", help="output of `omnistream data synth` (train.jsonl)")
    p.add_argument("--work", required=True, metavar="DIR", help="where every stage keeps its checkpoints")
    p.add_argument("--size", choices=("tiny", "demo"), default="demo")
    p.add_argument("--steps", type=int, metavar="N",
                   help="optimiser steps (default: the stage's); 0 with --init takes that model as the stage's "
                        "result as it is (e.g. the shipped Thinker as thinker-s3, for Talker stages of its own)")
    p.add_argument("--stop-at", type=int, metavar="N",
                   help="end this run after step N with a checkpoint; the schedule stays that of --steps, and a run "
                        "without it goes on from there")
    p.add_argument("--init", metavar="PATH",
                   help="start from this model instead of the previous stage's: a shipped checkpoint directory "
                        "(checkpoints/demo; tokenizer and codec are taken as they are) or a stage's checkpoint.pt "
                        "(e.g. a copy of thinker-text's taken with --stop-at, so that thinker-aut trains beside it)")
    p.add_argument("--lr", type=float)
    p.add_argument("--batch", type=int, metavar="B")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=100, metavar="N")
    p.add_argument("--vocab-size", type=int, metavar="N", help=f"tokenizer stage: BPE size (default {VOCAB_SIZE})")
    p.add_argument("--generated", type=int, metavar="N",
                   help="thinker-text, thinker-s2: generated text items (default: thinker_stages.GENERATED)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="thinker-s1/s2/s3: augment the audio as AuT pretraining does, length kept (vocal tract warp, "
                        "spectral colour, frequency masks; no time masks, which would hide words the reply says); "
                        "default: on in s2 and s3")
    p.add_argument("--extra", nargs="*", metavar="FILE",
                   help=f"thinker-s1/s2/s3: more items to train on beside the split (.jsonl files of `omnistream data "
                        f"synth --name NAME`); default: DATA/{SPOKEN_FILE} when present, none with a bare --extra")
    p.add_argument("--log-every", type=int, default=10, metavar="N", help="steps per logged (averaged) loss point")
    p.add_argument("--dpo-items", type=int, metavar="N",
                   help=f"talker-dpo: items sampled for pairs (default {DPO_DEFAULTS['dpo_items']})")
    p.add_argument("--dpo-samples", type=int, metavar="N",
                   help=f"talker-dpo: renderings per item (default {DPO_DEFAULTS['dpo_samples']})")
    p.add_argument("--dpo-frames", type=int, metavar="N",
                   help=f"talker-dpo: most frames a rendering has (default {DPO_DEFAULTS['dpo_frames']})")
    p.add_argument("--fresh", action="store_true", help="start the stage over instead of resuming it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _checkpoint(work: Path, stage: str) -> Path:
    path = work / stage / "checkpoint.pt"
    if not path.is_file():
        raise TrainError(f"{path} does not exist: run `omnistream train {stage}` first")
    return path


def _model_state(work: Path, stage: str) -> dict:
    return torch.load(_checkpoint(work, stage), map_location="cpu", weights_only=False)["model"]


def _thinker(work: Path, size: str):
    """The trained Thinker (thinker-s3), frozen, with its tokenizer and special ids."""
    from ..processor import Tokenizer
    from .thinker_stages import build_thinker
    from .tokenizer import special_ids

    tok = Tokenizer(work / "tokenizer")
    ids = special_ids(tok)
    thinker = build_thinker(size, ids)
    thinker.load_state_dict(_model_state(work, "thinker-s3"))
    return thinker.eval().requires_grad_(False), tok, ids


def _talker_config(thinker, ids: dict, codec, size: str, settings: dict | None = None):
    """The demo Talker config that fits this Thinker (width, accept layer = the middle one), tokenizer and codec,
    with the ARIA settings of WORK/talker.json (`settings`) when given."""
    from dataclasses import replace

    from ..positions import TokenIds
    from .talker_stages import demo_talker_config

    text = thinker.lm.config
    placeholders = TokenIds(*(ids[k] for k in ("audio_token_id", "image_token_id", "video_token_id",
                                               "vision_start_token_id", "audio_start_token_id")))
    config = demo_talker_config(text.hidden_size, text.num_hidden_layers // 2, placeholders,
                                codec.config.num_quantizers, codec.config.codebook_size, size)
    return replace(config, **settings) if settings else config


def _talker_settings(work: Path, raw: list[dict], items: list) -> dict:
    """The ARIA settings every Talker stage and export share, fixed by the first Talker stage in WORK/talker.json:
    the prior R̂ measured on its items (most frames per reply token, per language)."""
    from .talker_stages import measured_prior

    path = work / "talker.json"
    if not path.is_file():
        prior = measured_prior(items, [r["language"] for r in raw])
        path.write_text(json.dumps({"aria_frames_per_token": prior}, indent=2) + "\n")
    return json.loads(path.read_text())


def _talker_setup(work: Path, data: Path, size: str):
    """Frozen Thinker and codec, the Talker config, and the TalkerItems of every item with target speech (cached)."""
    from .talker_data import default_processor, speech_tokens, talker_item

    thinker, tok, ids = _thinker(work, size)
    codec = load_audio_tokenizer(work / "codec" / "export").eval()
    config = _talker_config(thinker, ids, codec, size)
    raw = [r for r in read_items(data / "train.jsonl") if "target_speech" in r]
    cache = work / "talker-items.pt"
    if cache.is_file():
        items = torch.load(cache, weights_only=False)
    else:
        from ..talker import Talker

        shell, processor = Talker(config), default_processor(tok, thinker)
        items = [talker_item(r, data, thinker, shell, codec, processor, tok) for r in raw]
        torch.save(items, cache)
    config = _talker_config(thinker, ids, codec, size, _talker_settings(work, raw, items))
    return thinker, tok, speech_tokens(tok), config, raw, items


def _stage(args: argparse.Namespace, work: Path, data: Path):
    """The Stage object for a trainable stage name."""
    name, size = args.stage, args.size
    batch = args.batch or DEFAULTS[name][2]
    if name == "codec":
        from .codec_stage import CodecStage

        make = CodecStage.tiny if size == "tiny" else CodecStage.demo
        return make(data, seed=args.seed, batch_size=batch)
    if name.startswith("thinker-"):
        init = _thinker_init(work, name, args.init)
        if name == "thinker-aut":
            from .aut_stage import AutStage

            return AutStage(data, work / "tokenizer", size, init, batch_size=batch, seed=args.seed)
        from .thinker_stages import ThinkerStage

        return ThinkerStage(name.split("-", 1)[1], data, work / "tokenizer", size, init, batch_size=batch,
                            seed=args.seed, generated=args.generated,
                            augment=name in ("thinker-s2", "thinker-s3") if args.augment is None else args.augment,
                            extra=_extra(args, data) if name in MEDIA else ())
    init = _talker_init(work, name, args.init)
    thinker, tok, tokens, config, raw, items = _talker_setup(work, data, size)
    if name == "talker-dpo":
        from ..talker import Talker
        from .codec_stage import load_code2wav
        from .talker_data import default_processor
        from .talker_dpo import DpoStage, preference_pairs

        talker = Talker(config)
        talker.load_state_dict({k[len("talker."):]: v for k, v in init.items()})
        code2wav = load_code2wav(work / "codec" / "export")
        dpo = {k: DPO_DEFAULTS[k] if getattr(args, k) is None else getattr(args, k) for k in DPO_DEFAULTS}
        pick = [(r, it) for r, it in zip(raw, items) if it.voice is None][:dpo["dpo_items"]]
        pairs = preference_pairs([r for r, _ in pick], [it for _, it in pick], thinker, talker.eval(), code2wav,
                                 tokens, tok, default_processor(tok, thinker), data, samples=dpo["dpo_samples"],
                                 seed=args.seed, max_frames=dpo["dpo_frames"])
        print(f"talker-dpo: {len(pairs)} preference pairs from {len(pick)} items", file=sys.stderr)
        return DpoStage(pairs, thinker, tokens, talker, batch_size=batch, seed=args.seed)
    if name.endswith("-mtp"):
        from dataclasses import replace

        from .mtp_stage import MtpStage

        fixed = name == "talker-fixed-mtp"
        config = replace(config, interleave="fixed") if fixed else config
        return MtpStage(items, thinker, tokens, config, init, fixed=fixed, batch_size=batch, seed=args.seed)
    from .talker_stages import TalkerStage

    return TalkerStage(name.split("-", 1)[1], items, thinker, tokens, config, batch_size=batch, seed=args.seed,
                       init=init)


def _extra(args: argparse.Namespace, data: Path) -> tuple[Path, ...]:
    """Thinker S1-S3's extra items: --extra, else DATA/spoken.jsonl when present."""
    if args.extra is not None:
        return tuple(Path(p) for p in args.extra)
    return (data / SPOKEN_FILE,) if (data / SPOKEN_FILE).is_file() else ()


def _thinker_init(work: Path, stage: str, init: str | None) -> Path | None:
    """A Thinker stage's start: `init` (a checkpoint.pt, or a shipped directory's Thinker in fp32), else the
    previous stage's checkpoint; S1's is the drill's Thinker with thinker-aut's audio encoder (the only part AuT
    trains), the same as thinker-aut's checkpoint when AuT started from the drill."""
    if init is not None and not Path(init).is_dir():
        return Path(init)
    if init is not None:
        from ..weights import load_omni_thinker

        state = load_omni_thinker(_shipped(Path(init), work)).state_dict()
    elif stage == "thinker-s1":
        state = _model_state(work, "thinker-drill")
        state.update({k: v for k, v in _model_state(work, "thinker-aut").items() if k.startswith("audio_tower.")})
    else:
        return _checkpoint(work, PREVIOUS[stage]) if stage in PREVIOUS else None
    return _write_init(state, work / stage / "init.pt")


def _write_init(state: dict, path: Path) -> Path:
    """Save a start state to `path` through a private file renamed into place, so that torchrun's processes never
    read one another's half-written copy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f"{path.stem}.{os.getpid()}.part")
    torch.save(state, part)
    os.replace(part, path)
    return path


def _talker_init(work: Path, stage: str, init: str | None) -> dict | None:
    """A Talker stage's start (a TalkerLoss state dict): `init` (a Talker stage's checkpoint.pt, or a shipped
    directory's Talker in fp32), else the previous stage's checkpoint, else none (a fresh Talker)."""
    if init is None:
        return _model_state(work, PREVIOUS[stage]) if stage in PREVIOUS else None
    if Path(init).is_dir():
        from ..weights import load_omni

        talker = load_omni(_shipped(Path(init), work))[1]
        return {"talker." + k: v for k, v in talker.state_dict().items()}
    state = torch.load(init, map_location="cpu", weights_only=False)
    state = state.get("model", state)
    if not all(k.startswith("talker.") for k in state):
        raise TrainError(f"--init {init}: not a Talker stage's checkpoint (its tensors are not the Talker's)")
    return state


def _shipped(init: Path, work: Path) -> Path:
    """A shipped checkpoint directory whose tokenizer is WORK's (its models read their own token ids)."""
    for name in ("config.json", "tokenizer.json"):
        if not (init / name).is_file():
            raise TrainError(f"--init {init}: no {name}; give a shipped checkpoint directory (checkpoints/demo)")
    if _tokenizer_differs(init, work) is not False:
        raise TrainError(f"--init {init}: its tokenizer is not {work / 'tokenizer'}'s; take it first with `omnistream "
                         f"train tokenizer --init {init}` (in a work directory of its own)")
    return init


def _tokenizer_differs(init: Path, work: Path) -> bool | None:
    """Whether WORK/tokenizer holds another tokenizer than the directory `init` (None: WORK has none yet)."""
    ours = work / "tokenizer" / "tokenizer.json"
    return ours.read_bytes() != (init / "tokenizer.json").read_bytes() if ours.is_file() else None


def _copy_tokenizer(source: Path, target: Path) -> None:
    """The tokenizer files of directory `source` into `target`."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, target / name)


def _take_shipped(stage: str, init: Path, work: Path) -> None:
    """tokenizer / codec --init DIR: copy the shipped tokenizer, or write the shipped (frozen) codec to
    WORK/codec/export, where the Talker stages and export read it."""
    if stage == "tokenizer":
        if _tokenizer_differs(init, work):
            raise TrainError(f"--init {init}: {work / 'tokenizer'} holds another tokenizer; warm starts need a work "
                             f"directory of their own")
        _copy_tokenizer(init, work / "tokenizer")
        return
    from ..weights import load_omni
    from .codec_stage import write_codec

    code2wav = load_omni(_shipped(init, work))[2]
    write_codec(load_audio_tokenizer(init), code2wav, work / "codec" / "export")


def _tokenizer(work: Path, data: Path, vocab_size: int) -> None:
    from .thinker_data import corpus_texts
    from .tokenizer import train_tokenizer

    ids = train_tokenizer(corpus_texts(read_items(data / "train.jsonl")), work / "tokenizer", vocab_size)
    print(f"tokenizer: {ids['vocab_size']} ids -> {work / 'tokenizer'}", file=sys.stderr)


def export(work: Path, size: str, out: Path | None = None) -> Path:
    """Assemble the demo checkpoint: Thinker (s3), Talker (talker-mtp, else talker-speaker), codec; fp16; tokenizer;
    questions. When talker-fixed was trained, its fixed-rate twin (talker-fixed-mtp, else talker-fixed; same Thinker
    and codec) goes to WORK/demo-fixed for the ablation."""
    from dataclasses import replace

    from .codec_stage import load_code2wav

    out = out or work / "demo"
    thinker, tok, ids = _thinker(work, size)
    codec = load_audio_tokenizer(work / "codec" / "export")
    shared = (thinker, tok, codec, load_code2wav(work / "codec" / "export"))
    settings = work / "talker.json"
    config = _talker_config(thinker, ids, codec, size, json.loads(settings.read_text()) if settings.is_file() else None)
    _export_one(work, out, *shared, config, _last(work, "talker-mtp", "talker-speaker"))
    bundled_questions(out)
    size_mb = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(f"export: {out} ({size_mb:.1f} MB)", file=sys.stderr)
    if (work / "talker-fixed" / "checkpoint.pt").is_file():
        twin = _export_one(work, work / "demo-fixed", *shared, replace(config, interleave="fixed"),
                           _last(work, "talker-fixed-mtp", "talker-fixed"))
        print(f"export: the fixed-rate twin -> {twin}", file=sys.stderr)
    return out


def _last(work: Path, *stages: str) -> str:
    """The first of `stages` that has a checkpoint in WORK (the last one otherwise)."""
    return next((s for s in stages if (work / s / "checkpoint.pt").is_file()), stages[-1])


def _export_one(work: Path, out: Path, thinker, tok, codec, code2wav, config, talker_stage: str) -> Path:
    """One speaking checkpoint (fp16 safetensors, config with the processor's settings, tokenizer) in `out`."""
    from ..engine.heard import HEARD_BEAM, HEARD_WEIGHT
    from ..talker import Talker
    from ..weights import save_omni
    from .talker_data import speech_tokens
    from .thinker_data import IMAGE_PIXELS, VIDEO_PIXELS
    from .tokenizer import special_ids

    talker = Talker(config)
    talker.load_state_dict({k[len("talker."):]: v for k, v in _model_state(work, talker_stage).items()})
    save_omni(out, thinker, talker, code2wav, speech_tokens(tok), codec)
    _copy_tokenizer(work / "tokenizer", out)
    saved = json.loads((out / "config.json").read_text())
    saved["processor_config"] = {"layout": "qwen3.5-omni", "image_pixels": list(IMAGE_PIXELS),
                                 "video_pixels": list(VIDEO_PIXELS)}
    # its audio encoder reads CTC in the LM's token space (AuT pretraining): decode heard lines jointly with it
    saved["thinker_config"].update(ctc_heard_weight=HEARD_WEIGHT, ctc_heard_beam=HEARD_BEAM,
                                   ctc_blank_token_id=special_ids(tok)["pad_token_id"])
    (out / "config.json").write_text(json.dumps(saved, indent=2, ensure_ascii=False))
    return out


def _steps(args: argparse.Namespace) -> int:
    """The run's steps: --steps, else the stage's default."""
    return DEFAULTS[args.stage][0] if args.steps is None else args.steps


# options that only some stages read: given to another stage they would be silently ignored
TRAINED = tuple(s for s in STAGES if s not in ("tokenizer", "export"))  # the stages that run the training loop
MEDIA = tuple(f"thinker-{k}" for k in MEDIA_STAGES)
STAGE_OPTIONS = {"extra": MEDIA, "augment": MEDIA, "generated": tuple(f"thinker-{k}" for k in GENERATED),
                 "vocab_size": ("tokenizer",), **{k: ("talker-dpo",) for k in DPO_DEFAULTS},
                 **{k: TRAINED for k in ("steps", "lr", "batch", "stop_at")}}


def _check_stage_options(args: argparse.Namespace) -> None:
    """A TrainError when an option is given to a stage that does not read it (e.g. --extra to talker-general, --lr
    or --vocab-size to a tokenizer or codec taken from a shipped checkpoint as it is)."""
    taken = args.stage in ("tokenizer", "codec") and args.init is not None
    for option, stages in STAGE_OPTIONS.items():
        if getattr(args, option) is None:
            continue
        flag = "--no-augment" if option == "augment" and args.augment is False else f"--{option.replace('_', '-')}"
        if args.stage not in stages:
            raise TrainError(f"{flag}: {args.stage} does not read it; only {', '.join(stages)} do")
        if taken:  # a shipped tokenizer or codec taken as it is reads none of its stage's options
            raise TrainError(f"{flag}: {args.stage} --init {args.init} takes the shipped {args.stage} as it is, "
                             f"without training")


def main(argv: list[str] | None = None) -> int:
    """Run one stage; problems print `omnistream: error: ...` and return 2."""
    args = build_parser().parse_args(argv)
    work, data = Path(args.work), Path(args.data)
    start = time.perf_counter()
    try:
        if not (data / "train.jsonl").is_file():
            raise TrainError(f"no {data / 'train.jsonl'}; write it with `omnistream data synth --out {data}`")
        if args.init and args.stage == "export":
            raise TrainError("--init starts a training stage; export assembles WORK's stages")
        if args.init and not Path(args.init).exists():
            raise TrainError(f"--init {args.init}: no such file or directory")
        if args.init and args.stage in ("tokenizer", "codec") and not Path(args.init).is_dir():
            raise TrainError(f"--init {args.init}: {args.stage} takes a shipped checkpoint directory "
                             f"(checkpoints/demo)")
        if args.steps is not None and (args.steps < 0 or args.steps == 0 and not args.init):
            raise TrainError(f"--steps {args.steps}: give 1 or more, or 0 with --init to take that model as "
                             f"{args.stage}'s result as it is")
        if args.stop_at is not None and args.stop_at < 1:
            raise TrainError(f"--stop-at {args.stop_at}: give a step of 1 or more")
        _check_stage_options(args)
        work.mkdir(parents=True, exist_ok=True)
        done = work / args.stage / "summary.json"
        if args.stage in ("tokenizer", "codec") and args.init:
            _take_shipped(args.stage, Path(args.init), work)
        elif args.stage == "tokenizer":
            if args.fresh or not (work / "tokenizer" / "tokenizer.json").is_file():
                _tokenizer(work, data, args.vocab_size or VOCAB_SIZE)
        elif args.stage == "export":
            export(work, args.size)
        elif not args.fresh and done.is_file() and json.loads(done.read_text())["steps"] >= _steps(args):
            print(f"{args.stage}: already trained ({done}); --fresh trains it again", file=sys.stderr)
        else:
            steps, lr = _steps(args), DEFAULTS[args.stage][1]
            cfg = TrainConfig(steps=steps, lr=args.lr or lr, warmup=min(50, steps // 10 + 1), seed=args.seed,
                              save_every=args.save_every, log_every=max(1, min(args.log_every, steps)),
                              progress=not args.quiet)
            stage = _stage(args, work, data)
            history = train(stage, work / args.stage, cfg, resume=not args.fresh, stop_at=args.stop_at)
            if args.stop_at is not None and args.stop_at < steps:
                print(f"{args.stage}: stopped at step {args.stop_at} of {steps} (--stop-at)", file=sys.stderr)
                return 0
            if args.stage == "codec":
                from .codec_stage import save_codec

                module = stage.module()
                module.load_state_dict(_model_state(work, "codec"))
                save_codec(module, work / "codec" / "export")
            last = {k: round(v[-1], 4) for k, v in history.losses.items()} if history.steps else {}
            (work / args.stage / "summary.json").write_text(json.dumps(
                {"steps": cfg.steps, "seconds": history.seconds, "last": last}, indent=2))
    except (TrainError, ValueError, OSError) as e:
        print(f"omnistream: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.stage}: done in {time.perf_counter() - start:.0f} s -> {work}", file=sys.stderr)
    return 0
