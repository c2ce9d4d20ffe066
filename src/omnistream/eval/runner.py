"""Run a speaking checkpoint on data items: text replies from the Thinker, speech from the whole streaming session.

`ModelRunner(checkpoint)` loads the model once (load_omni), its tokenizer and a processor in the checkpoint's
prompt layout, with the Thinker training's image and video pixel bounds (the 96 x 96 drawings stay that size).
`text(item)` answers an item's user turn greedily with the Thinker alone (transcripts, spoken and image
questions, video captions). `speak(item)` says the item's reference reply through `SpeechSession` with the
reply given (`reply=`), so the Talker's speech is judged on exactly the sentences espeak-ng said for the data:
a read-aloud item speaks in its named voice (when the checkpoint has it), a voice-clone item in the voice of its
reference clip (encoded by the checkpoint's audio tokenizer). `ModelRunner.from_stage(WORK/STAGE)` answers with a
Thinker training stage's checkpoint instead, to measure the recipe between its stages (text only: no Talker yet).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..config import QWEN35, ConfigError
from ..engine.generate import generate
from ..engine.heard import HEARD_WEIGHT, Heard, LineEnds
from ..engine.session import SpeechSession
from ..processor import QWEN3_OMNI, QWEN35_OMNI, THINK_OPEN, TICKS_PER_SECOND, Processor, Tokenizer, split_reasoning
from ..thinker import InputError
from ..train.thinker_data import IMAGE_PIXELS, VIDEO_PIXELS
from ..weights import load_omni, position_ticks

SIZES = ("demo", "tiny")  # the recipe's Thinker sizes, tried in turn on a stage checkpoint


@dataclass
class Spoken:
    """One spoken reply: 24 kHz PCM, the voice used, stalls and frames of the session, seconds taken."""

    pcm: np.ndarray
    voice: str
    stalls: float
    frames: int
    seconds: float
    timings: dict = field(default_factory=dict)


def _check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: CUDA is not available on this machine")


class ModelRunner:
    """A loaded speaking checkpoint that answers and speaks data items (greedy decoding throughout)."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu", max_new_tokens: int = 256,
                 max_audio_frames: int = 600):
        self.directory, self.stage = Path(checkpoint), None
        if not (self.directory / "config.json").is_file():
            raise InputError(f"no model at {self.directory}: --checkpoint needs a checkpoint directory with "
                             f"config.json (a whole speaking model saved with save_omni)")
        _check_device(device)
        thinker, self.talker, self.code2wav, self.tokens = load_omni(self.directory, torch.float32, device)
        self._attach(thinker, Tokenizer(self.directory), device, max_new_tokens,
                     position_ticks(self.directory))
        self.heard = Heard.from_checkpoint(self.directory, self.tokenizer, self.stops)
        self.max_audio_frames = max_audio_frames
        self.speakers = {k.lower(): k for k in self.talker.config.speaker_id}
        self.interleave = self.talker.config.interleave

    @classmethod
    def from_stage(cls, stage: str | Path, device: str = "cpu", max_new_tokens: int = 256) -> ModelRunner:
        """A text-only runner of a Thinker training stage (WORK/STAGE/checkpoint.pt with WORK/tokenizer): it
        answers items as the exported model's Thinker would, but has no Talker, so it cannot speak."""
        from ..train.thinker_stages import build_thinker
        from ..train.tokenizer import special_ids

        _check_device(device)
        directory = Path(stage)
        path, vocab = directory / "checkpoint.pt", directory.parent / "tokenizer"
        if not path.is_file():
            raise InputError(f"no stage checkpoint at {path}: --stage needs a directory WORK/STAGE written by "
                             f"`omnistream train STAGE` (a thinker stage)")
        if not (vocab / "tokenizer.json").is_file():
            raise InputError(f"{directory} has no tokenizer beside it ({vocab}/tokenizer.json): --stage needs the "
                             f"stage inside the work directory that `omnistream train tokenizer` wrote")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            name, weights = state["stage"], state["model"]
        except Exception as e:  # a truncated or foreign file: say which and why
            raise InputError(f"cannot read the stage checkpoint {path}: {type(e).__name__}: {e}") from None
        if not str(name).startswith("thinker-"):
            raise InputError(f"{path} is a checkpoint of {name!r}; --stage takes a Thinker stage (thinker-text ... "
                             f"thinker-s3)")
        tokenizer = Tokenizer(vocab)
        ids = special_ids(tokenizer)
        for size in SIZES:
            thinker = build_thinker(size, ids)
            try:
                thinker.load_state_dict(weights)
                break
            except RuntimeError:
                continue
        else:
            raise InputError(f"{path} fits no {' or '.join(SIZES)} Thinker with the tokenizer in {vocab} "
                             f"({ids['vocab_size']} ids)")
        runner = cls.__new__(cls)
        runner.directory, runner.stage = directory, name
        runner.talker = runner.code2wav = runner.tokens = runner.interleave = None
        runner._attach(thinker.to(device).eval(), tokenizer, device, max_new_tokens, TICKS_PER_SECOND)
        runner.max_audio_frames, runner.speakers = 0, {}
        runner.heard = Heard(HEARD_WEIGHT, ids["pad_token_id"], LineEnds(tokenizer, runner.stops))
        return runner

    def _attach(self, thinker, tokenizer: Tokenizer, device: str, max_new_tokens: int, ticks: float) -> None:
        """Set the Thinker, its tokenizer, the processor in its prompt layout and the end-of-turn ids."""
        self.thinker, self.tokenizer, self.device, self.max_new_tokens = thinker, tokenizer, device, max_new_tokens
        lm = thinker.lm
        audio_cfg = None if thinker.audio_tower is None else thinker.audio_tower.config
        vision_cfg = None if thinker.visual is None else thinker.visual.config
        self.processor = Processor(tokenizer, audio_cfg, vision_config=vision_cfg, image_pixels=IMAGE_PIXELS,
                                   video_pixels=VIDEO_PIXELS,
                                   layout=QWEN35_OMNI if lm.config.layout == QWEN35 else QWEN3_OMNI,
                                   position_id_per_seconds=ticks)
        self.stops = tokenizer.stop_ids(lm.config.eos_token_ids)
        if not self.stops:
            raise ConfigError(f"{self.directory}: neither the tokenizer nor the config names an end-of-turn token")
        self._codec = None
        self.think_open = self.tokenizer.token_to_id(THINK_OPEN)

    def use_heard(self, weight: float | None = None, beam: int | None = None) -> None:
        """Decode heard lines (transcripts, a think block's first line) at CTC weight `weight` (0: the LM alone)
        with a beam of `beam` hypotheses (1: greedy); None keeps the checkpoint's."""
        if self.heard is not None:
            self.heard = replace(self.heard, weight=self.heard.weight if weight is None else weight,
                                 beam=self.heard.beam if beam is None else beam)
        elif weight or beam is not None:
            raise InputError(f"{self.directory}: its audio encoder has no CTC reading (its config names no "
                             f"thinker_config.ctc_blank_token_id), so joint decoding cannot apply")

    # ------------------------------------------------------------------ inputs
    def _prompt(self, item: dict):
        """Processor output for the item's user turn, on the model's device."""
        lm = self.thinker.lm
        p = self.processor(item["messages"])

        def move(x, cast=False):
            return None if x is None else x.to(lm.device, lm.dtype) if cast else x.to(lm.device)

        media = dict(audio_features=move(p.audio_features, True), audio_lengths=p.audio_lengths or None,
                     pixel_values=move(p.pixel_values, True), image_grid_thw=move(p.image_grid_thw),
                     pixel_values_videos=move(p.pixel_values_videos, True), video_grid_thw=move(p.video_grid_thw))
        extra = dict(video_second_per_grid=p.video_second_per_grid or None, use_audio_in_video=p.use_audio_in_video)
        return move(p.input_ids), media, extra, move(p.position_ids)

    def check_media(self, item: dict) -> None:
        """Refuse an item whose media this checkpoint has no encoder for."""
        kinds = {part["type"] for part in item["messages"][0]["content"]}
        if "audio" in kinds and self.thinker.audio_tower is None:
            raise InputError(f"{self.directory} has no audio encoder, so it cannot answer {item['task']} items")
        if kinds & {"image", "video"} and self.thinker.visual is None:
            raise InputError(f"{self.directory} has no vision encoder, so it cannot answer {item['task']} items")

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def text(self, item: dict) -> tuple[str, str, float]:
        """The Thinker's greedy (think block, answer) to the item, special tokens dropped, and the seconds it took;
        a transcript or a think block's heard line is decoded jointly with the audio's CTC reading (self.heard)."""
        start = time.perf_counter()
        input_ids, media, _, positions = self._prompt(item)
        embeds, deepstack = self.thinker.embed(input_ids, **media)
        guide = None if self.heard is None else self.heard.guide(self.thinker, input_ids, embeds, self.think_open,
                                                                 transcript=item["task"] == "transcribe")
        out = generate(self.thinker.lm, input_ids, max_new_tokens=self.max_new_tokens, stop_tokens=self.stops,
                       inputs_embeds=embeds, deepstack=deepstack, position_ids=positions, guide=guide)
        ids = out.tokens[0, :out.lengths[0]].tolist()
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return *split_reasoning(text), time.perf_counter() - start

    # ------------------------------------------------------------------ speech
    def _voice(self, item: dict) -> str:
        """The item's named voice when the checkpoint has it, else its default speaker (ethan, or the first)."""
        name = (item.get("voice") or "").lower()
        if name in self.speakers:
            return self.speakers[name]
        if not self.speakers:
            raise ConfigError(f"{self.directory}: the talker has no speakers (talker_config.speaker_id)")
        return self.speakers.get("ethan", next(iter(self.speakers.values())))

    def clone_prompt(self, path: str):
        """The voice prompt of a reference clip, encoded by the checkpoint's audio tokenizer."""
        from ..voice import encode_voice_clip, load_audio_tokenizer

        if self._codec is None:
            self._codec = load_audio_tokenizer(self.directory, device=self.device)
        return encode_voice_clip(path, self._codec)

    @torch.no_grad()
    def speak(self, item: dict) -> Spoken:
        """Say the item's reference reply through the streaming session (in its voice or its reference's voice)."""
        if self.talker is None:
            raise InputError(f"{self.directory} is a Thinker training stage: it has no Talker, so it cannot say "
                             f"{item['task']} items")
        start = time.perf_counter()
        input_ids, media, extra, positions = self._prompt(item)
        cloned = item["task"] == "voice_clone" and item.get("reference_speech")
        voice = self.clone_prompt(item["reference_speech"]) if cloned else None
        speaker = "clone" if cloned else self._voice(item)
        reply = self.tokenizer.encode(item["reply"]) + [self.stops[0]]
        session = SpeechSession(self.thinker, self.talker, self.code2wav, self.tokens,
                                speaker=None if cloned else speaker, voice=voice, thinker_eos_token_id=self.stops,
                                thinker_max_new_tokens=len(reply) + 1,
                                talker_max_new_tokens=self.max_audio_frames + 1, language=item.get("language"))
        result = session.run(input_ids, position_ids=positions, reply=reply, **media, **extra)
        t = result.timings
        return Spoken(result.pcm, speaker, float(t.get("stalls", 0.0)), int(t.get("frames", 0)),
                      time.perf_counter() - start, dict(t))

