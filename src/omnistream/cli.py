"""The `omnistream` command line: `omnistream generate` streams a checkpoint's reply to a prompt."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .config import ConfigError
from .engine import SamplingParams, stream
from .audio.features import AudioError
from .processor import Processor, StreamDecoder, Tokenizer, TokenizerError
from .positions import PositionError
from .thinker import InputError
from .vision.preprocess import VisionInputError
from .weights import CheckpointError, load_omni, load_omni_thinker, load_thinker

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="omnistream", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = commands.add_parser("generate", help="stream a text reply to a prompt",
                              description="Stream a checkpoint's text reply to a prompt on stdout.")
    gen.add_argument("--checkpoint", required=True, metavar="DIR",
                     help="checkpoint directory with config.json, *.safetensors and tokenizer.json")
    gen.add_argument("--prompt", required=True, metavar="TEXT", help="the user message")
    gen.add_argument("--system", metavar="TEXT", help="a system message placed before the prompt")
    gen.add_argument("--audio", action="append", default=[], metavar="FILE",
                     help="an audio file (wav, flac, ogg, mp3, or a video's audio track) placed before the prompt; "
                          "repeatable; needs a Qwen3-Omni thinker checkpoint with its audio encoder")
    gen.add_argument("--image", action="append", default=[], metavar="FILE",
                     help="an image file placed before the prompt (after any audio); repeatable; needs a Qwen3-Omni "
                          "thinker checkpoint with its vision encoder")
    gen.add_argument("--video", action="append", default=[], metavar="FILE",
                     help="a video file placed before the prompt (after any images); repeatable; needs the vision "
                          "encoder")
    gen.add_argument("--use-audio-in-video", action="store_true",
                     help="also feed each --video's sound track, interleaved with its frames by time "
                          "(needs the audio encoder too)")
    gen.add_argument("--max-new-tokens", type=int, default=256, metavar="N")
    gen.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 picks greedily (default)")
    gen.add_argument("--top-k", type=int, default=0, metavar="K", help="0 keeps every token (default)")
    gen.add_argument("--top-p", type=float, default=1.0, metavar="P")
    gen.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R")
    gen.add_argument("--seed", type=int, metavar="S", help="seed of the sampling generator")
    gen.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    gen.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    gen.add_argument("--raw", action="store_true", help="feed the prompt as is, without the chat template")
    gen.add_argument("--compile", action="store_true",
                     help="torch.compile the decode step: faster tokens after a one-off compile of tens of seconds")
    gen.add_argument("--speak", metavar="FILE",
                     help="also speak the reply (full Qwen3-Omni checkpoint with talker and code2wav): write a 24 kHz "
                          "wav and a per-stage timing table on stderr; text prompts only, greedy decoding")
    gen.add_argument("--voice", metavar="NAME",
                     help="speaker of --speak (default: ethan when the checkpoint has it, else its first speaker)")
    gen.add_argument("--max-audio-frames", type=int, default=4096, metavar="N",
                     help="most codec frames (12.5 per second of speech) --speak generates")
    gen.set_defaults(run=run_generate)
    return parser


def _messages(args: argparse.Namespace) -> list[dict]:
    """The chat: an optional system message, then the user's audio files (in order) and prompt text."""
    messages = [{"role": "system", "content": args.system}] if args.system else []
    parts = [{"type": "audio", "audio": path} for path in args.audio]
    parts += [{"type": "image", "image": path} for path in args.image]
    parts += [{"type": "video", "video": path, "use_audio_in_video": args.use_audio_in_video} for path in args.video]
    messages.append({"role": "user", "content": parts + [{"type": "text", "text": args.prompt}]})
    return messages


def _position_id_per_seconds(checkpoint: str) -> float:
    """The thinker's position_id_per_seconds from config.json (13, the Qwen3-Omni release value, when absent)."""
    raw = json.loads((Path(checkpoint) / "config.json").read_text())
    return float(raw.get("thinker_config", raw).get("position_id_per_seconds", 13))


def run_generate(args: argparse.Namespace) -> None:
    """Load the checkpoint, stream the reply to stdout and a timing line to stderr."""
    sampling = SamplingParams(args.temperature, args.top_k, args.top_p, args.repetition_penalty, args.seed)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: CUDA is not available on this machine")
    media = args.audio or args.image or args.video
    if args.raw and media:
        raise InputError("--raw feeds text only; it cannot be combined with --audio, --image or --video")
    if args.use_audio_in_video and not args.video:
        raise InputError("--use-audio-in-video needs at least one --video")
    if not args.prompt.strip():
        raise InputError("--prompt is empty")
    if args.speak is not None:
        run_speak(args)
        return
    tokenizer = Tokenizer(args.checkpoint)
    embeds = deepstack = positions = None
    if media:
        thinker = load_omni_thinker(args.checkpoint, DTYPES[args.dtype], args.device)
        if (args.image or args.video) and thinker.visual is None:
            raise InputError(f"{args.checkpoint} has no vision encoder (vision_config), so --image and --video "
                             f"cannot be used")
        if (args.audio or args.use_audio_in_video) and thinker.audio_tower is None:
            raise InputError(f"{args.checkpoint} has no audio encoder (audio_config), so --audio and "
                             f"--use-audio-in-video cannot be used")
        model = thinker.lm
        start = time.perf_counter()
        audio_cfg = None if thinker.audio_tower is None else thinker.audio_tower.config
        vision_cfg = None if thinker.visual is None else thinker.visual.config
        prompt = Processor(tokenizer, audio_cfg, vision_config=vision_cfg,
                           position_id_per_seconds=_position_id_per_seconds(args.checkpoint))(_messages(args))
        input_ids = prompt.input_ids.to(model.device)  # (1, S)

        def to_model(x):
            return None if x is None else x.to(model.device, model.dtype)

        def to_device(x):
            return None if x is None else x.to(model.device)

        with torch.no_grad():
            embeds, deepstack = thinker.embed(input_ids, to_model(prompt.audio_features), prompt.audio_lengths,
                                              to_model(prompt.pixel_values), to_device(prompt.image_grid_thw),
                                              to_model(prompt.pixel_values_videos),
                                              to_device(prompt.video_grid_thw))  # (1, S, H)
        positions = to_device(prompt.position_ids)
    else:
        model, _ = load_thinker(args.checkpoint, DTYPES[args.dtype], args.device)
        start = time.perf_counter()
        ids = tokenizer.encode(args.prompt) if args.raw else tokenizer.encode_chat(_messages(args))
        input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)  # (1, S)
    if args.compile:
        model.compile_decode()
    stops = tokenizer.eos_ids + [t for t in model.config.eos_token_ids if t not in tokenizer.eos_ids]
    decoder = StreamDecoder(tokenizer)
    first = None
    n = 0
    for token in stream(model, input_ids, max_new_tokens=args.max_new_tokens, sampling=sampling, stop_tokens=stops,
                        inputs_embeds=embeds, deepstack=deepstack, position_ids=positions):
        n += 1
        if first is None:
            first = time.perf_counter()
        sys.stdout.write(decoder.push(int(token[0])))
        sys.stdout.flush()
    end = time.perf_counter()
    sys.stdout.write(decoder.flush() + "\n")
    sys.stdout.flush()
    rate = f"{(n - 1) / (end - first):.1f} tokens/s" if n > 1 else "n/a tokens/s"
    print(f"first token after {(first - start) * 1e3:.1f} ms (preprocessing + prefill of {input_ids.shape[1]} tokens); "
          f"generated {n} tokens, decode {rate}", file=sys.stderr)


def _voice(checkpoint: str, voice: str | None) -> str:
    """The --voice to use, checked against the checkpoint's talker speakers before any weights are loaded."""
    path = Path(checkpoint) / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the checkpoint config ({e})") from e
    talker = raw.get("talker_config")
    if not raw.get("code2wav_config") or not talker:
        raise ConfigError(f"{path} has no talker_config/code2wav_config: this checkpoint cannot speak "
                          f"(--speak needs a full Qwen3-Omni checkpoint)")
    voices = {k.lower(): k for k in (talker.get("speaker_id") or {})}
    if not voices:
        raise ConfigError(f"{path}: talker_config has no speaker_id voices")
    if voice is None:
        return "ethan" if "ethan" in voices else next(iter(voices.values()))
    if voice.lower() not in voices:
        raise InputError(f"--voice {voice!r}: unknown voice; known voices: {', '.join(sorted(voices))}")
    return voice


def run_speak(args: argparse.Namespace) -> None:
    """--speak: stream the reply's text to stdout, write its speech to a 24 kHz wav, print stage timings."""
    import numpy as np
    import soundfile as sf

    from .engine.session import SAMPLE_RATE, AudioChunk, SpeechSession, TextDelta

    if args.audio or args.image or args.video:
        raise InputError("--speak takes text prompts only for now; --audio, --image and --video cannot be used with it")
    if args.temperature != 0.0 or args.top_k or args.top_p != 1.0 or args.repetition_penalty != 1.0:
        raise InputError("--speak decodes greedily; --temperature, --top-k, --top-p and --repetition-penalty "
                         "cannot be used with it")
    if args.compile:
        raise InputError("--compile is not supported with --speak yet")
    if args.max_new_tokens < 1 or args.max_audio_frames < 1:
        raise InputError("--max-new-tokens and --max-audio-frames must be at least 1")
    voice = _voice(args.checkpoint, args.voice)
    tokenizer = Tokenizer(args.checkpoint)
    thinker, talker, code2wav, tokens = load_omni(args.checkpoint, DTYPES[args.dtype], args.device)
    start = time.perf_counter()
    ids = tokenizer.encode(args.prompt) if args.raw else tokenizer.encode_chat(_messages(args))
    input_ids = torch.tensor([ids], dtype=torch.long, device=thinker.lm.device)  # (1, S)
    stops = tokenizer.eos_ids + [t for t in thinker.lm.config.eos_token_ids if t not in tokenizer.eos_ids]
    try:
        session = SpeechSession(thinker, talker, code2wav, tokens, speaker=voice, thinker_eos_token_id=stops,
                                thinker_max_new_tokens=args.max_new_tokens,
                                talker_max_new_tokens=args.max_audio_frames + 1)
    except ValueError as e:
        raise InputError(str(e)) from None
    decoder = StreamDecoder(tokenizer)
    pcm, n_text = [], 0
    try:
        for event in session.speak(input_ids):
            if isinstance(event, TextDelta):
                n_text += 1
                sys.stdout.write(decoder.push(event.token_id))
                sys.stdout.flush()
            elif isinstance(event, AudioChunk):
                pcm.append(event.pcm)
    except ValueError as e:
        raise InputError(str(e)) from None
    end = time.perf_counter()
    sys.stdout.write(decoder.flush() + "\n")
    sys.stdout.flush()
    wav = np.concatenate(pcm).astype(np.float32) if pcm else np.zeros(0, dtype=np.float32)
    sf.write(args.speak, wav, SAMPLE_RATE)
    t = session.timings
    frames = int(t.get("frames", 0))
    seconds = wav.size / SAMPLE_RATE

    def ms(key):
        return f"{t[key] * 1e3:10.1f} ms" if key in t else "       n/a"

    rtf = f"{(end - start) / seconds:10.3f}" if seconds else "       n/a"
    rows = [("preprocessing", ms("preprocessing")), ("thinker first token", ms("thinker_first_token")),
            ("talker first frame", ms("talker_first_frame")), ("MTP per frame", ms("mtp_per_frame")),
            ("Code2Wav per frame", ms("code2wav_per_frame")), ("first audio packet", ms("first_audio_packet")),
            ("RTF", rtf + "    (processing / audio duration)")]
    print(f"audio {frames} frames, {seconds:.2f} s at {SAMPLE_RATE} Hz -> {args.speak}; {n_text} text tokens",
          file=sys.stderr)
    for name, value in rows:
        print(f"  {name:<20} {value}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; user errors print `omnistream: error: ...` and exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ConfigError, CheckpointError, InputError, TokenizerError, AudioError, VisionInputError,
            PositionError) as e:
        print(f"omnistream: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0
