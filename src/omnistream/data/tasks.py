"""Task builders: each item, a chat in the processor's format, is a pure function of (seed, split, index).

Item i of a run uses task `tasks[i % len(tasks)]` and its own RNG, seeded by SHA-256 of (seed, split, i), so items
do not depend on each other, on the number of workers, or on how many items are made. Media go under the output
directory (audio/, images/, videos/, named by the item id) and are referred to by paths relative to it.

The eval split speaks only with held-out voices (voices.py) and only held-out sentences and questions (text.py),
with one exception: `read_aloud` asks for a voice by name, and a name means nothing for a voice never heard in
training, so it uses training voices in both splits (its eval sentences are still held out). Zero-shot cloning
(`voice_clone`) is what tests unseen voices on the speech-out side. In the train split half the clips to transcribe, the
spoken questions and the voices to clone are the crowd's (voices.crowd_voice: other espeak-ng timbres at random pitch
and speed), so that the encoder hears, and cloning copies, more than the roster's twelve training voices.
Images and videos are fresh random scenes in both splits (drawn from the item's RNG; nothing is held out by key).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from . import scenes, text, videos
from .voices import SAMPLE_RATE, Voice, assistant_voice, crowd_voice, speak, voices

TASKS = ("transcribe", "arithmetic", "counting", "read_aloud", "voice_clone", "image_qa", "video_caption",
         "video_segments")
DRILLS = ("numbers",)  # built on request only (--tasks numbers), never in the default rotation
SPEECH_TASKS = frozenset({"transcribe", "arithmetic", "counting", "read_aloud", "voice_clone", "numbers"})
MEDIA_DIRS = ("audio", "images", "videos")
MEDIA_KINDS = ("audio", "image", "video")  # content part types that refer to a file
CROWD_SHARE = 0.5  # training clips to transcribe, spoken questions and voices to clone said by the crowd


@dataclass(frozen=True)
class Context:
    """What a builder needs: where media go, the split, the item's id and its RNG."""

    out: Path
    split: str
    item_id: str
    rng: random.Random

    def language(self) -> str:
        """A language drawn from the item's RNG."""
        return self.rng.choice(text.LANGUAGES)

    def voice(self, lang: str, split: str | None = None) -> Voice:
        """A voice of `lang` from the roster's `split` voices (the item's split by default)."""
        return self.rng.choice(voices(split or self.split, lang))

    def asker(self, lang: str) -> Voice:
        """The voice of a clip to transcribe, a spoken question or a voice to clone: a roster voice of the split or,
        for half the training items, one of the crowd (voices.crowd_voice)."""
        if self.split == "train" and self.rng.random() < CROWD_SHARE:
            return crowd_voice(self.rng, lang)
        return self.voice(lang)

    def wav(self, suffix: str, samples: np.ndarray) -> str:
        """Write 24 kHz 16-bit PCM audio/{id}{suffix}.wav; return its path relative to the output directory."""
        name = f"audio/{self.item_id}{suffix}.wav"
        soundfile.write(self.out / name, samples, SAMPLE_RATE, subtype="PCM_16")
        return name


def item_rng(seed: int, stream: str, index: int) -> random.Random:
    """The RNG of one item of a file (`stream`: its name, the split's by default), independent of every other's."""
    digest = hashlib.sha256(f"omnistream.data/{seed}/{stream}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _item(ctx: Context, task: str, lang: str, voice: Voice | None, content: list[dict], reply: str, meta: dict,
          **speech: str) -> dict:
    """The JSON record of one item; `speech` adds target_speech / reference_speech paths."""
    return {"id": ctx.item_id, "split": ctx.split, "task": task, "language": lang,
            "voice": voice.name if voice else None, "messages": [{"role": "user", "content": content}],
            "reply": reply, **speech, "meta": meta}


def _to_transcribe(ctx: Context, task: str, lang: str, voice: Voice, said: text.Utterance, meta: dict) -> dict:
    """`said` spoken by `voice` + the transcribe prompt -> its transcript."""
    audio = ctx.wav("", speak(said.speech, voice))
    content = [{"type": "audio", "audio": audio}, {"type": "text", "text": text.transcribe_prompt(lang)}]
    return _item(ctx, task, lang, voice, content, said.text, {**meta, "speech_input": said.speech})


def transcribe(ctx: Context) -> dict:
    """A sentence spoken by a voice of the split -> its transcript."""
    lang = ctx.language()
    voice = ctx.asker(lang)
    key, said = text.sentence(ctx.rng, ctx.split, lang)
    return _to_transcribe(ctx, "transcribe", lang, voice, said, {"sentence": key})


def number_drill(ctx: Context) -> dict:
    """A list of three to five numbers spoken by a voice of the split -> its transcript (for AuT: hearing numbers)."""
    lang = ctx.language()
    voice = ctx.asker(lang)
    return _to_transcribe(ctx, "numbers", lang, voice, text.number_list(ctx.rng, lang), {})


def _spoken_question(ctx: Context, task: str, make: Callable[[random.Random, str, str], text.Question]) -> dict:
    """A spoken question (audio only) -> its full-sentence answer in the question's language."""
    lang = ctx.language()
    voice = ctx.asker(lang)
    q = make(ctx.rng, ctx.split, lang)
    audio = ctx.wav("", speak(q.question.speech, voice))
    answer = ctx.wav("-target", speak(q.answer_speech, assistant_voice(lang)))
    meta = {**q.meta, "question": q.question.text, "speech_input": q.question.speech, "answer_speech": q.answer_speech,
            "answer_voice": assistant_voice(lang).name}
    return _item(ctx, task, lang, voice, [{"type": "audio", "audio": audio}], q.answer, meta, target_speech=answer)


def arithmetic(ctx: Context) -> dict:
    """A spoken sum, difference or small product -> "Seventeen plus twenty-five is forty-two."."""
    return _spoken_question(ctx, "arithmetic", text.arithmetic)


def counting(ctx: Context) -> dict:
    """A spoken counting question (next / previous number, how often a word is said) -> a full sentence."""
    return _spoken_question(ctx, "counting", text.counting)


def read_aloud(ctx: Context) -> dict:
    """"Read this aloud in Ava's voice: ..." -> the sentence, and Ava saying it as the speech target."""
    lang = ctx.language()
    voice = ctx.voice(lang, split="train")
    key, said = text.sentence(ctx.rng, ctx.split, lang)
    target = ctx.wav("-target", speak(said.speech, voice))
    content = [{"type": "text", "text": text.read_aloud_prompt(lang, voice.name, said.text)}]
    return _item(ctx, "read_aloud", lang, voice, content, said.text, {"sentence": key}, target_speech=target)


def voice_clone(ctx: Context) -> dict:
    """A reference clip of a voice + "read this aloud in that voice: ..." -> the sentence in that voice."""
    lang = ctx.language()
    voice = ctx.asker(lang)
    key, said = text.sentence(ctx.rng, ctx.split, lang)
    ref_key, ref = text.sentence(ctx.rng, ctx.split, lang, avoid=key)
    reference = ctx.wav("-reference", speak(ref.speech, voice))
    target = ctx.wav("-target", speak(said.speech, voice))
    content = [{"type": "audio", "audio": reference}, {"type": "text", "text": text.clone_prompt(lang, said.text)}]
    meta = {"sentence": key, "reference_sentence": ref_key, "reference_text": ref.text}
    return _item(ctx, "voice_clone", lang, voice, content, said.text, meta, reference_speech=reference,
                 target_speech=target)


def image_qa(ctx: Context) -> dict:
    """A drawing of 1-3 shapes + a what / where / how-many question -> a full-sentence answer."""
    lang = ctx.language()
    shapes = scenes.random_shapes(ctx.rng, ctx.rng.randint(1, 3))
    name = f"images/{ctx.item_id}.png"
    scenes.draw_scene(shapes).save(ctx.out / name)
    question, answer, meta = scenes.question(ctx.rng, shapes, lang)
    content = [{"type": "image", "image": name}, {"type": "text", "text": question}]
    return _item(ctx, "image_qa", lang, None, content, answer, {**meta, "shapes": scenes.shape_meta(shapes)})


def _video_task(ctx: Context, task: str, prompt: Callable[[str], str],
                reply: Callable[[videos.Timeline, str], str]) -> dict:
    """A short drawn video + an instruction -> timestamped captions or segments."""
    lang = ctx.language()
    timeline = videos.random_timeline(ctx.rng)
    name = f"videos/{ctx.item_id}.mp4"
    videos.write_video(timeline, ctx.out / name)
    content = [{"type": "video", "video": name}, {"type": "text", "text": prompt(lang)}]
    return _item(ctx, task, lang, None, content, reply(timeline, lang), videos.timeline_meta(timeline))


def video_caption(ctx: Context) -> dict:
    """A video -> one "<t seconds> ..." line per shape appearing or leaving."""
    return _video_task(ctx, "video_caption", videos.caption_prompt, videos.captions)


def video_segments(ctx: Context) -> dict:
    """A video -> one "<start> to <end>: shapes" line per stretch with the same visible shapes."""
    return _video_task(ctx, "video_segments", videos.segment_prompt, videos.segment_text)


BUILDERS: dict[str, Callable[[Context], dict]] = {
    "transcribe": transcribe, "arithmetic": arithmetic, "counting": counting, "read_aloud": read_aloud,
    "voice_clone": voice_clone, "image_qa": image_qa, "video_caption": video_caption, "video_segments": video_segments,
    "numbers": number_drill,
}


def build_item(out: Path, seed: int, split: str, tasks: tuple[str, ...], index: int, name: str | None = None) -> dict:
    """Item `index` of the split's file `name` (the split's own by default; the item id's prefix and its RNG's
    stream): writes its media under `out` and returns its JSON record."""
    stem = name or split
    ctx = Context(Path(out), split, f"{stem}-{index:06d}", item_rng(seed, stem, index))
    return BUILDERS[tasks[index % len(tasks)]](ctx)
