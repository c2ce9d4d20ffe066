"""Thinker training: the dataset's tokenizer, items -> examples -> batches, and the four stages on a tiny model."""

import json
import random
import shutil

import pytest
import torch

from omnistream.config import AudioConfig, VisionConfig
from omnistream.processor import IM_END, Processor, Tokenizer, reasoning_token_ids, split_reasoning
from omnistream.train import TrainConfig, TrainError, train
from omnistream.audio.features import mel_bin_centres, mel_bin_index
from omnistream.train.aut_stage import (
    TILT,
    AutStage,
    colour_spectrum,
    ctc_greedy,
    ctc_loss,
    heard_clips,
    warp_vocal_tract,
)
from omnistream.data import text as templates
from omnistream.eval.metrics import numbers_in
from omnistream.train.thinker_data import (
    DRILL_MIX,
    IGNORE,
    DrillDataset,
    ExampleBuilder,
    ThinkerDataset,
    collate,
    corpus_texts,
    generated_item,
    generated_items,
    spelled_alignment,
    spoken_text,
    trained_reply,
)
from omnistream.train.thinker_stages import (
    MEDIA_KEYS,
    ThinkerStage,
    build_thinker,
    demo_thinker_configs,
    parameter_counts,
)
from omnistream.train.tokenizer import SPECIAL, TokenizerTrainingError, special_ids, train_tokenizer
from omnistream.train.vision_grounding import MEDIA_TASKS, grounding_loss

TEXTS = [
    "The cat has forty-six books.", "Seventeen plus twenty-five is forty-two.",
    "The number after ninety-seven is ninety-eight.", "<1.5 seconds> A red triangle appears.",
    "五乘以五等于二十五。", "农民有八十六支铅笔。", "图片里有三个图形。",
    "Setenta más veintiocho es igual a noventa y ocho.", "Mi hermano tiene noventa y siete platos.",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a busy 2-core machine a second thread mostly waits for the first."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- tokenizer -----------------------------------------------------------------------------------------------

def test_tokenizer_round_trips_three_languages_with_single_role_and_special_ids(tmp_path):
    ids = train_tokenizer(TEXTS, tmp_path / "a", vocab_size=600)
    tok = Tokenizer(tmp_path / "a")
    assert ids["vocab_size"] == tok.vocab_size <= 600
    for text in TEXTS + ["Unseen words, 未见过的字龘, ¿qué tal? 12345", "<|im_start|>user\nhola<|im_end|>\n"]:
        assert tok.decode(tok.encode(text), skip_special_tokens=False) == text
    for text in ("五乘以五等于二十五", "农民有八十六支铅笔"):  # seen characters: one id each, never bytes
        assert len(tok.encode(text)) == len(text)
    assert len(tok.encode("Seventeen plus twenty-five is forty-two.")) <= 10
    for role in ("system", "user", "assistant"):
        assert tok.encode(f"<|im_start|>{role}\n") == [ids["im_start_token_id"], ids[f"{role}_token_id"],
                                                      tok.encode("\n")[0]]
    named = [v for k, v in ids.items() if k.endswith("_token_id") and k not in ("pad_token_id", "eos_token_id")]
    assert len(named) == len(set(named)) == 18
    assert ids["pad_token_id"] == ids["endoftext_token_id"] and tok.eos_ids[0] == ids["im_end_token_id"]
    assert tok.decode([ids["tts_pad_token_id"], ids["user_token_id"]]) == "user"  # specials dropped, roles kept
    assert all(tok.token_to_id(t) is not None for t in SPECIAL)
    proc = Processor(tok, AudioConfig(), vision_config=VisionConfig(), layout="qwen3.5-omni")
    assert min(vars(proc.token_ids).values()) >= 0
    train_tokenizer(TEXTS, tmp_path / "b", vocab_size=600)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    with pytest.raises(TokenizerTrainingError, match="below the byte alphabet"):
        train_tokenizer(TEXTS, tmp_path / "c", vocab_size=100)


# --- data ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """16 synthetic items (two of each task) and a tokenizer trained on their texts."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    from omnistream.data import read_items, synthesize

    root = tmp_path_factory.mktemp("thinker")
    path = synthesize(root / "data", seed=0, num=16)
    items = read_items(path)
    train_tokenizer(corpus_texts(items), root / "tok", vocab_size=2048)
    return root, items, Tokenizer(root / "tok")


@pytest.fixture(scope="module")
def tiny(dataset):
    root, items, tok = dataset
    ids = special_ids(tok)
    _, audio, vision = demo_thinker_configs(ids["vocab_size"], "tiny")
    torch.manual_seed(0)
    return ExampleBuilder(tok, audio, vision), build_thinker("tiny", ids), ids


def _media(e):
    kw = {}
    if e.audio_features is not None:
        kw.update(audio_features=e.audio_features, audio_lengths=e.audio_lengths)
    if e.pixel_values is not None:
        kw.update(pixel_values=e.pixel_values, image_grid_thw=e.image_grid_thw)
    if e.pixel_values_videos is not None:
        kw.update(pixel_values_videos=e.pixel_values_videos, video_grid_thw=e.video_grid_thw)
    return kw


def test_every_task_becomes_an_example_the_thinker_runs_alone_and_left_padded(dataset, tiny):
    _, items, tok = dataset
    builder, model, ids = tiny
    examples = [builder.item(it) for it in items[:8]]  # one item of each task
    assert sorted(e.task for e in examples) == sorted({it["task"] for it in items})
    for it, e in zip(items, examples):
        target = e.labels[e.labels != IGNORE].tolist()
        assert tok.decode(target, skip_special_tokens=False) == trained_reply(it) + IM_END
        first = int((e.labels != IGNORE).nonzero()[0])
        assert (e.labels[first:] != IGNORE).all()  # the targets are the sequence's tail
        assert tok.decode(e.input_ids[first - 3 : first].tolist(), False) == "<|im_start|>assistant\n"
        assert e.position_ids.shape == (3, len(e)) and (e.position_ids[0, 1:] >= e.position_ids[0, :-1]).all()
        assert (e.position_ids[:, first:].diff() == 1).all()  # the reply counts on one by one
        kinds = {p["type"] for p in it["messages"][0]["content"]}
        assert ("audio" in kinds) == (e.audio_features is not None)
        assert ("image" in kinds) == (e.pixel_values is not None)
        assert ("video" in kinds) == (e.pixel_values_videos is not None)
    batch = collate(examples, ids["pad_token_id"])
    assert batch["targets"] == sum(e.targets for e in examples)
    with torch.no_grad():
        logits, _ = model(batch["input_ids"], **{k: batch[k] for k in MEDIA_KEYS if k in batch},
                          position_ids=batch["position_ids"], attention_mask=batch["attention_mask"])
        assert torch.isfinite(logits).all()
        for row, e in enumerate(examples):
            alone, _ = model(e.input_ids[None], **_media(e), position_ids=e.position_ids[:, None])
            assert torch.allclose(alone[0], logits[row, -len(e):], atol=1e-4)


def test_spoken_audio_carries_its_ctc_target_and_the_ctc_classifier_is_the_embedding_table(dataset, tiny):
    root, items, tok = dataset
    builder, model, ids = tiny
    examples = [builder.item(it) for it in items[:8]]
    for it, e in zip(items, examples):
        said = {"transcribe": it["reply"], "arithmetic": it["meta"].get("question"),
                "counting": it["meta"].get("question")}.get(it["task"])
        assert (e.spoken is None) == (said is None), it["task"]
        if said is not None:
            assert tok.decode(e.spoken) == said
    batch = collate(examples, ids["pad_token_id"])
    assert len(batch["spoken"]) == len(batch["audio_lengths"]) and sum(s is not None for s in batch["spoken"]) == 3
    norm, blank = sum(len(s) for s in batch["spoken"] if s), ids["pad_token_id"]

    def ctc(tokens, spoken=batch["spoken"]):
        return float(ctc_loss(model, tokens, batch["audio_lengths"], spoken, norm, blank))

    table = model.lm.model.embed_tokens.weight.detach()
    counts = model.audio_tower.token_counts(torch.tensor(batch["audio_lengths"])).tolist()
    oracle = []  # each audio's tokens: the embeddings of a CTC path of its spoken ids
    for n, said in zip(counts, batch["spoken"]):
        path = []
        for t in said or []:
            path += [blank, t] if path and path[-1] == t else [t]
        assert len(path) <= n  # the path fits the audio's tokens
        oracle.append(table[torch.tensor(path + [blank] * (n - len(path)))])
    with torch.no_grad():
        perfect, noise = ctc(torch.cat(oracle)), ctc(torch.randn(sum(counts), table.shape[1]))
        assert 0 <= perfect < 0.1 * noise and noise > 1.0
        assert ctc(torch.cat(oracle), [None] * len(counts)) == 0.0
        for tokens, said in zip(torch.cat(oracle).split(counts), batch["spoken"]):  # the greedy reading inverts it
            assert ctc_greedy(model, tokens, blank) == (said or [])


def _ctc_collapse(path, blank):
    return [t for j, t in enumerate(path) if t != blank and (j == 0 or t != path[j - 1])]


def test_spelled_alignment_is_a_ctc_path_of_the_ids_that_fills_the_slots():
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randint(1, 3) for _ in range(rng.randint(1, 12))]
        slots = rng.randint(2 * len(ids), 6 * len(ids))
        path = spelled_alignment(ids, slots, 0, rng)
        assert len(path) == slots and _ctc_collapse(path, 0) == ids
    assert spelled_alignment([1, 2, 3], 2, 0, rng) is None


def _shown(e):
    """(N, 2) bool from the pixels: does merged vision token n show a shape in frame f of its temporal patch."""
    pixels = e.pixel_values if e.pixel_values is not None else e.pixel_values_videos
    patches = pixels.view(-1, 4, 3, 2, 16, 16)  # (N, 2x2 merged patches, C, frames, P, P); white is 1.0
    return patches.amin(dim=(1, 2, 4, 5)) < 0.5


def test_vision_cells_spell_what_each_merged_token_shows(dataset, tiny):
    _, items, tok = dataset
    builder, _, ids = tiny
    assert builder.speller is not None
    media = [it for it in items if it["task"] in MEDIA_TASKS]
    assert {it["task"] for it in media} == set(MEDIA_TASKS)
    for it in media:
        e = builder.item(it)
        slots = torch.isin(e.input_ids, builder.vision_tokens)
        cells = e.cells[slots]  # (N, 4): [colour, kind] of each frame
        assert (e.cells[~slots] == -1).all() and len(cells) == len(_shown(e))
        shown = cells[:, [0, 2]] != ids["pad_token_id"]
        assert torch.equal(shown, _shown(e)), it["id"]  # the decoded frames agree with the timeline
        for n, row in enumerate(cells.tolist()):
            cell = next((s for s in it["meta"]["shapes"] if s["row"] * 3 + s["col"] == n % 9), None)
            for f in (0, 2):
                if row[f] != ids["pad_token_id"]:
                    assert tok.decode(row[f : f + 2]) == f" {cell['colour']} {cell['kind']}"
    assert builder.item(next(it for it in items if it["task"] == "transcribe")).cells is None


def test_spelled_media_put_mean_cell_embeddings_where_the_encoder_tokens_go(dataset, tiny):
    _, items, _ = dataset
    builder, model, ids = tiny
    chat = ThinkerDataset(items, builder, "chat", generated=2, spelled_media=True)
    media = [i for i, it in enumerate(chat.items) if it["task"] in MEDIA_TASKS]
    assert chat.copies == media and len(chat) == len(chat.items) + len(media)
    for k, i in enumerate(media):
        real, copy = chat.example(i), chat.example(len(chat.items) + k)
        assert chat.length_class(len(chat.items) + k) == "spelled/" + chat.items[i]["task"]
        assert copy.pixel_values is None and copy.pixel_values_videos is None and chat.grounded_count(i + 0) > 0
        assert chat.grounded_count(len(chat.items) + k) == 0
        slots = copy.cells[:, 0] >= 0
        assert chat.grounded_count(i) == int(slots.sum()) == 9 * int(
            (real.image_grid_thw if real.image_grid_thw is not None else real.video_grid_thw)[0, 0])
        table = model.lm.model.embed_tokens.weight
        with torch.no_grad():
            x, _ = model.embed(copy.input_ids[None], spelled=copy.cells[None])
            assert torch.allclose(x[0, slots], table[copy.cells[slots]].mean(1))
            assert torch.equal(x[0, ~slots], table[copy.input_ids[~slots]])
            media_kw = _media(real)
            with_cells, deep = model.embed(real.input_ids[None], **media_kw, spelled=real.cells[None])
            without, _ = model.embed(real.input_ids[None], **media_kw)
            assert torch.equal(with_cells, without)  # encoder tokens overwrite the spellings of real pixels
            tokens = with_cells[0, slots]
            exact = grounding_loss(table[copy.cells[slots]].mean(1), [0 * d[0, slots] for d in deep],
                                   copy.cells[slots], table, 1.0)
            assert float(exact) == 0.0 and float(grounding_loss(tokens, [d[0, slots] for d in deep],
                                                                copy.cells[slots], table, 1.0)) > 0
    with pytest.raises(ValueError, match="chat"):
        ThinkerDataset(items, builder, "text", spelled_media=True)


def _key(item):
    """The held-out key of a generated question."""
    m = item["meta"]
    if item["task"] == "arithmetic":
        return f"arith:{m['a']}{m['op']}{m['b']}"
    if m["kind"] != "repeat":
        return f"{m['kind']}:{m['n']}"
    return f"repeat:{next(j for j, row in enumerate(templates._REPEAT_WORDS) if m['word'] in row)}:{m['n']}"


def test_text_kind_spells_spoken_items_and_adds_generated_items_from_training_keys(dataset, tiny):
    _, items, tok = dataset
    builder, _, _ = tiny
    data = ThinkerDataset(items, builder, "text", generated=9, seed=3)
    assert len(data) == len(items) + 9
    forms = {"transcribe": "spelled", "arithmetic": "spelled", "counting": "spelled", "read_aloud": "chat",
             **{task: "spelled" for task in MEDIA_TASKS}}
    audio_pad, blank = tok.token_to_id("<|audio_pad|>"), special_ids(tok)["pad_token_id"]
    for i in range(len(data)):
        it, (form, _) = data.items[i], data.plan(i)
        e = data.example(i)
        assert data.target_count(i) == e.targets
        assert tok.decode(e.labels[e.labels != IGNORE].tolist(), skip_special_tokens=False) == trained_reply(it) + IM_END
        assert e.audio_features is None and e.pixel_values is None and e.pixel_values_videos is None
        prompt = tok.decode(e.input_ids[e.labels == IGNORE].tolist())
        if i >= len(items) and it["task"] == "transcribe":  # a generated transcript: the sentence, copied
            assert form == "chat" and it["reply"] in prompt and templates.transcribe_prompt(it["language"]) in prompt
            assert not templates.held_out(it["meta"]["sentence"])
        elif i >= len(items):  # a generated question: the question as the user turn
            assert form == "chat" and it["task"] in ("arithmetic", "counting")
            said = numbers_in(it["reply"], it["language"])
            assert it["meta"]["question"] in prompt and said and said[-1] == it["meta"]["result"]
        else:
            assert form == forms.get(it["task"], "text"), it["task"]
            if form == "spelled" and it["task"] in MEDIA_TASKS:  # vision slots: blanks, spelled by their cells
                full = builder.item(it)
                slots = torch.isin(full.input_ids, builder.vision_tokens)
                assert (e.input_ids[slots] == blank).all() and torch.equal(e.input_ids[~slots], full.input_ids[~slots])
                assert torch.equal(e.cells, full.cells) and (e.cells[slots] >= 0).all()
            elif form == "spelled":  # the audio's slots hold what it says, CTC-aligned; the rest of the turn kept
                full = builder.item(it)
                slots = full.input_ids == audio_pad
                assert torch.equal(e.input_ids[~slots], full.input_ids[~slots]) and not (e.input_ids == audio_pad).any()
                assert torch.equal(e.position_ids, full.position_ids)
                assert _ctc_collapse(e.input_ids[slots].tolist(), blank) == tok.encode(spoken_text(it))
            elif form == "text":
                assert prompt.strip() == "assistant"
    made = data.items[len(items):]
    assert [(q["task"], q["language"]) for q in made] == [
        (t, lang) for t in ("transcribe", "arithmetic", "counting") for lang in templates.LANGUAGES]
    for q in [q for q in made if q["task"] != "transcribe"]:  # never a held-out question
        assert not templates.held_out(_key(q)), _key(q)
    assert generated_items(9, 3) == made and generated_items(9, 4) != made
    assert all(spoken_text(it) in corpus_texts(items) for it in items if spoken_text(it))
    chat = ThinkerDataset(items, builder, "chat", generated=6, seed=3)  # S2: spoken items and text items side by side
    for i in range(len(chat)):
        e, text_only = chat.example(i), i >= len(chat) - 6
        assert chat.spoken_count(i) == len(e.spoken or []) and (e.audio_features is None) >= text_only
        assert chat.length_class(i).startswith("text/") == text_only  # never batched with media items
    with pytest.raises(ValueError, match="long"):
        ThinkerDataset(items, builder, "long", generated=2)


def test_long_examples_are_recordings_with_timestamps_and_multi_turn_dialogues(dataset, tiny):
    _, items, tok = dataset
    builder, _, _ = tiny
    data = ThinkerDataset(items, builder, "long", seed=0)
    seen = set()
    for i in range(6):
        kind, idx = data.plan(i)
        assert data.plan(i) == (kind, idx) and 2 <= len(idx) <= 4
        count = data.target_count(i)
        e = data.example(i)
        assert e.targets == count  # the cheap count (used to normalise the loss) is exact
        text = tok.decode(e.input_ids.tolist(), skip_special_tokens=False)
        target = tok.decode(e.labels[e.labels != IGNORE].tolist(), skip_special_tokens=False)
        parts = [data.items[j] for j in idx]
        if kind == "recording":
            assert len({p["language"] for p in parts}) == 1 and e.audio_lengths and len(e.audio_lengths) == 1
            lines = target.removesuffix(IM_END).split("\n")
            assert len(lines) == len(parts)
            for line, p in zip(lines[1:], parts[1:]):
                stamp = line[: line.index(">") + 1]
                assert stamp in text.split("<|im_start|>assistant")[0]  # the audio carries that timestamp
            assert all(line.endswith(p["reply"]) for line, p in zip(lines, parts))
        else:
            assert target == "".join(trained_reply(p) + IM_END for p in parts)
            assert text.count("<|im_start|>user") == len(parts)
        seen.add(kind)
    assert seen == {"recording", "dialogue"}
    n = len(data.items)  # then every item once more as its own one-turn chat, as S2 has it
    assert len(data) == 2 * n and [data.plan(n + j) for j in range(n)] == [("chat", [j]) for j in range(n)]
    chat = ThinkerDataset(items, builder, "chat", seed=0)
    for j in (0, n // 2, n - 1):
        assert torch.equal(data.example(n + j).labels, chat.example(j).labels)
        assert data.length_class(n + j) == chat.length_class(j) and data.target_count(n + j) == chat.target_count(j)


def test_batches_are_deterministic_and_ranks_add_up_to_the_global_batch(dataset):
    root, _, _ = dataset
    stage = ThinkerStage("s2", root / "data", root / "tok", size="tiny", batch_size=4, seed=3, generated=0)
    again = ThinkerStage("s2", root / "data", root / "tok", size="tiny", batch_size=4, seed=3, generated=0)
    assert [stage.indices(s) for s in range(5)] == [again.indices(s) for s in range(5)]
    assert len(stage.data) == 12 + 6  # the chat items and a spelled copy of each image and video item
    walk = [i for s in range(len(stage._epoch(0))) for i in stage.indices(s)]  # one epoch: 4 batches of 4
    assert len(set(walk)) == len(walk) == 16
    model = stage.module()
    whole = stage.batch(1, 0, 1)
    halves = [stage.batch(1, r, 2) for r in range(2)]
    unpadded = [row[m == 1].tolist() for b in [whole] for row, m in zip(b["input_ids"], b["attention_mask"])]
    split = [row[m == 1].tolist() for b in halves for row, m in zip(b["input_ids"], b["attention_mask"])]
    assert unpadded == split
    with torch.no_grad():
        grounded = 0
        for step in range(4):  # batches with and without audio and vision (the additive terms)
            whole = stage.loss(model, stage.batch(step, 0, 1))
            ranks = [stage.loss(model, stage.batch(step, r, 2)) for r in range(2)]
            for term in ("ce", "ctc", "ground"):  # what dist.mean logs, and the averaged gradient
                assert torch.allclose(whole[term], sum(r[term] for r in ranks) / 2, atol=1e-5), (step, term)
            grounded += bool(whole["ground"] > 0)
    assert grounded
    with pytest.raises(TrainError, match="not a multiple of the 3 ranks"):
        stage.batch(0, 0, 3)
    with pytest.raises(TrainError, match="unknown thinker stage"):
        ThinkerStage("s4", root / "data", root / "tok")


def test_s2_augments_its_audio_per_step_without_time_masks_and_keeps_cached_examples(dataset):
    root, _, _ = dataset
    plain = ThinkerStage("s2", root / "data", root / "tok", size="tiny", batch_size=4, seed=3, generated=0)
    aug = ThinkerStage("s2", root / "data", root / "tok", size="tiny", batch_size=4, seed=3, generated=0, augment=True)
    step = next(s for s in range(20) if "audio_features" in plain.batch(s, 0, 1))
    clean, a, b = plain.batch(step, 0, 1), aug.batch(step, 0, 1), aug.batch(step, 0, 1)
    assert torch.equal(a["audio_features"], b["audio_features"])  # seeded by (seed, step, example, audio)
    both = next(s for s in range(40) if all("audio_features" in aug.batch(s, r, 2) for r in range(2)))
    halves = [aug.batch(both, r, 2) for r in range(2)]  # two ranks draw what one process draws
    split = [(f, n) for h in halves for f, n in zip(h["audio_features"], h["audio_lengths"])]
    whole = aug.batch(both, 0, 1)
    assert [n for _, n in split] == whole["audio_lengths"]
    assert all(torch.allclose(f[:, :n], g[:, :n], atol=1e-6) for (f, n), g in zip(split, whole["audio_features"]))
    assert a["audio_features"].shape == clean["audio_features"].shape and a["audio_lengths"] == clean["audio_lengths"]
    assert torch.equal(a["input_ids"], clean["input_ids"]) and a["spoken"] == clean["spoken"]
    for f, g, n in zip(a["audio_features"], clean["audio_features"], a["audio_lengths"]):
        assert not torch.equal(f[:, :n], g[:, :n])
        assert f[:, :n].std(0).min() > 0  # no frame masked flat across the bins (a time mask would)
    assert torch.equal(plain.batch(step, 0, 1)["audio_features"], clean["audio_features"])  # the cache is untouched
    with pytest.raises(TrainError, match="thinker-text has no audio or vision: .* are for s1, s2, s3"):
        ThinkerStage("text", root / "data", root / "tok", size="tiny", augment=True)


def test_s1_to_s3_take_extra_items_beside_the_split(dataset, tmp_path):
    root, items, _ = dataset
    asked = [json.dumps(i, ensure_ascii=False) for i in items if i["task"] in ("arithmetic", "counting")]
    extra = root / "data" / "asked.jsonl"  # beside the split, so that its media paths resolve
    extra.write_text("\n".join(asked) + "\n")
    try:
        for kind in ("s1", "s2", "s3"):
            plain, more = (ThinkerStage(kind, root / "data", root / "tok", size="tiny", batch_size=4, generated=0,
                                        extra=e) for e in ((), (extra,)))
            assert len(more.data.items) - len(plain.data.items) == len(asked), kind
            assert more.data.items[len(plain.data.items):] == [i for i in items if i["task"] in
                                                               ("arithmetic", "counting")]
        for kind in ("text", "drill"):
            with pytest.raises(TrainError, match=f"thinker-{kind} has no audio or vision"):
                ThinkerStage(kind, root / "data", root / "tok", size="tiny", extra=(extra,))
        with pytest.raises(TrainError, match="no .*missing.jsonl: the extra items"):
            ThinkerStage("s2", root / "data", root / "tok", size="tiny", extra=(tmp_path / "missing.jsonl",))
    finally:
        extra.unlink()


def test_s2_practises_fresh_generated_items_every_epoch(dataset):
    root, _, tok = dataset
    make = lambda **kw: ThinkerStage("s2", root / "data", root / "tok", size="tiny", batch_size=4, seed=3,
                                     generated=6, **kw)
    stage, data = make(), make().data
    assert data.fresh == 6 and len(data) == 12 + 6  # the chat items and spelled copies; no fixed generated items
    first, second = data.fresh_indices(0), data.fresh_indices(1)
    assert first == list(range(18, 24)) and second == list(range(24, 30))
    for i in first + second:  # the drill's generator, never a repeat across epochs
        item, e = data.drill.item(i - len(data)), data.example(i)
        assert tok.decode(e.labels[e.labels != IGNORE].tolist(), skip_special_tokens=False) == trained_reply(item) + IM_END
        assert data.length_class(i) == ("spelled/" if item["task"] == "image_qa" else "text/") + item["task"]
        assert data.target_count(i) == e.targets and data.spoken_count(i) == data.grounded_count(i) == 0
    assert len({data.drill.item(i - len(data))["reply"] for i in first + second}) > 8
    steps = sum(stage._epoch_size(e) for e in range(3))
    walk = [stage.indices(s) for s in range(steps)]
    assert walk == [make().indices(s) for s in range(steps)]  # a function of (seed, step)
    seen = {i for b in walk for i in b}
    assert seen & set(first) and seen & set(second) and seen & set(data.fresh_indices(2))
    assert make(limit=6).data.fresh == 0  # a fixed subset stays fixed


# --- stages --------------------------------------------------------------------------------------------------

def test_the_drill_draws_endless_training_questions_in_its_mix(dataset, tiny):
    _, _, tok = dataset
    builder, _, _ = tiny
    drill = DrillDataset(builder, seed=1, cache=8)
    items = [drill.item(i) for i in range(600)]
    assert items[:20] == [DrillDataset(builder, seed=1).item(i) for i in range(20)]  # a function of (seed, index)
    assert items[:20] != [DrillDataset(builder, seed=2).item(i) for i in range(20)]
    for task, share in DRILL_MIX:
        assert abs(sum(it["task"] == task for it in items) / len(items) - share) < 0.07, task
    assert {it["language"] for it in items} == set(templates.LANGUAGES)
    for it in items:  # never a held-out sentence or question
        if it["task"] != "image_qa":  # scenes are drawn afresh, with no held-out keys
            assert not templates.held_out(it["meta"]["sentence"] if it["task"] == "transcribe" else _key(it))
    for i in range(12):  # more than the cache holds: examples are rebuilt the same
        e = drill.example(i)
        target = tok.decode(e.labels[e.labels != IGNORE].tolist(), skip_special_tokens=False)
        assert target == trained_reply(items[i]) + IM_END
        assert drill.target_count(i) == e.targets and e.audio_features is None and e.pixel_values is None
        assert (e.cells is not None) == (items[i]["task"] == "image_qa")  # a scene: its vision slots spelled
    assert len(drill._cache) <= 8


def test_arithmetic_and_counting_replies_think_first_the_question_heard_then_its_digits(dataset, tiny):
    _, _, tok = dataset
    builder, _, _ = tiny
    rng, ops = random.Random(0), set()
    for task in ("arithmetic",) * 4 + ("counting",) * 3:
        for lang in templates.LANGUAGES:
            item = generated_item(task, lang, rng, "x")
            e = builder.item(item)
            target = tok.decode(e.labels[e.labels != IGNORE].tolist(), skip_special_tokens=True)
            worked, answer = split_reasoning(target)
            assert answer == item["reply"]
            m = item["meta"]
            heard, _, step = worked.partition("\n")
            assert heard == m["question"]  # the question as heard first, then the digits
            if task == "arithmetic":  # a chain of equalities, each side worth the result, ending in it
                chain = step.split("=")
                assert chain[0] == f"{m['a']}{m['op']}{m['b']}" and chain[-1] == str(m["result"])
                assert all(eval(side) == m["result"] for side in chain)
                if m["op"] == "*":  # the larger factor added up while the smaller counts down to 1
                    big, small = max(m["a"], m["b"]), min(m["a"], m["b"])
                    assert chain[1:-1] == [f"{big}*{small}"] + [f"{big * k}+{big}*{small - k}" for k in
                                                                 range(1, small)]
                else:
                    assert len(chain) == 2
            elif m["kind"] in ("after", "before"):
                assert step == f"{m['n']}{'+' if m['kind'] == 'after' else '-'}1={m['result']}"
            else:
                assert step == "" and m["kind"] == "repeat"
            assert target.startswith("<think>\n")
            ops.add(m.get("op", m["kind"]))
    assert ops == {"+", "-", "*", "after", "before", "repeat"}
    opened, closed, spacing = reasoning_token_ids(tok)
    assert tok.decode([opened], skip_special_tokens=False) == "<think>"
    assert tok.decode([closed], skip_special_tokens=False) == "</think>"
    assert spacing and all(not tok.decode([t]).strip() for t in spacing)


def test_the_drill_stage_trains_the_lm_alone_on_consecutive_items(dataset, tmp_path):
    root, _, _ = dataset
    stage = ThinkerStage("drill", root / "data", root / "tok", size="tiny", batch_size=8, seed=0)
    assert stage.indices(0) == list(range(8)) and stage.indices(3) == list(range(24, 32))
    before = stage.module().state_dict()
    history = train(stage, tmp_path, TrainConfig(steps=12, lr=1e-2, warmup=2, log_every=1, save_every=12,
                                                 progress=False))
    after = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("lm."))
    assert sum(not torch.equal(before[k], after[k]) for k in before if k.startswith("lm.")) > 10
    ce = history.losses["ce"]
    assert sum(ce[-3:]) < 0.8 * sum(ce[:3]), ce


@pytest.fixture(scope="module")
def chain(dataset):
    """text -> s1 -> s2 -> s3, each 20 steps at a high lr on a fixed subset, each starting from the one before."""
    root, _, _ = dataset
    runs, init = {}, None
    for kind, subset, lr in (("text", 4, 3e-3), ("s1", 6, 1e-2), ("s2", 6, 3e-3), ("s3", 4, 3e-3)):
        stage = ThinkerStage(kind, root / "data", root / "tok", size="tiny", init=init, batch_size=subset,
                             limit=subset)
        out = root / kind
        history = train(stage, out, TrainConfig(steps=20, lr=lr, warmup=2, log_every=1, save_every=20,
                                                progress=False), resume=False)
        runs[kind] = (history, torch.load(out / "checkpoint.pt", weights_only=False)["model"])
        init = out / "checkpoint.pt"
    return runs


@pytest.mark.parametrize("kind,factor", [("text", 0.5), ("s1", 0.7), ("s2", 0.5), ("s3", 0.5)])
def test_each_stage_lowers_its_loss(chain, kind, factor):
    history, _ = chain[kind]
    ce, aux = history.losses["ce"], history.losses["aux"]
    assert len(ce) == 20 and all(torch.isfinite(torch.tensor(ce)))
    falls = history.losses["loss"] if kind == "s1" else ce  # s1: vision grounding's first steps dominate
    first, last = sum(falls[:3]) / 3, sum(falls[-3:]) / 3
    assert last < factor * first, (kind, falls)
    assert all(0.5 < a < 4 for a in aux)  # top-2 of 4 experts: 2.0 when balanced
    # spoken audio's CTC and vision grounding: in s1 and s2, falling in s1; in s3 only on its one-turn copies, which
    # this subset (its first 4 examples, long ones) does not reach
    for term in ("ctc", "ground"):
        values = history.losses[term]
        if kind in ("s1", "s2"):
            assert all(c > 0 for c in values) and (kind != "s1" or sum(values[-3:]) < 0.9 * sum(values[:3])), values
        else:
            assert all(c == 0 for c in values), (term, values)


def test_s1_trains_only_the_encoders_and_text_only_the_lm(dataset, chain):
    _, _, tok = dataset
    text, s1, s2 = (chain[k][1] for k in ("text", "s1", "s2"))
    lm = [k for k in text if k.startswith("lm.")]
    encoders = [k for k in text if k.startswith(("audio_tower.", "visual."))]
    assert lm and encoders and set(lm) | set(encoders) == set(text)
    assert all(torch.equal(text[k], s1[k]) for k in lm)  # s1: the language model bit for bit
    changed = [k for k in encoders if not torch.equal(text[k], s1[k])]
    assert any(k.startswith("audio_tower.") for k in changed) and any(k.startswith("visual.") for k in changed)
    assert "audio_tower.proj2.weight" in changed and "visual.merger.mlp.2.weight" in changed  # the projections
    torch.manual_seed(0)  # the text stage left the encoders at their (seeded) initialisation
    fresh = build_thinker("tiny", special_ids(tok)).state_dict()
    assert all(torch.equal(fresh[k], text[k]) for k in encoders)
    assert not all(torch.equal(fresh[k], text[k]) for k in lm)
    assert sum(not torch.equal(s1[k], s2[k]) for k in lm) > len(lm) // 2  # s2 trains the LM too


def test_aut_pretraining_trains_only_the_audio_encoder_and_its_ctc_falls(dataset, chain):
    root, items, _ = dataset
    clips = heard_clips(items)
    spoken = [it for it in items if it["task"] in ("transcribe", "arithmetic", "counting")]
    assert len(clips) == len(spoken) + sum("target_speech" in it for it in items) > len(spoken)
    stage = AutStage(root / "data", root / "tok", size="tiny", init=root / "text" / "checkpoint.pt", batch_size=4,
                     limit=4)
    plain = AutStage(root / "data", root / "tok", size="tiny", batch_size=4, limit=4, augment=False)
    same_timbre = AutStage(root / "data", root / "tok", size="tiny", batch_size=4, limit=4, timbre=False)
    a, b, c = stage.batch(3, 0, 1), stage.batch(3, 0, 1), plain.batch(3, 0, 1)
    assert a["audio_lengths"] == same_timbre.batch(3, 0, 1)["audio_lengths"]
    assert not torch.equal(a["audio_features"], same_timbre.batch(3, 0, 1)["audio_features"])  # warped, coloured
    assert torch.equal(a["audio_features"], b["audio_features"])  # augmentation is seeded by (seed, step, clip)
    assert a["spoken"] == c["spoken"] and a["audio_lengths"] != c["audio_lengths"]  # speed-perturbed
    assert not torch.equal(a["audio_features"], stage.batch(3 + len(stage.clips), 0, 1)["audio_features"])
    history = train(stage, root / "aut", TrainConfig(steps=20, lr=1e-2, warmup=2, log_every=1, save_every=20,
                                                     progress=False), resume=False)
    ctc = history.losses["ctc"]
    assert len(ctc) == 20 and sum(ctc[-3:]) < 0.7 * sum(ctc[:3]), ctc
    text, aut = chain["text"][1], torch.load(root / "aut" / "checkpoint.pt", weights_only=False)["model"]
    changed = {k for k in text if not torch.equal(text[k], aut[k])}
    assert "audio_tower.proj2.weight" in changed and all(k.startswith("audio_tower.") for k in changed)


def test_aut_hears_the_number_drills_beside_the_split(dataset, tmp_path):
    from omnistream.data import read_items, synthesize

    root, items, tok = dataset
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    assert AutStage(data, root / "tok", size="tiny").drills == []
    synthesize(data, seed=0, num=3, tasks=["numbers"], name="numbers")
    stage = AutStage(data, root / "tok", size="tiny", batch_size=4)
    drills = read_items(data / "numbers.jsonl")
    assert stage.drills == [(it["messages"][0]["content"][0]["audio"], it["reply"]) for it in drills]
    assert len(stage.clips) == len(heard_clips(items)) + 3 and stage.clips[-3:] == stage.drills
    assert stage.targets[-3:] == [tok.encode(it["reply"]) for it in drills]


def test_mel_bin_index_inverts_the_bin_centres():
    centres = mel_bin_centres(128)
    assert torch.allclose(mel_bin_index(centres, 128), torch.arange(128, dtype=torch.float64), atol=1e-9)
    assert 7000 < centres[-1] < 8000 and 0 < centres[0] < 40 and bool((centres.diff() > 0).all())


@pytest.mark.parametrize("warp", [0.9, 1.1])
def test_vocal_tract_warp_moves_formants_by_its_factor_and_keeps_the_top_bin(warp):
    centres = mel_bin_centres(128)
    frames = torch.zeros(128, 6)
    for j, hz in enumerate((500.0, 1500.0, 2500.0)):  # one "formant" per pair of frames
        frames[:, 2 * j : 2 * j + 2] = torch.exp(-(centres - hz).square() / (2 * 60.0**2))[:, None].float()
    warped = warp_vocal_tract(frames, warp)
    for j, hz in enumerate((500.0, 1500.0, 2500.0)):
        moved = centres[warped[:, 2 * j].argmax()].item()
        width = (centres[1:] - centres[:-1])[warped[:, 2 * j].argmax().clamp(max=126)].item()
        assert abs(moved - hz * warp) <= width, (hz, warp, moved)
    ramp = torch.linspace(0, 1, 128)[:, None].repeat(1, 3)
    assert torch.allclose(warp_vocal_tract(ramp, warp)[-1], ramp[-1])  # the top of the band stays put
    assert torch.equal(warp_vocal_tract(ramp, 1.0), ramp)


def test_colouring_adds_one_smooth_gain_curve_within_the_valid_frames():
    features = torch.randn(128, 40)
    out = colour_spectrum(features, 30, random.Random(3))
    gain = out - features
    assert torch.equal(gain[:, 30:], torch.zeros(128, 10))  # padding untouched
    assert torch.allclose(gain[:, :30], gain[:, :1].expand(-1, 30), atol=1e-6)  # the same filter on every frame
    assert 0 < gain.abs().max() <= TILT + 1e-6 and gain[:, 0].diff().abs().max() < 0.01  # bounded, smooth
    assert not torch.equal(out, colour_spectrum(features, 30, random.Random(4)))


def test_demo_size_fits_the_budget():
    counts = parameter_counts(build_thinker("demo", {"vocab_size": 2048, "eos_token_id": 2, "pad_token_id": 0,
                                                     "audio_token_id": 5, "image_token_id": 8,
                                                     "video_token_id": 9}))
    assert 6e6 < counts["total"] < 9e6 and counts["audio"] > 5e5 and counts["vision"] > 5e5
    text, audio, vision = demo_thinker_configs(2048, "demo")
    assert audio.num_downsample == 4 and audio.chunk_frames == 128 and audio.num_mel_bins == 128
    assert text.layer_types.count("full_attention") >= 1 and text.layer_types.count("linear_attention") >= 3
    assert audio.output_dim == vision.out_hidden_size == text.hidden_size
