"""The whole recipe at the tiny size: every stage trains a few steps and its loss falls; export makes a model that
`omnistream demo` runs; a stopped stage resumes."""

import json
import shutil

import pytest
import torch

from omnistream import cli
from omnistream.data import synthesize
from omnistream.engine.heard import HEARD_BEAM, HEARD_WEIGHT
from omnistream.processor import Tokenizer
from omnistream.train.loop import TrainError
from omnistream.train.tokenizer import special_ids

# stage -> extra arguments (a high lr so a few steps show learning)
PLAN = [
    ("codec", ["--steps", "12", "--lr", "3e-3", "--batch", "4"]),
    ("thinker-text", ["--steps", "10", "--lr", "1e-2", "--batch", "4"]),
    ("thinker-drill", ["--steps", "10", "--lr", "3e-3", "--batch", "8"]),
    ("thinker-aut", ["--steps", "8", "--lr", "1e-2", "--batch", "4"]),
    ("thinker-s1", ["--steps", "6", "--lr", "1e-2", "--batch", "4"]),
    ("thinker-s2", ["--steps", "10", "--lr", "1e-2", "--batch", "4"]),
    ("thinker-s3", ["--steps", "6", "--lr", "5e-3", "--batch", "2"]),
    ("talker-general", ["--steps", "16", "--lr", "3e-3", "--batch", "2"]),
    ("talker-fixed", ["--steps", "16", "--lr", "3e-3", "--batch", "2"]),
    ("talker-long", ["--steps", "6", "--lr", "3e-3", "--batch", "2"]),
    ("talker-dpo", ["--steps", "6", "--lr", "3e-3", "--batch", "2", "--dpo-items", "2", "--dpo-samples", "2",
                    "--dpo-frames", "30"]),
    ("talker-speaker", ["--steps", "6", "--lr", "3e-3", "--batch", "2"]),
    ("talker-mtp", ["--steps", "10", "--lr", "1e-2", "--batch", "64"]),
    ("talker-fixed-mtp", ["--steps", "10", "--lr", "1e-2", "--batch", "64"]),
]
FALLS = {"codec", "thinker-text", "thinker-drill", "thinker-aut", "thinker-s2", "talker-general", "talker-fixed",
         "talker-dpo", "talker-mtp", "talker-fixed-mtp"}


def run(argv):
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    data, work = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("work")
    synthesize(data, seed=0, num=16)
    common = ["--data", str(data), "--work", str(work), "--size", "tiny", "--quiet", "--log-every", "1"]
    assert run(["train", "tokenizer"] + common) == 0
    for stage, extra in PLAN:
        assert run(["train", stage] + common + extra) == 0, stage
    assert run(["train", "export"] + common) == 0
    return data, work, common


@pytest.mark.parametrize("stage", [s for s, _ in PLAN])
def test_stage_trained_and_its_loss_fell(recipe, stage):
    _, work, _ = recipe
    history = json.loads((work / stage / "history.json").read_text())
    loss = history["losses"]["loss"]
    assert len(loss) >= 6 and all(v == v for v in loss)  # logged every step, never NaN
    if stage in FALLS:
        assert min(loss[-3:]) < 0.9 * max(loss[:2]), loss
    assert (work / stage / "loss.png").stat().st_size > 1000


def test_export_runs_in_the_demo(recipe, tmp_path, capsys):
    _, work, _ = recipe
    demo = work / "demo"
    assert {"config.json", "model.safetensors", "tokenizer.json", "question.wav"} <= {f.name for f in demo.iterdir()}
    questions = json.loads((demo / "questions.json").read_text(encoding="utf-8"))
    assert [q["language"] for q in questions] == ["en", "zh", "es"] and all((demo / q["audio"]).is_file()
                                                                            for q in questions)
    configs = [json.loads((work / d / "config.json").read_text()) for d in ("demo", "demo-fixed")]
    assert [c["talker_config"]["interleave"] for c in configs] == ["aria", "fixed"]  # the twin, for the ablation
    settings = json.loads((work / "talker.json").read_text())  # the ARIA prior measured by talker-general
    assert configs[0]["talker_config"]["aria_frames_per_token"] == settings["aria_frames_per_token"]
    assert set(settings["aria_frames_per_token"]) == {"en", "zh", "es"}
    thinker = configs[0]["thinker_config"]  # its encoder's CTC reading decodes heard lines (engine.heard)
    assert thinker["ctc_heard_weight"] == HEARD_WEIGHT and thinker["ctc_blank_token_id"] == special_ids(
        Tokenizer(demo))["pad_token_id"] and thinker["ctc_heard_beam"] == HEARD_BEAM
    out = tmp_path / "answer.wav"
    assert run(["demo", "--checkpoint", str(demo), "--out", str(out), "--max-new-tokens", "6",
                "--max-audio-frames", "20"]) == 0
    assert out.stat().st_size > 44 and "first audio packet" in capsys.readouterr().err
    said = ["generate", "--checkpoint", str(demo), "--audio", str(demo / "question.wav"), "--prompt",
            "Transcribe this audio.", "--max-new-tokens", "6"]
    assert run(said + ["--transcribe"]) == 0 and "generated" in capsys.readouterr().err
    foreign = tmp_path / "foreign"  # a checkpoint whose encoder has no CTC reading (as a reference one)
    shutil.copytree(demo, foreign)
    config = json.loads((foreign / "config.json").read_text())
    del config["thinker_config"]["ctc_heard_weight"]
    (foreign / "config.json").write_text(json.dumps(config))
    said[2] = str(foreign)
    assert run(said) == 0 and run(said + ["--transcribe"]) == 2
    assert "names no CTC reading" in capsys.readouterr().err


def test_s2_and_s3_augment_their_audio_and_take_spoken_jsonl_unless_told_otherwise(recipe):
    from omnistream.train.recipe import _stage, build_parser

    data, work, common = recipe
    for argv, augmented in [(["thinker-s2"], True), (["thinker-s3"], True), (["thinker-s1"], False),
                            (["thinker-s2", "--no-augment"], False), (["thinker-s1", "--augment"], True)]:
        assert _stage(build_parser().parse_args(argv + common), work, data).augment is augmented, argv
    spoken = data / "spoken.jsonl"  # make demo-data's extra transcripts and questions: taken when present
    spoken.write_text((data / "train.jsonl").read_text().splitlines()[0] + "\n")
    try:
        sizes = {argv[-1] if argv else "default": len(_stage(build_parser().parse_args(
            ["thinker-s2"] + common + argv), work, data).data.items) for argv in ([], ["--extra"])}
        beside = len(_stage(build_parser().parse_args(["thinker-text"] + common), work, data).data.items)
    finally:
        spoken.unlink()
    alone = len(_stage(build_parser().parse_args(["thinker-text"] + common), work, data).data.items)
    assert beside == alone  # the LM-only text stage does not take spoken.jsonl (nor refuse to start beside it)
    assert sizes["default"] == sizes["--extra"] + 1  # a bare --extra: none
    lines = (data / "train.jsonl").read_text().splitlines()
    drill, aloud = data / "drill.jsonl", data / "aloud.jsonl"
    drill.write_text(next(x for x in lines if '"transcribe"' in x).replace('"transcribe"', '"numbers"') + "\n")
    aloud.write_text(next(x for x in lines if '"read_aloud"' in x) + "\n")
    taken = _stage(build_parser().parse_args(["thinker-s2"] + common + ["--extra", str(drill)]), work, data)
    assert len(taken.data.items) == sizes["--extra"] + 1  # number drills train in S1-S3 beside transcripts
    with pytest.raises(TrainError, match="none of its 1 items is of a task thinker-s2 trains on"):
        _stage(build_parser().parse_args(["thinker-s2"] + common + ["--extra", str(aloud)]), work, data)


def test_a_stopped_stage_resumes_and_bad_requests_are_explained(recipe, capsys):
    data, work, common = recipe
    before = json.loads((work / "talker-general" / "history.json").read_text())["steps"][-1]
    assert run(["train", "talker-general"] + common + ["--steps", "18", "--lr", "3e-3", "--batch", "2"]) == 0
    after = json.loads((work / "talker-general" / "history.json").read_text())["steps"]
    assert before == 16 and after[-1] == 18 and after.count(17) == 1  # two more steps, not eighteen
    capsys.readouterr()
    assert run(["train", "thinker-s1", "--data", str(work), "--work", str(work)]) == 2
    assert "train.jsonl" in capsys.readouterr().err
    for stage, option in [("talker-general", ["--extra", "x.jsonl"]), ("talker-mtp", ["--no-augment"]),
                          ("thinker-s3", ["--generated", "5"]), ("tokenizer", ["--steps", "5"]),
                          ("export", ["--lr", "1e-3"]), ("thinker-s2", ["--vocab-size", "512"]),
                          ("talker-general", ["--dpo-frames", "40"])]:  # options the stage would not read
        assert run(["train", stage] + common + option) == 2
        assert f"{option[0]}: {stage} does not read it" in capsys.readouterr().err
    assert run(["train", "codec"] + common + ["--init", str(work / "demo"), "--steps", "5"]) == 2
    assert "--steps: codec --init" in capsys.readouterr().err  # a shipped codec is taken as it is, untrained
    assert run(["train", "tokenizer"] + common + ["--init", str(work / "demo"), "--vocab-size", "512"]) == 2
    assert "--vocab-size: tokenizer --init" in capsys.readouterr().err


def test_aut_beside_the_lm_stages_then_s1_joins_them(recipe, tmp_path, capsys):
    data, work, common = recipe
    shutil.copytree(work / "tokenizer", tmp_path / "tokenizer")
    shutil.copytree(work / "thinker-drill", tmp_path / "thinker-drill")
    mine = common[:2] + ["--work", str(tmp_path)] + common[4:]
    text = ["train", "thinker-text"] + mine + ["--steps", "10", "--lr", "1e-2", "--batch", "4"]
    assert run(text + ["--stop-at", "4"]) == 0
    assert not (tmp_path / "thinker-text" / "summary.json").exists()  # stopped, not done
    shutil.copy(tmp_path / "thinker-text" / "checkpoint.pt", tmp_path / "aut-init.pt")
    assert run(text) == 0
    ours = json.loads((tmp_path / "thinker-text" / "history.json").read_text())["losses"]["loss"]
    straight = json.loads((work / "thinker-text" / "history.json").read_text())["losses"]["loss"]
    assert ours == pytest.approx(straight, rel=1e-4)  # the stop left the schedule as it was
    aut = ["train", "thinker-aut"] + mine + ["--steps", "4", "--lr", "1e-2", "--batch", "4"]
    assert run(aut + ["--init", str(tmp_path / "aut-init.pt")]) == 0
    assert run(["train", "thinker-s1"] + mine + ["--steps", "2", "--batch", "4"]) == 0
    start = torch.load(tmp_path / "thinker-s1" / "init.pt", weights_only=True)
    drill, heard = (torch.load(tmp_path / s / "checkpoint.pt", weights_only=False)["model"]
                    for s in ("thinker-drill", "thinker-aut"))
    assert start.keys() == drill.keys() and any(k.startswith("audio_tower.") for k in start)
    for k, v in start.items():
        assert torch.equal(v, (heard if k.startswith("audio_tower.") else drill)[k]), k
    key = "lm.model.embed_tokens.weight"
    assert not torch.equal(heard[key], drill[key])  # AuT's own LM (the stopped thinker-text's) is left behind
    capsys.readouterr()
    assert run(["train", "thinker-s2", "--init", "x.pt"] + mine) == 2 and "x.pt: no such" in capsys.readouterr().err
    assert run(text + ["--stop-at", "0"]) == 2 and "--stop-at 0" in capsys.readouterr().err


def test_warm_starts_from_the_shipped_model(recipe, tmp_path, capsys):
    """A fresh work directory takes the shipped tokenizer and frozen codec as they are, and its Thinker and Talker
    stages start from the shipped Thinker and Talker (fp32 copies of the fp16 weights)."""
    from omnistream.train.recipe import _talker_init
    from omnistream.voice import load_audio_tokenizer
    from omnistream.weights import load_omni

    data, work, common = recipe
    demo, warm = work / "demo", tmp_path / "warm"
    mine = ["--data", str(data), "--work", str(warm)] + common[4:]
    for stage in ("tokenizer", "codec"):
        assert run(["train", stage, "--init", str(demo)] + mine) == 0, stage
    assert (warm / "tokenizer" / "tokenizer.json").read_bytes() == (demo / "tokenizer.json").read_bytes()
    shipped, taken = (load_audio_tokenizer(d).state_dict() for d in (demo, warm / "codec" / "export"))
    assert shipped.keys() == taken.keys() and all(torch.equal(shipped[k], taken[k]) for k in shipped)
    thinker, talker, code2wav, _ = load_omni(demo)
    from omnistream.train.codec_stage import load_code2wav

    rendered = load_code2wav(warm / "codec" / "export").state_dict()
    assert all(torch.equal(v, rendered[k]) for k, v in code2wav.state_dict().items())
    assert run(["train", "thinker-s2", "--init", str(demo), "--steps", "2", "--batch", "2"] + mine) == 0
    start = torch.load(warm / "thinker-s2" / "init.pt", weights_only=True)
    trained = torch.load(work / "thinker-s3" / "checkpoint.pt", weights_only=False)["model"]
    assert start.keys() == trained.keys() and all(torch.equal(v, trained[k].half().float()) for k, v in start.items())
    assert json.loads((warm / "thinker-s2" / "summary.json").read_text())["steps"] == 2
    state = _talker_init(warm, "talker-general", str(demo))
    mtp = torch.load(work / "talker-mtp" / "checkpoint.pt", weights_only=False)["model"]
    assert state.keys() == mtp.keys() and all(torch.equal(v, mtp[k].half().float()) for k, v in state.items())
    assert _talker_init(warm, "talker-long", str(work / "talker-mtp" / "checkpoint.pt")).keys() == mtp.keys()
    assert run(["train", "thinker-s3", "--init", str(demo), "--steps", "0"] + mine) == 0  # the shipped Thinker as is
    taken = torch.load(warm / "thinker-s3" / "checkpoint.pt", weights_only=False)
    assert taken["step"] == 0 and all(torch.equal(v, trained[k].half().float()) for k, v in taken["model"].items())
    assert run(["train", "talker-fixed", "--steps", "2", "--batch", "2"] + mine) == 0  # a twin for the shipped model
    capsys.readouterr()
    assert run(["train", "thinker-s3", "--init", str(demo), "--steps", "0"] + mine) == 0
    assert "already trained" in capsys.readouterr().err
    other = tmp_path / "other"  # a work directory whose tokenizer is not the shipped one
    shutil.copytree(work / "tokenizer", other / "tokenizer")
    (other / "tokenizer" / "tokenizer.json").write_text("{}")
    cases = [(["thinker-s2", "--init", str(demo)], other, "its tokenizer is not"),
             (["tokenizer", "--init", str(demo)], other, "holds another tokenizer"),
             (["codec", "--init", str(work / "thinker-s3" / "checkpoint.pt")], warm, "shipped checkpoint directory"),
             (["thinker-s2", "--init", str(work)], warm, "no config.json"),
             (["talker-general", "--init", str(work / "thinker-s3" / "checkpoint.pt")], warm, "not a Talker stage's"),
             (["export", "--init", str(demo)], warm, "export assembles"),
             (["thinker-s2", "--steps", "0"], warm, "0 with --init"),
             (["thinker-s2", "--steps", "-1"], warm, "1 or more")]
    capsys.readouterr()
    for argv, where, message in cases:
        assert run(["train"] + argv + ["--data", str(data), "--work", str(where)] + common[4:]) == 2, message
        err = capsys.readouterr().err
        assert "omnistream: error:" in err and message in err, (message, err)


def test_a_thinker_stage_is_evaluated_in_text(recipe, tmp_path, capsys):
    from omnistream.eval.cli import main as eval_main
    from omnistream.eval.runner import ModelRunner

    data, work, _ = recipe
    runner = ModelRunner.from_stage(work / "thinker-s3")
    trained = torch.load(work / "thinker-s3" / "checkpoint.pt", weights_only=False)["model"]
    assert runner.stage == "thinker-s3" and runner.thinker.state_dict().keys() == trained.keys()
    exported = ModelRunner(work / "demo").thinker.state_dict()  # the shipped Thinker: the same one, in fp16
    for k, v in runner.thinker.state_dict().items():
        assert torch.equal(v, trained[k]) and torch.equal(exported[k], trained[k].half().float()), k
    out = tmp_path / "report"
    common = ["--data", str(data), "--split", "train", "--no-judge", "--max-new-tokens", "4"]
    assert eval_main(["--stage", str(work / "thinker-s3"), "--out", str(out)] + common) == 0, capsys.readouterr()
    results = json.loads((out / "results.json").read_text())
    assert set(results["counts"]) == {"transcribe", "arithmetic", "counting", "image_qa", "video_caption",
                                      "video_segments"}
    assert {"asr", "questions", "image_qa", "video"} <= results.keys() and "tts" not in results
    assert "stage thinker-s3, text only" in results["meta"]["checkpoint"]
    assert results["meta"]["ctc_weight"] == HEARD_WEIGHT and runner.heard.weight == HEARD_WEIGHT
    assert results["meta"]["ctc_beam"] == HEARD_BEAM == runner.heard.beam
    assert f"CTC reading at weight {HEARD_WEIGHT}, beam {HEARD_BEAM}" in (out / "report.md").read_text()
    plain = tmp_path / "plain"
    assert eval_main(["--stage", str(work / "thinker-s3"), "--out", str(plain), "--ctc-weight", "0", "--ctc-beam",
                      "2", "--tasks", "transcribe"] + common) == 0
    meta = json.loads((plain / "results.json").read_text())["meta"]
    assert meta["ctc_weight"] == 0.0 and meta["ctc_beam"] == 2
    assert "decoded by the LM alone" in (plain / "report.md").read_text()
    bare = tmp_path / "bare" / "thinker-s3"
    shutil.copytree(work / "thinker-s3", bare)
    cases = [(["--stage", str(work / "talker-general")], "takes a Thinker stage"),
             (["--stage", str(work / "thinker-s3"), "--tasks", "read_aloud"], "cannot speak: read_aloud"),
             (["--stage", str(work / "thinker-s3"), "--checkpoint", str(work / "demo")], "give one model"),
             (["--stage", str(tmp_path / "nothing")], "no stage checkpoint"),
             (["--stage", str(bare)], "has no tokenizer beside it"),
             (["--stage", str(work / "thinker-s3"), "--ctc-weight", "1.5"], "--ctc-weight 1.5: give a weight in"),
             (["--stage", str(work / "thinker-s3"), "--ctc-beam", "0"], "--ctc-beam 0: give a beam of at least 1")]
    capsys.readouterr()
    for argv, message in cases:
        assert eval_main(argv + common + ["--out", str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err
        assert "omnistream: error:" in err and message in err, (message, err)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("stage,extra,tol", [
    ("thinker-s2", ["--steps", "4", "--lr", "3e-3", "--batch", "4"], 2e-3),
    ("talker-general", ["--steps", "4", "--lr", "3e-3", "--batch", "2"], 1e-3),
])
def test_a_real_stage_under_torchrun_follows_one_process(recipe, tmp_path, stage, extra, tol):
    """FSDP2 with gloo on CPU, 2 ranks: decoder layers sharded, the audio/vision towers replicated (a rank whose
    batch has no image must not skip collectives), the loss curve that of one process."""
    import os
    import subprocess
    import sys

    data, work, _ = recipe
    curves = []
    for launcher in ([], [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29581" if stage == "thinker-s2" else "29582"]):
        out = tmp_path / ("two" if launcher else "one")
        shutil.copytree(work, out, ignore=shutil.ignore_patterns(stage))
        args = ["train", stage, "--data", str(data), "--work", str(out), "--size", "tiny", "--quiet",
                "--log-every", "1", "--fresh"] + extra
        if launcher:
            run_ = subprocess.run(launcher + ["-m", "omnistream.cli"] + args, capture_output=True, text=True,
                                  env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
            assert run_.returncode == 0, run_.stderr[-2000:]
        else:
            assert run(args) == 0
        curves.append(json.loads((out / stage / "history.json").read_text())["losses"]["loss"])
    assert len(curves[0]) == len(curves[1]) == 4
    assert max(abs(a - b) for a, b in zip(*curves)) < tol, curves
