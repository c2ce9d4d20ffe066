"""Checkpoints: transformers save_pretrained directories load by path; round trips; corrupt input fails clearly."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from omnistream.config import ConfigError, tiny_omni, tiny_qwen35
from omnistream.weights import CheckpointError, load_thinker, save_thinker
from reference import hf_thinker

TOL = 1e-4


def tensors(path):
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


@pytest.fixture(scope="module", params=["qwen3.5", "omni"])
def saved(request, tmp_path_factory):
    cfg = tiny_qwen35() if request.param == "qwen3.5" else tiny_omni()
    hf = hf_thinker(cfg, seed=3)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, path


def test_save_pretrained_directory_loads_with_same_logits(saved):
    hf, path = saved
    model, layout = load_thinker(path)
    assert layout.per_expert  # transformers 5.23 writes experts one by one
    ids = torch.randint(0, 250, (2, 45))
    with torch.no_grad():
        assert (model(ids)[0] - hf(input_ids=ids).logits).abs().max().item() < TOL


def test_round_trip_writes_the_same_layout(saved, tmp_path):
    _, path = saved
    model, layout = load_thinker(path)
    save_thinker(model, tmp_path, layout)
    before, after = tensors(path), tensors(tmp_path)
    assert sorted(before) == sorted(after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads((path / "config.json").read_text())


def test_sharded_save_with_index_loads_back(saved, tmp_path):
    _, path = saved
    model, layout = load_thinker(path)
    save_thinker(model, tmp_path, layout, max_shard_bytes=200_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    again, _ = load_thinker(tmp_path)
    ids = torch.randint(0, 250, (1, 20))
    with torch.no_grad():
        assert torch.equal(again(ids)[0], model(ids)[0])


def test_bfloat16_load(saved):
    _, path = saved
    model, _ = load_thinker(path, dtype=torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.bfloat16
    with torch.no_grad():
        logits, _ = model(torch.randint(0, 250, (1, 9)))
    assert torch.isfinite(logits).all()


def test_full_omni_prefixes_and_other_components_pass_through(tmp_path):
    hf = hf_thinker(tiny_omni(), seed=4)
    hf.save_pretrained(tmp_path / "thinker")
    flat = {("thinker." + k): v for k, v in tensors(tmp_path / "thinker").items()}
    flat["talker.codec_head.weight"] = torch.randn(6, 4)
    flat["code2wav.code_embedding.weight"] = torch.randn(5, 3)
    full = tmp_path / "full"
    full.mkdir()
    save_file(flat, str(full / "model.safetensors"))
    cfg = json.loads((tmp_path / "thinker" / "config.json").read_text())
    (full / "config.json").write_text(json.dumps({"model_type": "qwen3_omni_moe", "thinker_config": cfg}))
    model, layout = load_thinker(full)
    assert layout.lm_prefix == "thinker.model." and layout.head_prefix == "thinker.lm_head."
    ids = torch.randint(0, 250, (1, 12))
    with torch.no_grad():
        assert (model(ids)[0] - hf(input_ids=ids).logits).abs().max().item() < TOL
    out = tmp_path / "out"
    save_thinker(model, out, layout)
    written = tensors(out)
    assert sorted(written) == sorted(flat)
    assert torch.equal(written["talker.codec_head.weight"], flat["talker.codec_head.weight"])


def test_truncated_file_names_the_file(saved, tmp_path):
    _, path = saved
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    data = (path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_thinker(tmp_path)


def test_missing_tensor_is_named(saved, tmp_path):
    _, path = saved
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    state = tensors(path)
    del state["model.norm.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing: model\.norm\.weight"):
        load_thinker(tmp_path)


def test_shape_mismatch_and_unexpected_are_listed(saved, tmp_path):
    _, path = saved
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    state = tensors(path)
    state["model.norm.weight"] = torch.ones(3)
    state["model.layers.0.mystery.weight"] = torch.ones(2)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_thinker(tmp_path)
    assert "shape mismatch: model.norm.weight" in str(err.value)
    assert "unexpected: model.layers.0.mystery.weight" in str(err.value)


def test_directory_without_config_or_weights(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_thinker(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="no config.json"):
        load_thinker(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(tiny_qwen35().to_hf()))
    with pytest.raises(CheckpointError, match="no .safetensors"):
        load_thinker(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="unsupported model_type 'llama'"):
        load_thinker(tmp_path)


def test_index_naming_a_missing_shard(saved, tmp_path):
    _, path = saved
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(CheckpointError, match="gone.safetensors"):
        load_thinker(tmp_path)
