"""Thinker on image and video prompts (deepstack included) vs transformers' Qwen3-Omni thinker."""

import pytest
import torch

from omnistream.config import AudioConfig, TextConfig, VisionConfig, tiny_omni
from omnistream.engine import generate
from omnistream.thinker import InputError, Thinker
from omnistream.weights import convert_thinker_state_dict, load_omni_thinker, load_state_into
from reference import hf_thinker

TOL = 1e-4
PATCH = 3 * 2 * 2 * 2  # channels * temporal patch * patch^2 of the tiny reference vision config


@pytest.fixture(scope="module")
def pair():
    hf = hf_thinker(tiny_omni(), seed=13)
    c = hf.config.to_dict()
    ours = Thinker(TextConfig.from_hf(c), AudioConfig.from_hf(c), c["audio_token_id"], VisionConfig.from_hf(c),
                   c["image_token_id"], c["video_token_id"]).eval()
    load_state_into(ours, convert_thinker_state_dict(hf.state_dict()))
    return hf, ours


def prompt(hf, images=(), videos=(), seed=0):
    """Text, then each image and video as <vision_start> pads <vision_end>, then text; with pixels and grids."""
    g = torch.Generator().manual_seed(seed)
    c = hf.config
    ids = [torch.randint(0, 200, (4,), generator=g)]
    pixels = {"image": [], "video": []}
    for kind, grids in (("image", images), ("video", videos)):
        pad = c.image_token_id if kind == "image" else c.video_token_id
        for t, h, w in grids:
            ids += [torch.tensor([c.vision_start_token_id] + [pad] * (t * h * w) + [7])]
            pixels[kind].append(torch.randn(t * h * w, PATCH, generator=g))
    ids.append(torch.randint(0, 200, (3,), generator=g))
    inputs = {"input_ids": torch.cat(ids)[None]}
    if images:
        inputs |= {"pixel_values": torch.cat(pixels["image"]), "image_grid_thw": torch.tensor(images)}
    if videos:
        inputs |= {"pixel_values_videos": torch.cat(pixels["video"]), "video_grid_thw": torch.tensor(videos)}
    return inputs


def reference_positions(hf, inputs, second_per_grid=None):
    ids = inputs["input_ids"]
    pos, _ = hf.get_rope_index(ids, inputs.get("image_grid_thw"), inputs.get("video_grid_thw"),
                               torch.ones_like(ids), False, None, second_per_grid)
    return pos


@pytest.mark.parametrize("images, videos", [
    ([(1, 4, 6)], []),
    ([], [(2, 4, 4)]),
    ([(1, 6, 4), (1, 2, 2)], [(3, 2, 4)]),
], ids=["image", "video", "two-images-and-a-video"])
def test_logits_match(pair, images, videos):
    hf, ours = pair
    inputs = prompt(hf, images, videos, seed=len(images) + 3 * len(videos))
    spg = torch.ones(len(videos)) if videos else None
    with torch.no_grad():
        ref = hf(**inputs, attention_mask=torch.ones_like(inputs["input_ids"]),
                 video_second_per_grid=spg).logits
        got, _ = ours(**inputs, position_ids=reference_positions(hf, inputs, spg))
    assert ref.abs().max() > 0.5
    assert (got - ref).abs().max().item() < TOL


def test_greedy_tokens_match(pair):
    hf, ours = pair
    inputs = prompt(hf, [(1, 4, 4)], [(2, 2, 4)], seed=9)
    ids = inputs["input_ids"]
    spg = torch.ones(1)
    with torch.no_grad():
        ref = hf.generate(**inputs, attention_mask=torch.ones_like(ids), video_second_per_grid=spg,
                          max_new_tokens=15, min_new_tokens=15, do_sample=False)[:, ids.shape[1]:]
        embeds, deepstack = ours.embed(**inputs)
    got = generate(ours.lm, ids, max_new_tokens=15, inputs_embeds=embeds, deepstack=deepstack,
                   position_ids=reference_positions(hf, inputs, spg)).tokens
    assert got.tolist() == ref.tolist()


def test_missing_pixels_are_explained(pair):
    hf, ours = pair
    inputs = prompt(hf, [(1, 2, 2)])
    with pytest.raises(InputError, match="4 image placeholder tokens but no image was given"):
        ours(inputs["input_ids"])
    with pytest.raises(InputError, match="image encodes to 8 tokens but the prompt has 4"):
        ours(inputs["input_ids"], pixel_values=torch.randn(8, PATCH), image_grid_thw=torch.tensor([[2, 2, 2]]))


def test_loads_audio_and_vision_towers_from_a_save_pretrained_directory(pair, tmp_path):
    hf, _ = pair
    hf.save_pretrained(tmp_path)
    loaded = load_omni_thinker(tmp_path)
    assert loaded.visual is not None and loaded.audio_tower is not None
    inputs = prompt(hf, [(1, 4, 2)], seed=4)
    with torch.no_grad():
        ref = hf(**inputs, attention_mask=torch.ones_like(inputs["input_ids"])).logits
        got, _ = loaded(**inputs, position_ids=reference_positions(hf, inputs))
    assert (got - ref).abs().max().item() < TOL


def test_audio_in_video_matches(pair):
    hf, ours = pair
    c = hf.config
    g = torch.Generator().manual_seed(21)
    grid, frames = (3, 2, 2), 300  # 3 temporal patches of 4 tokens 1 s apart; 3 s of audio = 39 tokens
    keys = [k * 13 for k in range(grid[0]) for _ in range(grid[1] * grid[2])]  # video time keys, 13 per second
    n_audio = ours.audio_tower.token_counts(torch.tensor([frames])).item()
    body, v, a = [], 0, 0
    while v < len(keys) or a < n_audio:  # the processor's interleave: by time key, video first on ties
        take_video = v < len(keys) and (a >= n_audio or keys[v] <= a)
        body.append(c.video_token_id if take_video else c.audio_token_id)
        v, a = v + take_video, a + (not take_video)
    ids = torch.cat([torch.randint(0, 200, (3,), generator=g),
                     torch.tensor([c.vision_start_token_id, c.audio_start_token_id] + body + [8, 7]),
                     torch.randint(0, 200, (2,), generator=g)])[None]
    inputs = {"input_ids": ids, "pixel_values_videos": torch.randn(12, PATCH, generator=g),
              "video_grid_thw": torch.tensor([grid]), "audio_features": torch.randn(1, 20, frames, generator=g)}
    spg = torch.ones(1)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values_videos=inputs["pixel_values_videos"], video_grid_thw=inputs["video_grid_thw"],
                 input_features=inputs["audio_features"], feature_attention_mask=torch.ones(1, frames, dtype=torch.long),
                 attention_mask=torch.ones_like(ids), use_audio_in_video=True, video_second_per_grid=spg).logits
        pos, _ = hf.get_rope_index(ids, None, inputs["video_grid_thw"], torch.ones_like(ids), True,
                                   torch.tensor([frames]), spg)
        got, _ = ours(**inputs, audio_lengths=[frames], position_ids=pos)
        ref_tokens = hf.generate(input_ids=ids, pixel_values_videos=inputs["pixel_values_videos"],
                                 video_grid_thw=inputs["video_grid_thw"], input_features=inputs["audio_features"],
                                 feature_attention_mask=torch.ones(1, frames, dtype=torch.long),
                                 attention_mask=torch.ones_like(ids), use_audio_in_video=True,
                                 video_second_per_grid=spg, max_new_tokens=12, min_new_tokens=12,
                                 do_sample=False)[:, ids.shape[1]:]
        embeds, deepstack = ours.embed(**inputs, audio_lengths=[frames])
    assert (got - ref).abs().max().item() < TOL
    tokens = generate(ours.lm, ids, max_new_tokens=12, inputs_embeds=embeds, deepstack=deepstack, position_ids=pos)
    assert tokens.tokens.tolist() == ref_tokens.tolist()
