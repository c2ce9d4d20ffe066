"""Talker training: teacher-forced ARIA / fixed-rate sequences mirror the session; every stage's loss falls."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from omnistream.aria import Kind, pack
from omnistream.audio.codec import AudioTokenizer, CodecConfig
from omnistream.config import tiny_audio, tiny_qwen35
from omnistream.data import read_items, synthesize
from omnistream.positions import TokenIds
from omnistream.thinker import Thinker
from omnistream.train import TrainConfig, train
from omnistream.train.talker_data import (IGNORE, TalkerDataError, aria_sequence, default_processor, fixed_sequence,
                                          speech_tokens, talker_item)
from omnistream.train.mtp_stage import MtpStage
from omnistream.train.talker_stages import TalkerLoss, TalkerStage, demo_talker_config, measured_prior, mtp_loss
from omnistream.talker import Talker
from reference import randomize
from tokenizer_fixture import build_omni_tokenizer

Q, K = 4, 64
STATE = {}  # what the setup fixture made besides its tuple: raw items, data root, tokenizer, processor


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from shutil import which

    if which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    root = tmp_path_factory.mktemp("talker_data")
    synthesize(root, seed=0, num=9, tasks=["read_aloud", "arithmetic", "voice_clone"])
    tok_dir = tmp_path_factory.mktemp("tok")
    tok = build_omni_tokenizer(tok_dir, 600)
    torch.manual_seed(0)
    ids = {name: tok.token_to_id(f"<|{name}|>") for name in ("audio_pad", "image_pad", "video_pad", "vision_start",
                                                            "audio_start")}
    placeholders = TokenIds(ids["audio_pad"], ids["image_pad"], ids["video_pad"], ids["vision_start"],
                            ids["audio_start"])
    thinker = Thinker(tiny_qwen35(vocab_size=640), tiny_audio(num_downsample=4, n_window=64, n_window_infer=256),
                      ids["audio_pad"]).eval()
    codec = AudioTokenizer(CodecConfig(num_quantizers=Q, codebook_size=K, codebook_dim=16, n_mels=40, mel_width=32,
                                       width=32, mel_layers=1, frame_layers=1), decoder=False).eval()
    randomize(thinker, 1)
    config = demo_talker_config(64, 2, placeholders, num_code_groups=Q, codebook_size=K, size="tiny")
    talker = Talker(config)
    processor = default_processor(tok, thinker)
    raw = read_items(root / "train.jsonl")
    items = [talker_item(it, root, thinker, talker, codec, processor, tok) for it in raw]
    STATE.update(raw=raw, root=root, tok=tok, processor=processor)
    return thinker, talker, speech_tokens(tok), items, config


def test_sequences_put_every_frame_where_its_code_is_predicted(setup):
    thinker, talker, tokens, items, config = setup
    for item in items:
        for build in (aria_sequence, fixed_sequence):
            seq = build(thinker, talker, tokens, item)
            assert seq.embeds.shape[0] == seq.targets.shape[0]
            assert torch.equal(seq.targets[seq.frame_at], item.codes[0])  # each frame's code 0 is a target there
            assert int((seq.targets == config.codec_eos_token_id).sum()) == 1 and seq.targets[-1] == config.codec_eos_token_id
        seq = aria_sequence(thinker, talker, tokens, item)
        stream = pack(item.reply_ids, list(range(item.codes.shape[1])))
        slots = (seq.targets == config.codec_text_slot_id).nonzero().flatten()
        assert len(slots) == sum(u.kind is Kind.TEXT for u in stream) == len(item.reply_ids)
        assert int((seq.targets != IGNORE).sum()) == len(stream) + 1


def test_the_measured_prior_bounds_every_item(setup):
    _, _, _, items, _ = setup
    langs = [r["language"] for r in STATE["raw"]]
    prior = measured_prior(items, langs)
    assert set(prior) == set(langs)
    for item, lang in zip(items, langs):
        assert item.codes.shape[1] / len(item.reply_ids) <= prior[lang] < item.codes.shape[1] / len(item.reply_ids) + 3
    with pytest.raises(TalkerDataError, match="languages"):
        measured_prior(items, langs[1:])


def test_a_cloned_voice_is_in_the_prompt(setup):
    _, _, _, items, config = setup
    clones = [it for it in items if it.voice is not None]
    named = [it for it in items if it.voice is None]
    assert clones and named
    assert all(it.voice_code == config.codec_pad_id for it in clones)
    assert all(it.voice_code in config.speaker_id.values() for it in named)


@pytest.mark.parametrize("kind", ["general", "fixed", "long", "speaker"])
def test_each_stage_learns(setup, kind, tmp_path):
    thinker, _, tokens, items, config = setup
    stage = TalkerStage(kind, items, thinker, tokens, config, batch_size=2, seed=0)
    h = train(stage, tmp_path, TrainConfig(steps=16, lr=3e-3, warmup=2, log_every=1, save_every=16, progress=False))
    loss = h.losses["loss"]
    assert sum(loss[-3:]) / 3 < 0.8 * sum(loss[:3]) / 3, loss
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    module = TalkerLoss(Talker(stage.config))
    module.load_state_dict(state)


@pytest.mark.parametrize("fixed", [False, True])
def test_the_batched_loss_equals_the_loss_item_by_item(setup, fixed):
    """One left-padded batch of sequences of different lengths gives each item's losses as it alone would."""
    thinker, _, tokens, items, config = setup
    torch.manual_seed(2)
    module = TalkerLoss(Talker(replace(config, interleave="fixed") if fixed else config)).eval()
    talker, build = module.talker, fixed_sequence if fixed else aria_sequence
    batch = items[:4]
    seqs = [build(thinker, talker, tokens, it) for it in batch]
    assert len({s.embeds.shape[0] for s in seqs}) > 1  # rows are padded
    code0, mtp = [], []
    with torch.no_grad():
        for s in seqs:
            logits, hidden = talker(s.embeds[None], s.positions)
            code0.append(F.cross_entropy(logits[0], s.targets, ignore_index=IGNORE))
            mtp.append(mtp_loss(talker, hidden[0, s.frame_at], s.codes.T))
        out = module(batch, thinker, tokens, fixed=fixed)
    torch.testing.assert_close(out["code0"], torch.stack(code0).mean(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["mtp"], torch.stack(mtp).mean(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fixed", [False, True])
def test_the_mtp_stage_trains_the_code_predictor_alone(setup, fixed, tmp_path):
    """Frames of every item, with the hidden state TalkerLoss gives the MTP there; only the code predictor moves."""
    thinker, _, tokens, items, config = setup
    torch.manual_seed(1)
    init = TalkerLoss(Talker(config)).state_dict()
    stage = MtpStage(items, thinker, tokens, config, init, fixed=fixed, batch_size=32)
    frames = sum(it.codes.shape[1] for it in items)
    assert stage.codes.shape == (frames, Q) and stage.hidden.shape[0] == frames
    first = stage.module()
    seq = (fixed_sequence if fixed else aria_sequence)(thinker, first.talker, tokens, items[0])
    with torch.no_grad():
        _, hidden = first.talker(seq.embeds[None], seq.positions)
    n = items[0].codes.shape[1]
    assert torch.allclose(stage.hidden[:n], hidden[0, seq.frame_at], atol=1e-5)
    h = train(stage, tmp_path, TrainConfig(steps=20, lr=1e-2, warmup=2, log_every=1, save_every=20, progress=False))
    loss = h.losses["loss"]
    assert sum(loss[-3:]) / 3 < 0.8 * sum(loss[:3]) / 3, loss
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    moved = {k for k in state if not torch.equal(state[k], init[k])}
    assert moved and all(k.startswith("talker.code_predictor.") for k in moved)
    halves = torch.cat([stage.batch(3, rank, 2) for rank in (0, 1)])
    assert torch.equal(halves, stage.batch(3, 0, 1))  # two ranks split one seeded draw


def test_unknown_stage_and_voice_are_explained(setup):
    thinker, _, tokens, items, config = setup
    with pytest.raises(TalkerDataError, match="unknown talker stage 'dpo2'"):
        TalkerStage("dpo2", items, thinker, tokens, config)


def test_error_rate_counts_words_or_characters():
    from omnistream.train.talker_dpo import error_rate

    assert error_rate("Five plus two is seven.", "five plus two is seven", "en") == 0
    assert error_rate("five plus two is", "five plus two is seven", "en") == pytest.approx(0.2)
    assert error_rate("六加二等于八", "六加二等于八。", "zh") == 0
    assert error_rate("六加三等于八", "六加二等于八。", "zh") == pytest.approx(1 / 6)
    assert error_rate("", "uno dos", "es") == 1.0


def test_preference_pairs_and_dpo_widen_the_margin(setup, tmp_path):
    from omnistream.audio.code2wav import Code2Wav, Code2WavConfig
    from omnistream.train.talker_dpo import DpoStage, preference_pairs

    thinker, talker, tokens, items, config = setup
    torch.manual_seed(2)
    c2w = Code2Wav(Code2WavConfig(codebook_size=K, num_quantizers=Q, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, intermediate_size=48,
                                  upsample_rates=(2, 3), decoder_dim=16)).eval()
    raw = STATE["raw"]
    named = [(r, it) for r, it in zip(raw, items) if it.voice is None][:2]

    def heard(pcm, record):  # a stand-in transcriber: how much of the reply it hears depends on the rendering
        words = record["reply"].split()
        return " ".join(words[:int(abs(pcm).sum() * 1e4) % (len(words) + 1)])

    pairs = preference_pairs([r for r, _ in named], [it for _, it in named], thinker, talker, c2w, tokens,
                             STATE["tok"], STATE["processor"], STATE["root"], samples=3, max_frames=30, transcriber=heard)
    assert pairs and all(p.errors[0] <= p.errors[1] for p in pairs)
    assert all(p.chosen.reply_ids == p.rejected.reply_ids for p in pairs)
    stage = DpoStage(pairs, thinker, tokens, talker, beta=0.5, batch_size=2)
    h = train(stage, tmp_path, TrainConfig(steps=12, lr=3e-3, warmup=1, log_every=1, save_every=12, progress=False))
    assert h.losses["loss"][0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at the start
    assert h.losses["loss"][-1] < 0.5 and h.losses["accuracy"][-1] == 1.0
