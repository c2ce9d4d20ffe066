"""Codec stage: tokenizer + Code2Wav trained together; loss falls, resume is exact, export and save/load agree."""

import json
import shutil

import pytest
import torch

from omnistream.audio.code2wav import Code2Wav
from omnistream.train import TrainConfig, TrainError, train
from omnistream.train.codec_stage import CodecModel, CodecStage, load_code2wav, save_codec, speech_files
from omnistream.voice import load_audio_tokenizer

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng is not installed (Debian: apt-get install espeak-ng); the codec "
                                       "stage trains on synthetic speech")

STEPS, STOP = 30, 15  # tiny preset: dead codes re-seeded at steps 10 and 20, so the stop falls between two
CFG = dict(steps=STEPS, lr=3e-3, warmup=3, log_every=1, save_every=10, progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a busy 2-core machine a second thread mostly waits for the first (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from omnistream.data import synthesize

    out = tmp_path_factory.mktemp("codec_data")
    synthesize(out, seed=0, num=6, tasks=["transcribe", "read_aloud"])
    return out


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory):
    """An uninterrupted 30-step tiny run: (history, run directory)."""
    out = tmp_path_factory.mktemp("codec_whole")
    return train(CodecStage.tiny(data), out, TrainConfig(**CFG)), out


def trained(data, run) -> tuple[CodecStage, CodecModel]:
    stage = CodecStage.tiny(data)
    model = stage.module()
    model.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=False)["model"])
    return stage, model.eval()


def test_batches_are_deterministic_crops_split_across_ranks(data):
    stage = CodecStage.tiny(data, dead_every=0)
    assert len(stage.files) == 6  # 3 transcribe inputs + 3 read_aloud targets
    whole = stage.batch(5, 0, 1)["wave"]
    hop = stage.codec_config.hop
    assert whole.shape[0] == 4 and whole.shape[1] % hop == 0
    assert stage.min_frames <= whole.shape[1] // hop <= stage.max_frames
    assert whole.abs().amax(1).min() > 0.01  # every crop holds sound
    halves = [CodecStage.tiny(data, dead_every=0).batch(5, r, 2)["wave"] for r in (0, 1)]  # fresh caches
    assert torch.equal(torch.cat(halves), whole)
    assert not torch.equal(stage.batch(6, 0, 1)["wave"][:, :hop], whole[:, :hop])
    with pytest.raises(TrainError, match="one process"):
        CodecStage.tiny(data).batch(0, 0, 2)
    with pytest.raises(TrainError, match="no dataset"):
        speech_files(data / "missing")


def test_loss_falls_and_resume_is_exact(data, whole, tmp_path):
    history, run = whole
    losses = history.losses["loss"]
    assert history.steps == list(range(1, STEPS + 1))
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    assert {"reconstruction", "stft", "commitment", "codebook", "replaced"} <= set(history.losses)
    assert history.losses["replaced"][10] > 0  # dead entries were re-seeded before step 10
    train(CodecStage.tiny(data), tmp_path, TrainConfig(**CFG), stop_at=STOP)
    resumed = train(CodecStage.tiny(data), tmp_path, TrainConfig(**CFG))
    assert resumed.losses == history.losses
    a = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_exported_code2wav_reproduces_the_training_forward(data, whole):
    stage, model = trained(data, whole[1])
    wave = stage.batch(STEPS + 1, 0, 1)["wave"]
    with torch.no_grad():
        out = model(wave)
    tokenizer, code2wav = model.export()
    assert tokenizer.decoder is None and not code2wav.training
    codes = tokenizer.encode(wave)
    assert torch.equal(codes, out["codes"])
    with torch.no_grad():
        decoded = code2wav(codes)
    assert decoded.shape == (wave.shape[0], 1, code2wav.config.num_samples(codes.shape[-1]))
    assert out["wave"].abs().max() > 1e-3
    assert (decoded[:, 0] - out["wave"]).abs().max() < 1e-5


def test_save_and_load_round_trip(data, whole, tmp_path):
    stage, model = trained(data, whole[1])
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "keep-me"}))
    save_codec(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "keep-me" and "codec_config" in config and "code2wav_config" in config
    tokenizer, code2wav = model.export()
    loaded_tok, loaded_c2w = load_audio_tokenizer(tmp_path), load_code2wav(tmp_path)
    assert isinstance(loaded_c2w, Code2Wav) and loaded_c2w.config == code2wav.config
    wave = stage.batch(STEPS + 2, 0, 1)["wave"]
    codes = tokenizer.encode(wave)
    assert torch.equal(loaded_tok.encode(wave), codes)
    with torch.no_grad():
        assert torch.equal(loaded_c2w(codes), code2wav(codes))
