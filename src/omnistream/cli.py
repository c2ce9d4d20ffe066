"""The `omnistream` command line: generate (text or speech), demo, train, eval and data synth."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .config import QWEN35, ConfigError
from .engine import SamplingParams, stream
from .engine.heard import Heard, HeardLine
from .audio.features import AudioError
from .processor import (QWEN3_OMNI, QWEN35_OMNI, THINK_OPEN, Processor, StreamDecoder, Tokenizer, TokenizerError,
                        reasoning_token_ids)
from .positions import PositionError
from .thinker import InputError
from .vision.preprocess import VisionInputError
from .voice import VoiceCloneError
from .weights import CheckpointError, load_omni, load_omni_thinker, load_thinker, position_ticks

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEMO_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "demo"


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
    gen.add_argument("--transcribe", action="store_true",
                     help="the reply is a transcript of the one --audio: decode it jointly with the audio encoder's "
                          "CTC reading (a checkpoint whose config names thinker_config.ctc_heard_weight, as the demo "
                          "model's does; without --transcribe such a checkpoint decodes a think block's first line, "
                          "the question as heard, so)")
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
                     help="also speak the reply (a checkpoint with talker and code2wav): stream it while the text is "
                          "written, write a 24 kHz wav and a per-stage timing table on stderr")
    gen.add_argument("--voice", metavar="NAME",
                     help="speaker of --speak (default: ethan when the checkpoint has it, else its first speaker)")
    gen.add_argument("--voice-clone", metavar="FILE",
                     help="speak in the voice of this reference clip (1-30 s of speech); needs a checkpoint with an "
                          "audio tokenizer (codec encoder)")
    gen.add_argument("--voice-description", metavar="TEXT", help="a text description of the --voice-clone voice")
    gen.add_argument("--talker-sample", action="store_true",
                     help="sample speech codes with the reference's settings (temperature 0.9, top-k 50; residual "
                          "codebooks top-p 0.8) instead of greedily; --seed seeds it")
    gen.add_argument("--frames-per-chunk", type=int, default=8, metavar="N",
                     help="--speak: Code2Wav renders the first frame alone, then 2, 4, ... up to N frames at once "
                          "(fewer, larger renders; the first packet is not delayed)")
    gen.add_argument("--language", metavar="CODE",
                     help="language of the reply for an ARIA talker's frames-per-token prior (e.g. en, zh)")
    gen.add_argument("--max-audio-frames", type=int, default=4096, metavar="N",
                     help="most codec frames (12.5 per second of speech) --speak generates")
    gen.set_defaults(run=run_generate)
    demo = commands.add_parser("demo", help="answer a spoken question in speech with the demo model",
                               description="Send a spoken question (the bundled one, or yours) through the whole "
                                           "stack: the answer streams as text, its speech goes to a wav, and the "
                                           "per-stage latency table is printed.")
    demo.add_argument("--checkpoint", default=str(DEMO_CHECKPOINT), metavar="DIR",
                      help="the model (default: checkpoints/demo, the demo model `make demo-model` trains)")
    demo.add_argument("--audio", action="append", default=[], metavar="FILE",
                      help="your spoken question (default: the demo's bundled question.wav); repeatable")
    demo.add_argument("--image", action="append", default=[], metavar="FILE", help="an image to ask about")
    demo.add_argument("--video", action="append", default=[], metavar="FILE", help="a video to ask about")
    demo.add_argument("--prompt", default="", metavar="TEXT", help="text after the media (e.g. the question)")
    demo.add_argument("--voice", metavar="NAME", help="one of the demo model's speakers")
    demo.add_argument("--out", default="answer.wav", metavar="FILE", help="where the answer's speech goes")
    demo.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    demo.add_argument("--max-new-tokens", type=int, default=256, metavar="N",
                      help="most reply tokens, think block included (a worked product: up to 112)")
    demo.add_argument("--max-audio-frames", type=int, default=600, metavar="N")
    demo.set_defaults(run=run_demo)
    tr = commands.add_parser("train", help="train a stage of the recipe: `omnistream train STAGE --data D --work W`",
                             add_help=False)
    tr.add_argument("rest", nargs=argparse.REMAINDER)
    tr.set_defaults(run=run_train)
    commands.add_parser("eval", help="evaluate a checkpoint on held-out data: `omnistream eval --checkpoint DIR "
                                     "--data DIR` (needs the eval extra)", add_help=False)
    data = commands.add_parser("data", help="make training data: `omnistream data synth --out DIR --seed S ...`",
                               add_help=False)
    data.add_argument("rest", nargs=argparse.REMAINDER)
    data.set_defaults(run=run_data)
    return parser


def run_demo(args: argparse.Namespace) -> None:
    """`omnistream demo`: the bundled (or given) question through the whole stack, spoken back."""
    directory = Path(args.checkpoint)
    if not (directory / "config.json").is_file():
        if directory.resolve() == DEMO_CHECKPOINT.resolve():
            raise InputError(f"no model at {directory}: the demo model ships in git there (`git checkout -- "
                             f"checkpoints/demo` restores it); `make demo-model` trains it again (hours on CPU), or "
                             f"give --checkpoint DIR")
        raise InputError(f"no model at {directory}: --checkpoint needs a directory with config.json")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: CUDA is not available on this machine")
    if not (args.audio or args.image or args.video):
        args.audio = [str(directory / "question.wav")]
    for path in args.audio + args.image + args.video:
        if not Path(path).is_file():
            raise InputError(f"{path}: no such file")
    from .audio.io import load_audio
    from .voice import MIN_SPEECH_SECONDS, speech_seconds

    for path in args.audio:
        heard = speech_seconds(load_audio(path, target_rate=16000, max_seconds=600), 16000)
        if heard < MIN_SPEECH_SECONDS:
            raise InputError(f"{path} has no speech to answer ({heard:.2f} s of speech-like sound; at least "
                             f"{MIN_SPEECH_SECONDS} s is needed)")
    spoken = argparse.Namespace(
        checkpoint=str(directory), prompt=args.prompt, system=None, audio=args.audio, image=args.image,
        video=args.video, use_audio_in_video=False, raw=False, compile=False, dtype="float32", device=args.device,
        speak=args.out, voice=args.voice, voice_clone=None, voice_description=None, talker_sample=False,
        language=None, seed=None, max_new_tokens=args.max_new_tokens, max_audio_frames=args.max_audio_frames,
        frames_per_chunk=8)
    run_speak(spoken, SamplingParams())


def run_train(args: argparse.Namespace) -> None:
    """`omnistream train STAGE ...` (see omnistream.train.recipe)."""
    from .train.recipe import main as train_main

    code = train_main(args.rest)
    if code:
        raise SystemExit(code)


def run_data(args: argparse.Namespace) -> None:
    """`omnistream data synth ...` (see omnistream.data.synth)."""
    from .data.synth import main as synth

    if args.rest[:1] != ["synth"]:
        raise InputError("usage: omnistream data synth --out DIR --seed S [--split train|eval] [--num N] ...")
    code = synth(args.rest[1:])
    if code:
        raise SystemExit(code)


def _messages(args: argparse.Namespace) -> list[dict]:
    """The chat: an optional system message, then the user's audio files (in order) and prompt text."""
    messages = [{"role": "system", "content": args.system}] if args.system else []
    parts = [{"type": "audio", "audio": path} for path in args.audio]
    parts += [{"type": "image", "image": path} for path in args.image]
    parts += [{"type": "video", "video": path, "use_audio_in_video": args.use_audio_in_video} for path in args.video]
    if args.prompt:
        parts.append({"type": "text", "text": args.prompt})
    messages.append({"role": "user", "content": parts})
    return messages


def _check_media(args: argparse.Namespace, thinker) -> None:
    """Refuse media the checkpoint has no encoder for."""
    if (args.image or args.video) and thinker.visual is None:
        raise InputError(f"{args.checkpoint} has no vision encoder (vision_config), so --image and --video "
                         f"cannot be used")
    if (args.audio or args.use_audio_in_video) and thinker.audio_tower is None:
        raise InputError(f"{args.checkpoint} has no audio encoder (audio_config), so --audio and "
                         f"--use-audio-in-video cannot be used")


def _media_prompt(args: argparse.Namespace, thinker, tokenizer: Tokenizer) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Processor output on the model's device: input_ids (1, S), the encoders' inputs, position_ids (or None)."""
    lm = thinker.lm
    audio_cfg = None if thinker.audio_tower is None else thinker.audio_tower.config
    vision_cfg = None if thinker.visual is None else thinker.visual.config
    layout = QWEN35_OMNI if lm.config.layout == QWEN35 else QWEN3_OMNI
    saved = json.loads((Path(args.checkpoint) / "config.json").read_text()).get("processor_config") or {}
    pixels = {k: tuple(saved[k]) for k in ("image_pixels", "video_pixels") if k in saved}  # what it was trained on
    prompt = Processor(tokenizer, audio_cfg, vision_config=vision_cfg, layout=layout, **pixels,
                       position_id_per_seconds=position_ticks(args.checkpoint))(_messages(args))

    def move(x, cast=False):
        return None if x is None else x.to(lm.device, lm.dtype) if cast else x.to(lm.device)

    media = dict(audio_features=move(prompt.audio_features, True), audio_lengths=prompt.audio_lengths or None,
                 pixel_values=move(prompt.pixel_values, True), image_grid_thw=move(prompt.image_grid_thw),
                 pixel_values_videos=move(prompt.pixel_values_videos, True), video_grid_thw=move(prompt.video_grid_thw),
                 video_second_per_grid=prompt.video_second_per_grid or None,
                 use_audio_in_video=prompt.use_audio_in_video)
    return move(prompt.input_ids), media, move(prompt.position_ids)


def _heard(args: argparse.Namespace, thinker, tokenizer: Tokenizer) -> Heard | None:
    """The checkpoint's joint CTC decoding of heard lines, or None; --transcribe needs one."""
    heard = Heard.from_checkpoint(args.checkpoint, tokenizer, tokenizer.stop_ids(thinker.lm.config.eos_token_ids))
    if heard is None and getattr(args, "transcribe", False):
        raise InputError(f"--transcribe: {args.checkpoint} names no CTC reading of its audio encoder "
                         f"(thinker_config.ctc_heard_weight and ctc_blank_token_id); drop --transcribe and ask for a "
                         f"transcript in --prompt")
    return heard


def _guide(args: argparse.Namespace, thinker, tokenizer: Tokenizer, input_ids: torch.Tensor,
           embeds: torch.Tensor) -> HeardLine | None:
    """The heard-line rule of this prompt: the whole reply with --transcribe, else a think block's first line."""
    heard = _heard(args, thinker, tokenizer)
    if heard is None:
        return None
    return heard.guide(thinker, input_ids, embeds, tokenizer.token_to_id(THINK_OPEN), transcript=args.transcribe)


def run_generate(args: argparse.Namespace) -> None:
    """Load the checkpoint, stream the reply to stdout and a timing line to stderr."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: CUDA is not available on this machine")
    media = args.audio or args.image or args.video
    if args.raw and media:
        raise InputError("--raw feeds text only; it cannot be combined with --audio, --image or --video")
    if args.use_audio_in_video and not args.video:
        raise InputError("--use-audio-in-video needs at least one --video")
    if not args.prompt.strip():
        raise InputError("--prompt is empty")
    if args.transcribe and (len(args.audio) != 1 or args.video or args.speak is not None):
        raise InputError("--transcribe writes down one clip: give exactly one --audio, and no --video or --speak")
    sampling = SamplingParams(args.temperature, args.top_k, args.top_p, args.repetition_penalty, args.seed)
    if args.speak is not None:
        run_speak(args, sampling)
        return
    tokenizer = Tokenizer(args.checkpoint)
    embeds = deepstack = positions = guide = None
    if media:
        thinker = load_omni_thinker(args.checkpoint, DTYPES[args.dtype], args.device)
        _check_media(args, thinker)
        model = thinker.lm
        start = time.perf_counter()
        input_ids, inputs, positions = _media_prompt(args, thinker, tokenizer)
        with torch.no_grad():
            embeds, deepstack = thinker.embed(input_ids, **{k: inputs[k] for k in (
                "audio_features", "audio_lengths", "pixel_values", "image_grid_thw", "pixel_values_videos",
                "video_grid_thw")})  # (1, S, H)
        guide = _guide(args, thinker, tokenizer, input_ids, embeds)
    else:
        model, _ = load_thinker(args.checkpoint, DTYPES[args.dtype], args.device)
        start = time.perf_counter()
        ids = tokenizer.encode(args.prompt) if args.raw else tokenizer.encode_chat(_messages(args))
        input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)  # (1, S)
    if args.compile:
        model.compile_decode()
    stops = tokenizer.stop_ids(model.config.eos_token_ids)
    decoder = StreamDecoder(tokenizer)
    first = None
    n = 0
    for token in stream(model, input_ids, max_new_tokens=args.max_new_tokens, sampling=sampling, stop_tokens=stops,
                        inputs_embeds=embeds, deepstack=deepstack, position_ids=positions, guide=guide):
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


def _cloned_voice(args: argparse.Namespace, tokenizer: Tokenizer):
    """The --voice-clone clip as a voice prompt, encoded by the checkpoint's audio tokenizer (always fp32)."""
    from .voice import encode_voice_clip, load_audio_tokenizer

    codec = load_audio_tokenizer(args.checkpoint, device=args.device)
    description = tokenizer.encode(args.voice_description) if args.voice_description else []
    return encode_voice_clip(args.voice_clone, codec, description_ids=description)


def _check_roles(tokenizer: Tokenizer, tokens) -> None:
    """The config's role ids must be how the tokenizer writes them, or the talker would miss the user's turns."""
    for role, expected in (("user", tokens.user_token_id), ("assistant", tokens.assistant_token_id)):
        got = tokenizer.encode(f"<|im_start|>{role}\n")[1:-1]
        if got[:1] != [expected]:
            raise ConfigError(f"config.json gives {role}_token_id {expected}, but the tokenizer writes "
                              f"'<|im_start|>{role}' with ids {got}: the talker could not find the {role} turns")


def run_speak(args: argparse.Namespace, sampling: SamplingParams) -> None:
    """--speak: stream the reply's text to stdout, write its speech to a 24 kHz wav, print stage timings."""
    import numpy as np
    import soundfile as sf

    from .engine.session import SAMPLE_RATE, AudioChunk, SpeechSession, TextDelta

    if args.max_new_tokens < 1 or args.max_audio_frames < 1:
        raise InputError("--max-new-tokens and --max-audio-frames must be at least 1")
    if args.voice and args.voice_clone:
        raise InputError("--voice and --voice-clone cannot be used together")
    if args.voice_description and not args.voice_clone:
        raise InputError("--voice-description describes a --voice-clone clip; give the clip too")
    voice = None if args.voice_clone else _voice(args.checkpoint, args.voice)
    tokenizer = Tokenizer(args.checkpoint)
    cloned = _cloned_voice(args, tokenizer) if args.voice_clone else None
    thinker, talker, code2wav, tokens = load_omni(args.checkpoint, DTYPES[args.dtype], args.device)
    _check_roles(tokenizer, tokens)
    _check_media(args, thinker)
    start = time.perf_counter()
    media, positions = {}, None
    if args.audio or args.image or args.video:
        input_ids, media, positions = _media_prompt(args, thinker, tokenizer)
    else:
        ids = tokenizer.encode(args.prompt) if args.raw else tokenizer.encode_chat(_messages(args))
        input_ids = torch.tensor([ids], dtype=torch.long, device=thinker.lm.device)  # (1, S)
    if args.compile:
        thinker.lm.compile_decode()
    stops = tokenizer.stop_ids(thinker.lm.config.eos_token_ids)
    talker_sampling = SpeechSession.reference_sampling() if args.talker_sample else {}
    try:
        session = SpeechSession(thinker, talker, code2wav, tokens, speaker=voice, voice=cloned,
                                thinker_eos_token_id=stops, thinker_max_new_tokens=args.max_new_tokens,
                                talker_max_new_tokens=args.max_audio_frames + 1, thinker_sampling=sampling,
                                seed=args.seed, language=args.language,
                                max_frames_per_chunk=args.frames_per_chunk,
                                reasoning=reasoning_token_ids(tokenizer), heard=_heard(args, thinker, tokenizer),
                                **talker_sampling)
    except ValueError as e:
        raise InputError(str(e)) from None
    decoder = StreamDecoder(tokenizer)
    pcm, n_text = [], 0
    try:
        for event in session.speak(input_ids, position_ids=positions, **media):
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
            ("talker prefill", ms("talker_prefill")), ("talker first frame", ms("talker_first_frame")),
            ("MTP per frame", ms("mtp_per_frame")),
            ("Code2Wav per frame", ms("code2wav_per_frame")), ("first audio packet", ms("first_audio_packet")),
            ("RTF", rtf + "    (processing / audio duration)")]
    print(f"audio {frames} frames, {seconds:.2f} s at {SAMPLE_RATE} Hz -> {args.speak}; {n_text} text tokens; "
          f"{int(t.get('stalls', 0))} talker steps waited for text", file=sys.stderr)
    for name, value in rows:
        print(f"  {name:<20} {value}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; user errors print `omnistream: error: ...` and exit with status 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["train"], ["eval"]):  # their own parsers (`omnistream train --help` lists the stages)
        if argv[0] == "train":
            from .train.recipe import main as sub_main
        else:
            from .eval.cli import main as sub_main
        code = sub_main(argv[1:])
        if code:
            raise SystemExit(code)
        return 0
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ConfigError, CheckpointError, InputError, TokenizerError, AudioError, VisionInputError,
            PositionError, VoiceCloneError) as e:
        print(f"omnistream: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
