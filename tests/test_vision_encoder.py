"""Vision encoder parity with transformers' Qwen3OmniMoeVisionEncoder on tiny random weights, and input checks."""

import pytest
import torch
from reference import randomize
from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeVisionEncoderConfig
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeVisionEncoder

from omnistream.config import ConfigError, VisionConfig, tiny_vision
from omnistream.vision.encoder import VisionEncoder, num_vision_tokens

TOL = 1e-4
TINY = dict(depth=3, hidden_size=32, num_heads=2, intermediate_size=48, patch_size=4, temporal_patch_size=2,
            spatial_merge_size=2, num_position_embeddings=64, out_hidden_size=48, deepstack_visual_indexes=[0, 2])
# merge 1, exact GELU, deepstack listed out of block order
MERGE1 = TINY | dict(spatial_merge_size=1, hidden_act="gelu", deepstack_visual_indexes=[2, 0])


def build(hf_kwargs: dict, seed: int = 0):
    ref = Qwen3OmniMoeVisionEncoder(Qwen3OmniMoeVisionEncoderConfig(**hf_kwargs))
    randomize(ref, seed)
    ref.set_attn_implementation("eager")
    ref = ref.float().eval()
    ours = VisionEncoder(VisionConfig.from_hf(ref.config.to_dict()))
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours.eval()


@pytest.fixture(scope="module")
def pair():
    return build(TINY)


@pytest.fixture(scope="module")
def pair_merge1():
    return build(MERGE1, seed=1)


def inputs(config: VisionConfig, grid: list[list[int]], seed: int = 0):
    g = torch.tensor(grid)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(int(g.prod(-1).sum()), config.patch_dim, generator=gen), g


def compare(ref, ours, grid, dtype=torch.float32):
    pixels, g = inputs(ours.config, grid)
    with torch.no_grad():
        expected = ref(pixels.to(dtype), g)
        merged, deepstack = ours(pixels.to(dtype), g)
    assert merged.dtype == dtype
    assert len(deepstack) == len(expected.deepstack_features) == len(ours.config.deepstack_visual_indexes)
    errors = [(merged.float() - expected.pooler_output.float()).abs().max().item()]
    for ours_d, ref_d in zip(deepstack, expected.deepstack_features):
        assert ours_d.shape == merged.shape
        errors.append((ours_d.float() - ref_d.float()).abs().max().item())
    return merged, errors


GRIDS = {
    "image": [[1, 6, 8]],
    "video": [[3, 4, 4]],
    "image+video": [[1, 6, 8], [3, 4, 4]],
    "sizes-interleaved": [[3, 4, 4], [1, 6, 8], [2, 4, 4], [1, 2, 8]],
    "larger-than-table": [[1, 12, 10]],
    "single-block": [[1, 2, 2]],
}


@pytest.mark.parametrize("name", list(GRIDS))
def test_matches_reference(pair, name):
    ref, ours = pair
    merged, errors = compare(ref, ours, GRIDS[name])
    assert merged.shape == (int(num_vision_tokens(GRIDS[name], 2).sum()), 48)
    assert max(errors) < TOL, errors


@pytest.mark.parametrize("grid", [[[1, 5, 7]], [[2, 3, 3], [1, 9, 11]], [[1, 8, 8], [4, 2, 3]]])
def test_matches_reference_merge1(pair_merge1, grid):
    ref, ours = pair_merge1
    merged, errors = compare(ref, ours, grid)
    assert merged.shape == (sum(t * h * w for t, h, w in grid), 48)
    assert max(errors) < TOL, errors


def test_bfloat16_close_to_reference():
    ref, ours = build(TINY)
    ref, ours = ref.to(torch.bfloat16), ours.to(torch.bfloat16)
    _, errors = compare(ref, ours, GRIDS["image+video"], dtype=torch.bfloat16)
    assert max(errors) < 5e-2, errors


def test_token_counts():
    assert num_vision_tokens(torch.tensor([[1, 6, 8], [3, 4, 4]]), 2).tolist() == [12, 12]
    assert num_vision_tokens([[2, 3, 5]], 1).tolist() == [30]
    assert num_vision_tokens([1, 12, 10], 2).tolist() == [30]


def test_state_dict_names_match_reference(pair):
    ref, ours = pair
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_input_errors(pair):
    _, ours = pair
    pixels, grid = inputs(ours.config, [[1, 6, 8]])
    with pytest.raises(ValueError, match="47 patch rows but grid_thw"):
        ours(pixels[:-1], grid)
    with pytest.raises(ValueError, match="multiples of spatial_merge_size 2"):
        ours(pixels[:40], torch.tensor([[1, 5, 8]]))
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(N_patches, 96\)"):
        ours(pixels[:, :-1], grid)
    with pytest.raises(ValueError, match=r"grid_thw must be a non-empty integer tensor \(n_items, 3\)"):
        ours(pixels, torch.tensor([6, 8]))
    with pytest.raises(ValueError, match="all must be positive"):
        ours(pixels[:0], torch.tensor([[0, 6, 8]]))


def test_config_from_hf_nested_and_errors():
    vision = Qwen3OmniMoeVisionEncoderConfig(**TINY).to_dict()
    for whole in ({"vision_config": vision}, {"thinker_config": {"vision_config": vision}}):
        assert VisionConfig.from_hf(whole) == tiny_vision()
    assert VisionConfig.from_hf({}) == VisionConfig()
    with pytest.raises(ConfigError, match="hidden_act 'relu' is not supported"):
        tiny_vision(hidden_act="relu")
    with pytest.raises(ConfigError, match="not a multiple of num_heads"):
        tiny_vision(num_heads=3)
    with pytest.raises(ConfigError, match="multiple of 4"):
        tiny_vision(hidden_size=36, num_heads=2)
    with pytest.raises(ConfigError, match="not a square grid"):
        tiny_vision(num_position_embeddings=60)
    with pytest.raises(ConfigError, match="deepstack_visual_indexes"):
        tiny_vision(deepstack_visual_indexes=[3])
    with pytest.raises(ConfigError, match="rope_type"):
        VisionConfig.from_hf(vision | {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}})
