"""Thinker training examples from synthetic chat items: token ids, labels, positions and the media they hold.

An `Example` is one sequence in the Qwen3.5-Omni prompt layout (`Processor(layout="qwen3.5-omni")`): the chat with
the item's user turn, the assistant opener `<|im_start|>assistant\\n`, then the target = the reply + `<|im_end|>`.
`labels` copy the ids on the targets and hold -100 everywhere else (prompt, media placeholders, openers), so the
next-token loss pays only for what the assistant writes. `position_ids` (3, S) are the processor's TM-RoPE ids,
continued over the reply (text after the last media item counts on from 1 + the maximum so far); prompts without
images or videos are plain 0..S-1. No thinking block is written after the opener (enable_thinking=None); an
arithmetic reply starts with its own, the sum in digits (`trained_reply`), then says the answer in words.

Example kinds (`ThinkerDataset(kind=...)`):
- "text", the warm-up of a language model that starts from random weights, in two forms:
  - an item whose audio says known words (transcribe, spoken questions) is "spelled": its chat as the processor
    writes it, audio placeholders and TM-RoPE positions included, but the placeholders hold the ids of what the
    audio says spread over them as a CTC alignment would (each token on a run of 1 or more slots, the pad id, CTC's
    blank, between), then the reply. AuT pretraining teaches the encoder to emit exactly such sequences (its tokens
    point at the embeddings of the words, blanks at the pad's), so the LM learns to read and answer from them before
    any real audio reaches it ("what is five plus two?" -> "Five plus two is seven."). Measured: an LM taught on
    plain text mirrors only (the words as text in the user turn: 0% copy error) still read the AuT encoder's tokens
    at 75% WER after S1, although their own greedy CTC reading was right. A clip shorter than its words (fewer
    slots than tokens) falls back to the plain text mirror;
  - a drawn image or video item (image_qa, video_caption, video_segments) is "spelled" too: its vision placeholders
    hold the mean embeddings of what each merged token's cell shows (vision_grounding), no pixels;
  - an item whose user turn is text only (read-aloud, the generated items) trains as it is, a one-turn chat;
  - any other item: the reply alone, `<|im_start|>assistant\\n{reply}<|im_end|>` (loss on reply + <|im_end|>).
  `generated=N` adds N generated text items (transcripts, arithmetic and counting questions, languages in turn,
  drawn from the training keys only, so held-out sentences and questions stay unseen): copying and arithmetic over
  number words need far more examples than the spoken items carry. The "chat" kind takes `generated` too.
- "chat": one item, one turn (the multitask mix: transcribe, arithmetic, counting, image_qa, video_caption,
  video_segments by default); S2 adds `spelled_media` (each image and video item also once spelled) and `fresh=N`
  (N items each epoch from the drill's generator, so it keeps practising in text beside the spoken items); batches
  never mix text-only, spelled and media items.
- "long" (stage S3), built deterministically from (seed, index) out of 2-4 items of the chat mix:
  - even indices, "recording": the spoken questions (arithmetic, counting) of 2-4 items of one language cut into
    one recording. Each question starts on a timestamp boundary (a multiple of `stamp_seconds` = 2 encoder chunks,
    2.56 s for the 6.25 Hz encoder; silence pads the gaps), the processor writes `<t seconds>` between the audio
    tokens at every boundary, and the reply answers the questions in order, one line each behind the time its
    question starts: "<0.0 seconds> Five plus two is seven.\\n<2.6 seconds> The number after ...". The prompt asks
    for exactly that (RECORDING_PROMPTS, in the items' language). Falls back to a dialogue when no language has
    two question items.
  - odd indices, "dialogue": a multi-turn chat of 2-4 items (any media: several images, videos and audios in one
    context), every assistant reply trained on. Longer videos come only this way: the dataset's videos are 4-8 s
    and are not spliced.
`DrillDataset`, the drill stage's: endless generated text items (DRILL_MIX), a function of (seed, index).
`collate` makes a left-padded batch with attention_mask; the decoder masks padded keys and zeroes padded inputs of
its DeltaNet layers, so each row trains as it would alone.
"""

from __future__ import annotations

import io
import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import soundfile
import torch

from ..audio.io import load_audio
from ..config import AudioConfig, VisionConfig
from ..data import scenes
from ..data import text as templates
from ..processor import IM_END, IM_START, QWEN35_OMNI, Processor, Tokenizer, think_block
from ..vision.video import timestamp_text
from .tokenizer import special_ids
from .vision_grounding import IDS_PER_TOKEN, MEDIA_TASKS, WORDS, CellSpeller

IGNORE = -100
# the S1-S3 tasks; "numbers" (spoken number lists to transcribe) is never in the split, only in extra items
MULTITASK = ("transcribe", "numbers", "arithmetic", "counting", "image_qa", "video_caption", "video_segments")
QUESTION_TASKS = ("arithmetic", "counting")
# the drill stage's generated tasks and their shares: mostly arithmetic, the slowest skill, with counting, copying and
# questions about spelled scenes (reading vision slots)
DRILL_MIX = (("arithmetic", 0.5), ("counting", 0.15), ("transcribe", 0.15), ("image_qa", 0.2))
# The drawings are 96 x 96: kept at that size (no upscaling to the release's 56x56-pixel minimum per token), so a
# 16-pixel patch, 2x2-merged encoder gives 3 x 3 tokens per image or temporal patch, one per cell of the scene grid.
IMAGE_PIXELS = (32 * 32, 128 * 128)
VIDEO_PIXELS = (32 * 32, 128 * 128)
SAMPLE_RATE = 16000
GAP_SECONDS = 0.3  # at least this much silence after each question of a recording
RECORDING_PROMPTS = {
    "en": "Answer every question in this recording in order, one line each, after the time the question starts.",
    "es": "Responde a cada pregunta de esta grabación en orden, una línea cada una, tras el momento en que empieza.",
    "zh": "按顺序回答这段录音里的每个问题，每个答案一行，写在问题开始的时间后面。",
}


@dataclass
class Example:
    """One training sequence of S tokens and the media its placeholders stand for."""

    input_ids: torch.Tensor  # (S,) long
    labels: torch.Tensor  # (S,) long: the id on target tokens, IGNORE elsewhere
    position_ids: torch.Tensor  # (3, S) long
    audio_features: torch.Tensor | None = None  # (A, mels, T) log-mel of the audios in order
    audio_lengths: list[int] = field(default_factory=list)  # valid frames of each
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    task: str = ""
    spoken: list[int] | None = None  # token ids of what the example's one audio says (the CTC target), if known
    cells: torch.Tensor | None = None  # (S, 4) long: vision_grounding spellings at vision slots, -1 rows elsewhere

    @property
    def targets(self) -> int:
        """Tokens the loss is paid on."""
        return int((self.labels != IGNORE).sum())

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def corpus_texts(items: Sequence[Mapping]) -> list[str]:
    """The texts a tokenizer for these items is trained on: replies, prompt texts, what the audios say, the S3
    recording prompts, and the scene words once (vision_grounding spells cells with them as single tokens)."""
    texts = [item["reply"] for item in items] + [t for t in map(spoken_text, items) if t]
    for item in items:
        for message in item["messages"]:
            content = message["content"]
            parts = [content] if isinstance(content, str) else [p.get("text") for p in content if p["type"] == "text"]
            texts += [p for p in parts if p]
    return texts + list(RECORDING_PROMPTS.values()) + ["".join(WORDS.values())]


def spoken_text(item: Mapping) -> str | None:
    """The text an item's audio says: the transcript of a transcribe or number-drill item, the question of a spoken
    question."""
    if item["task"] in ("transcribe", "numbers"):
        return item["reply"]
    if item["task"] in QUESTION_TASKS:
        return item["meta"]["question"]
    return None


def audio_source(item: Mapping):
    """The (first) audio of an item's user turn."""
    return next(p["audio"] for p in item["messages"][0]["content"] if p["type"] == "audio")


def text_mirror(item: Mapping) -> dict:
    """The item's user turn with its audio replaced by the text the audio says."""
    said = spoken_text(item)
    if said is None:
        raise ValueError(f"item {item.get('id')!r} ({item['task']}) has no known spoken text to mirror")
    content = [{"type": "text", "text": said} if p["type"] == "audio" else p for p in item["messages"][0]["content"]]
    return {"role": "user", "content": content}


def trained_reply(item: Mapping) -> str:
    """What the Thinker learns to write for an item: its reply, after a think block when it is a question
    (data.text.reasoning: the question as heard, then its worked step, "5*8=8*5=8+8*4=...=40"). The earlier blocks
    (the worked step alone, "17+25=42", "4*6=6*4=24") measured from scratch on arithmetic
    alone (batches of 64, held-out questions asked in text, en / zh / es): 1,200 steps gave 20 / 40 / 32% without the
    block, 60 / 65 / 58% with "4*6=24"; at 600 steps 35 / 40 / 42% with "4*6=24", 45 / 65 / 52% with "4*6=6*4=24".
    After the text stage and 1,600 drill steps: arithmetic 95 / 90 / 65%, counting 95 / 95 / 80%."""
    worked = templates.reasoning(item.get("meta", {}))
    return item["reply"] if worked is None else think_block(worked) + item["reply"]


def generated_item(task: str, lang: str, rng: random.Random, name: str) -> dict:
    """A text-only item from the training keys, the text mirror of the spoken item it stands for: a written sentence
    to transcribe (copy), or an arithmetic or counting question; or an image question about a scene drawn in memory
    (the drill spells it)."""
    if task == "image_qa":
        shapes = scenes.random_shapes(rng, rng.randint(1, 3))
        question, reply, meta = scenes.question(rng, shapes, lang)
        content = [{"type": "image", "image": scenes.draw_scene(shapes)}, {"type": "text", "text": question}]
        meta = {**meta, "shapes": scenes.shape_meta(shapes)}
    elif task == "transcribe":
        key, said = templates.sentence(rng, "train", lang)
        content = [{"type": "text", "text": said.text}, {"type": "text", "text": templates.transcribe_prompt(lang)}]
        reply, meta = said.text, {"sentence": key}
    else:
        q = getattr(templates, task)(rng, "train", lang)
        content = [{"type": "text", "text": q.question.text}]
        reply, meta = q.answer, {**q.meta, "question": q.question.text}
    return {"id": name, "task": task, "language": lang, "reply": reply,
            "messages": [{"role": "user", "content": content}], "meta": meta}


def generated_items(count: int, seed: int) -> list[dict]:
    """`count` generated items (`generated_item`): transcripts, arithmetic and counting questions in turn,
    languages in turn."""
    makers = itertools.cycle(itertools.product(("transcribe",) + QUESTION_TASKS, templates.LANGUAGES))
    return [generated_item(task, lang, random.Random(f"omnistream.thinker_data/generated/{seed}/{i}"),
                           f"generated-{i}") for i, (task, lang) in zip(range(count), makers)]


class DrillDataset:
    """Endless generated items for the drill stage (text, and spelled scenes): item i is a pure function of (seed, i),
    its task drawn from DRILL_MIX and its language uniformly, so no item repeats the way a fixed set's epochs do."""

    def __init__(self, builder: ExampleBuilder, seed: int = 0, cache: int = 1024):
        self.builder, self.seed, self.size = builder, seed, cache
        self._cache: dict[int, Example] = {}

    def item(self, index: int) -> dict:
        """The generated item of `index`."""
        rng = random.Random(f"omnistream.thinker_data/drill/{self.seed}/{index}")
        task = rng.choices([t for t, _ in DRILL_MIX], [share for _, share in DRILL_MIX])[0]
        return generated_item(task, rng.choice(templates.LANGUAGES), rng, f"drill-{index}")

    def example(self, index: int) -> Example:
        """Example `index` (the most recent `cache` are kept)."""
        if index not in self._cache:
            if len(self._cache) >= self.size:
                self._cache.clear()
            item = self.item(index)
            self._cache[index] = (self.builder.spelled(item) if item["task"] in MEDIA_TASKS else
                                  self.builder.item(item))
        return self._cache[index]

    def target_count(self, index: int) -> int:
        """Target tokens of example `index`."""
        return self.example(index).targets


def _text_form(item: Mapping) -> str:
    """How the "text" kind trains an item: "chat" (a user turn of text only), "spelled" (audio whose words are
    known) or "text" (the reply alone)."""
    kinds = {p["type"] for p in item["messages"][0]["content"]}
    if kinds == {"text"}:
        return "chat"
    if kinds & {"image", "video"}:
        return "spelled" if item["task"] in MEDIA_TASKS else "text"
    return "spelled" if spoken_text(item) is not None else "text"


def spelled_alignment(ids: Sequence[int], slots: int, blank: int, rng: random.Random) -> list[int] | None:
    """`ids` spread over `slots` positions like a CTC alignment: slot span k of `slots / len(ids)` starts with a run
    of 1 or more copies of ids[k], blanks after it (at least one before a repeat of the same id, where the span has
    room); None when there are fewer slots than ids."""
    if len(ids) > slots or not ids:
        return None
    out = [blank] * slots
    for k, token in enumerate(ids):
        start, end = k * slots // len(ids), (k + 1) * slots // len(ids)
        repeat = k + 1 < len(ids) and ids[k + 1] == token and end - start > 1
        run = rng.randint(1, end - start - repeat)
        out[start : start + run] = [token] * run
    return out


class ExampleBuilder:
    """Items -> Examples with two Qwen3.5-Omni processors: a plain one and one writing audio timestamps."""

    def __init__(self, tokenizer: Tokenizer, audio_config: AudioConfig, vision_config: VisionConfig,
                 stamp_chunks: int = 2):
        self.tokenizer = tokenizer
        common = dict(vision_config=vision_config, image_pixels=IMAGE_PIXELS, video_pixels=VIDEO_PIXELS,
                      layout=QWEN35_OMNI)
        self.stamp_seconds = stamp_chunks * audio_config.chunk_frames / 100
        self.processor = Processor(tokenizer, audio_config, **common)
        self.stamped = Processor(tokenizer, audio_config, timestamp_every=self.stamp_seconds, **common)
        get = tokenizer.token_to_id
        self.im_start, self.im_end, self.assistant = get(IM_START), get(IM_END), get("assistant")
        self.audio_token, self.blank = self.processor.audio_pad_id, special_ids(tokenizer)["pad_token_id"]
        pads = self.processor.pad_ids
        self.vision_tokens = torch.tensor([-1 if pads[k] is None else pads[k] for k in ("image", "video")])
        try:
            self.speller = CellSpeller(tokenizer.encode, self.blank)
        except ValueError:  # a tokenizer that splits the scene words: no grounding
            self.speller = None
        self.opener = tokenizer.encode(f"{IM_START}assistant\n")
        if None in (self.im_start, self.im_end, self.assistant) or len(self.opener) != 3:
            raise ValueError("the tokenizer needs <|im_start|>, <|im_end|> and 'assistant' as single tokens "
                             "(train it with omnistream.train.tokenizer.train_tokenizer)")

    # ---------------------------------------------------------------- kinds
    def text(self, reply: str, task: str = "text") -> Example:
        """`<|im_start|>assistant\\n{reply}<|im_end|>`, the loss on reply + <|im_end|>."""
        target = self.tokenizer.encode(reply) + [self.im_end]
        ids = torch.tensor(self.opener + target)
        labels = ids.clone()
        labels[: len(self.opener)] = IGNORE
        return Example(ids, labels, torch.arange(len(ids)).expand(3, -1).clone(), task=task)

    def mirror(self, item: Mapping) -> Example:
        """The item's text mirror as a one-turn chat: what its audio says, as text, then the reply."""
        return self.chat([(text_mirror(item), trained_reply(item))], task=item["task"])

    def spelled(self, item: Mapping, seed: int = 0) -> Example:
        """The item's chat with its audio placeholders holding a CTC-like alignment of what the audio says (no
        audio); its text mirror when the clip has fewer tokens than its words. A drawn image or video: its vision
        placeholders spelled (vision_grounding; the reply alone when the tokenizer cannot spell them)."""
        example = self.item(item)
        if item["task"] in MEDIA_TASKS:
            if example.cells is None:
                return self.text(trained_reply(item), item["task"])
            example.input_ids[torch.isin(example.input_ids, self.vision_tokens)] = self.blank
            example.pixel_values = example.image_grid_thw = example.pixel_values_videos = example.video_grid_thw = None
            return example
        slots = (example.input_ids == self.audio_token).nonzero().flatten()
        rng = random.Random(f"omnistream.thinker_data/spelled/{seed}/{item['id']}")
        path = spelled_alignment(self.tokenizer.encode(spoken_text(item)), len(slots), self.blank, rng)
        if path is None:
            return self.mirror(item)
        example.input_ids[slots] = torch.tensor(path)
        example.audio_features, example.audio_lengths, example.spoken = None, [], None
        return example

    def item(self, item: Mapping) -> Example:
        """One item as a one-turn chat, with the token ids of what its audio says when the item knows it."""
        example = self.chat([(item["messages"][0], trained_reply(item))], task=item["task"])
        said = spoken_text(item)
        if said is not None and len(example.audio_lengths) == 1:
            example.spoken = self.tokenizer.encode(said)
        grid = example.image_grid_thw if example.image_grid_thw is not None else example.video_grid_thw
        cells = None if self.speller is None or grid is None else self.speller.media_cells(item, grid)
        slots = torch.isin(example.input_ids, self.vision_tokens)
        if cells is not None and len(cells) == int(slots.sum()):
            example.cells = torch.full((len(example), IDS_PER_TOKEN), -1, dtype=torch.long)
            example.cells[slots] = cells
        return example

    def dialogue(self, items: Sequence[Mapping]) -> Example:
        """Several items as one multi-turn chat, every reply trained on."""
        return self.chat([(it["messages"][0], trained_reply(it)) for it in items], task="dialogue")

    def recording(self, items: Sequence[Mapping]) -> Example:
        """The spoken questions of `items` (one language) as one recording; the reply answers each after its time."""
        waves = [load_audio(audio_source(it)) for it in items]
        starts, total = self.recording_layout([len(w) for w in waves])
        audio = np.zeros(total, dtype=np.float32)
        for w, s in zip(waves, starts):
            audio[s : s + len(w)] = w
        buf = io.BytesIO()
        soundfile.write(buf, audio, SAMPLE_RATE, format="WAV", subtype="FLOAT")
        lang = items[0]["language"]
        user = {"role": "user", "content": [{"type": "audio", "audio": buf.getvalue()},
                                            {"type": "text", "text": RECORDING_PROMPTS[lang]}]}
        return self.chat([(user, self.recording_reply(items, starts))], self.stamped, task="recording")

    def recording_layout(self, lengths: Sequence[int]) -> tuple[list[int], int]:
        """Start samples of questions of `lengths` samples (each on a timestamp boundary) and the total length."""
        period = round(self.stamp_seconds * SAMPLE_RATE)
        gap = round(GAP_SECONDS * SAMPLE_RATE)
        starts, at = [], 0
        for n in lengths:
            starts.append(at)
            at += math.ceil((n + gap) / period) * period
        return starts, starts[-1] + lengths[-1] + gap

    @staticmethod
    def recording_reply(items: Sequence[Mapping], starts: Sequence[int]) -> str:
        """One line per question: its start time, then the item's answer."""
        sep = "" if items[0]["language"] == "zh" else " "
        return "\n".join(f"{timestamp_text(s / SAMPLE_RATE)}{sep}{it['reply']}" for it, s in zip(items, starts))

    # ---------------------------------------------------------------- the shared path
    def chat(self, turns: Sequence[tuple[Mapping, str]], processor: Processor | None = None,
             task: str = "") -> Example:
        """(user message, reply) turns -> Example; the loss covers each reply and its <|im_end|>."""
        messages = []
        for user, reply in turns:
            messages += [user, {"role": "assistant", "content": reply}]
        p = (processor or self.processor)(messages, add_generation_prompt=False)
        ids = p.input_ids[0, :-1]  # the template's "\n" after the last <|im_end|> is not a target
        if int(ids[-1]) != self.im_end:
            raise ValueError("the chat does not end with <|im_end|> after dropping its final newline")
        labels = torch.full_like(ids, IGNORE)
        is_open = (ids[:-1] == self.im_start) & (ids[1:] == self.assistant)
        ends = (ids == self.im_end).nonzero().flatten().tolist()
        for at in is_open.nonzero().flatten().tolist():
            start = at + len(self.opener)
            end = next(e for e in ends if e >= start)
            labels[start : end + 1] = ids[start : end + 1]
        if p.position_ids is None:
            pos = torch.arange(len(ids)).expand(3, -1).clone()
        else:
            pos = p.position_ids[:, 0, :-1].long()
        return Example(ids, labels, pos, p.audio_features, list(p.audio_lengths), p.pixel_values, p.image_grid_thw,
                       p.pixel_values_videos, p.video_grid_thw, task=task)


class ThinkerDataset:
    """The examples of one kind ("text", "chat" or "long") over a list of items, built on first use and cached.

    `target_count(i)` is the number of target tokens of example i, computed from text (and, for recordings, audio
    lengths) without building the example, so every rank can normalise its loss by the global batch's count."""

    KINDS = ("text", "chat", "long")

    def __init__(self, items: Sequence[Mapping], builder: ExampleBuilder, kind: str, tasks: Sequence[str] = MULTITASK,
                 seed: int = 0, generated: int = 0, spelled_media: bool = False, fresh: int = 0):
        if kind not in self.KINDS:
            raise ValueError(f"unknown example kind {kind!r}; expected one of {', '.join(self.KINDS)}")
        if generated and kind == "long":
            raise ValueError("generated text items belong to the \"text\" and \"chat\" kinds, not \"long\"")
        self.builder, self.kind, self.seed = builder, kind, seed
        chosen = list(items) if kind == "text" else [it for it in items if it["task"] in tasks]
        self.items = chosen + generated_items(generated, seed)
        if not self.items:
            raise ValueError(f"no items of the tasks {', '.join(tasks)}")
        # "chat" with spelled_media: each drawn image or video item once more, spelled (after the items); "long":
        # each item once more as its own one-turn chat, so that long context does not unlearn the one-turn replies
        self.copies = [i for i, it in enumerate(self.items) if it["task"] in MEDIA_TASKS] if spelled_media else []
        if kind == "long":
            self.copies = list(range(len(self.items)))
        if (spelled_media or fresh) and kind != "chat":
            raise ValueError("spelled media copies and fresh items belong to the \"chat\" kind")
        # `fresh` items an epoch from the drill's endless generator, indices len(self) + epoch * fresh + j
        self.fresh, self.drill = fresh, DrillDataset(builder, seed)
        self._cache: dict[int, Example] = {}
        self._targets: dict[int, int] = {}
        self._spoken: dict[int, int] = {}  # example index -> tokens of its CTC target
        self._samples: dict[int, int] = {}  # item index -> 16 kHz samples of its audio
        self._questions: dict[str, list[int]] = {}
        for i, it in enumerate(self.items):
            if it["task"] in QUESTION_TASKS:
                self._questions.setdefault(it["language"], []).append(i)

    def __len__(self) -> int:
        return len(self.items) + len(self.copies)

    def fresh_indices(self, epoch: int) -> list[int]:
        """The indices of epoch `epoch`'s fresh generated items (none unless `fresh`)."""
        start = len(self) + epoch * self.fresh
        return list(range(start, start + self.fresh))

    def _drawn(self, index: int) -> dict | None:
        """The drill item behind a fresh index, else None."""
        return self.drill.item(index - len(self)) if index >= len(self) else None

    def plan(self, index: int) -> tuple[str, list[int]]:
        """What example `index` is made of: "text" / "spelled" / "chat" / "recording" / "dialogue" and its item
        indices."""
        if index >= len(self.items):
            return "chat" if self.kind == "long" else "spelled", [self.copies[index - len(self.items)]]
        if self.kind == "text":
            return _text_form(self.items[index]), [index]
        if self.kind == "chat":
            return "chat", [index]
        rng = random.Random(f"omnistream.thinker_data/{self.seed}/{index}")
        langs = sorted(lang for lang, idx in self._questions.items() if len(idx) >= 2)
        if index % 2 == 0 and langs:
            pool = self._questions[rng.choice(langs)]
            return "recording", rng.sample(pool, rng.randint(2, min(4, len(pool))))
        return "dialogue", rng.sample(range(len(self.items)), min(rng.randint(2, 4), len(self.items)))

    def length_class(self, index: int) -> str:
        """A key that examples of similar length and the same media share (the task, "text/" + the task for a
        text-only item, or the long example's kind), for batching."""
        if (drawn := self._drawn(index)) is not None:
            return ("spelled/" if drawn["task"] in MEDIA_TASKS else "text/") + drawn["task"]
        kind, idx = self.plan(index)
        if kind not in ("text", "spelled", "chat"):
            return kind
        item = self.items[idx[0]]
        if self.kind == "chat" and kind == "spelled":
            return f"spelled/{item['task']}"
        return f"text/{item['task']}" if _text_form(item) == "chat" else item["task"]

    def example(self, index: int) -> Example:
        """Example `index` (cached after the first call)."""
        if index >= len(self):
            return self.drill.example(index - len(self))
        if index not in self._cache:
            kind, idx = self.plan(index)
            items = [self.items[i] for i in idx]
            b = self.builder
            self._cache[index] = (b.text(trained_reply(items[0]), items[0]["task"]) if kind == "text" else
                                  b.item(items[0]) if kind == "chat" else
                                  b.spelled(items[0], self.seed) if kind == "spelled" else
                                  b.recording(items) if kind == "recording" else b.dialogue(items))
            self._targets[index] = self._cache[index].targets
        return self._cache[index]

    def spoken_count(self, index: int) -> int:
        """Tokens of the CTC target of example `index` (0 when it has none), without building the example."""
        if index >= len(self):
            return 0
        if index not in self._spoken:
            kind, idx = self.plan(index)
            item = self.items[idx[0]]
            said = spoken_text(item) if kind == "chat" and _text_form(item) != "chat" else None
            self._spoken[index] = 0 if said is None else len(self.builder.tokenizer.encode(said))
        return self._spoken[index]

    def grounded_count(self, index: int) -> int:
        """Vision tokens of example `index` that vision_grounding regresses (real pixels with known cells)."""
        e = self.example(index)
        return 0 if e.cells is None else int(torch.isin(e.input_ids, self.builder.vision_tokens).sum())

    def target_count(self, index: int) -> int:
        """Target tokens of example `index`."""
        if index >= len(self):
            return self.drill.target_count(index - len(self))
        if index not in self._targets:
            kind, idx = self.plan(index)
            items = [self.items[i] for i in idx]
            count = self.builder.tokenizer.encode
            if kind == "recording":
                for i in idx:
                    if i not in self._samples:
                        self._samples[i] = len(load_audio(audio_source(self.items[i])))
                starts, _ = self.builder.recording_layout([self._samples[i] for i in idx])
                self._targets[index] = len(count(self.builder.recording_reply(items, starts))) + 1
            else:
                self._targets[index] = sum(len(count(trained_reply(it))) + 1 for it in items)
        return self._targets[index]


def collate(examples: Sequence[Example], pad_id: int) -> dict:
    """Left-padded batch: input_ids / labels / attention_mask (B, S), position_ids (3, B, S), the media of all rows
    in row order (audio features padded to the longest audio; "spoken": each audio's CTC target ids or None) and
    "targets" (target tokens in the batch)."""
    b, s = len(examples), max(len(e) for e in examples)
    ids = torch.full((b, s), pad_id, dtype=torch.long)
    labels = torch.full((b, s), IGNORE, dtype=torch.long)
    mask = torch.zeros((b, s), dtype=torch.long)
    pos = torch.zeros((3, b, s), dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e)
        ids[r, s - n :], labels[r, s - n :], mask[r, s - n :] = e.input_ids, e.labels, 1
        pos[:, r, s - n :] = e.position_ids
    out = {"input_ids": ids, "labels": labels, "attention_mask": mask, "position_ids": pos,
           "targets": int((labels != IGNORE).sum()), "tasks": [e.task for e in examples]}
    feats = [e.audio_features for e in examples if e.audio_features is not None]
    if feats:
        t = max(f.shape[-1] for f in feats)
        out["audio_features"] = torch.cat([torch.nn.functional.pad(f, (0, t - f.shape[-1])) for f in feats])
        out["audio_lengths"] = [n for e in examples for n in e.audio_lengths]
        out["spoken"] = [e.spoken for e in examples for _ in e.audio_lengths]
    if any(e.cells is not None for e in examples):
        out["cells"] = torch.full((b, s, IDS_PER_TOKEN), -1, dtype=torch.long)
        for r, e in enumerate(examples):
            if e.cells is not None:
                out["cells"][r, s - len(e) :] = e.cells
    for key, grid in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
        have = [e for e in examples if getattr(e, key) is not None]
        if have:
            out[key] = torch.cat([getattr(e, key) for e in have])
            out[grid] = torch.cat([getattr(e, grid) for e in have])
    return out
