"""TM-RoPE position ids: Qwen3-Omni scheme == transformers get_rope_index; Qwen3.5-Omni clock rule and properties."""

import math
import random

import pytest
import torch

from omnistream.audio.encoder import num_audio_tokens
from omnistream.config import AudioConfig
from omnistream.positions import (PositionError, TokenIds, decode_positions, omni_position_ids,
                                  qwen35_position_ids)

PAD, AUDIO_END, VISION_END = 0, 57, 58
TOK = TokenIds(vision_start_token_id=59, audio_token_id=60, image_token_id=61, video_token_id=62,
               audio_start_token_id=63)
MERGE = 2


class Prompt:
    """A token list with the grids, audio frames and video durations its placeholders stand for."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.ids: list[int] = []
        self.images: list[tuple[int, int, int]] = []
        self.videos: list[tuple[int, int, int]] = []
        self.frames: list[int] = []
        self.seconds: list[float] = []
        self.items: list[tuple[int, int]] = []  # (first placeholder index, end index) of each item

    def text(self, n: int) -> "Prompt":
        self.ids += [self.rng.randrange(1, 50) for _ in range(n)]
        return self

    def _item(self, opening: list[int], body: list[int], closing: list[int]) -> "Prompt":
        self.ids += opening
        self.items.append((len(self.ids), len(self.ids) + len(body)))
        self.ids += body + closing
        return self

    def audio(self, frames: int, tokens_per_audio: int | None = None) -> "Prompt":
        self.frames.append(frames)
        n = num_audio_tokens(frames, AudioConfig()) if tokens_per_audio is None else tokens_per_audio
        return self._item([TOK.audio_start_token_id], [TOK.audio_token_id] * n, [AUDIO_END])

    def image(self, grid: tuple[int, int, int]) -> "Prompt":
        self.images.append(grid)
        return self._item([TOK.vision_start_token_id], [TOK.image_token_id] * (math.prod(grid) // MERGE**2),
                          [VISION_END])

    def video(self, grid: tuple[int, int, int], seconds: float) -> "Prompt":
        self.videos.append(grid)
        self.seconds.append(seconds)
        return self._item([TOK.vision_start_token_id], [TOK.video_token_id] * (math.prod(grid) // MERGE**2),
                          [VISION_END])

    def video_with_audio(self, grid: tuple[int, int, int], seconds: float, n_audio: int, patch_key) -> "Prompt":
        """The processor's replace_video_with_audio_token layout: patches at their time key, audio token j at j."""
        self.videos.append(grid)
        self.seconds.append(seconds)
        t, h, w = grid
        video_keys = [patch_key(k, seconds) for k in range(t) for _ in range(h * w // MERGE**2)]
        body, v, a = [], 0, 0
        while v < len(video_keys) and a < n_audio:
            if video_keys[v] <= a:
                body.append(TOK.video_token_id)
                v += 1
            else:
                body.append(TOK.audio_token_id)
                a += 1
        body += [TOK.video_token_id] * (len(video_keys) - v) + [TOK.audio_token_id] * (n_audio - a)
        return self._item([TOK.vision_start_token_id, TOK.audio_start_token_id], body, [AUDIO_END, VISION_END])

    def omni_video_with_audio(self, grid: tuple[int, int, int], seconds: float, frames: int) -> "Prompt":
        self.frames.append(frames)
        return self.video_with_audio(grid, seconds, num_audio_tokens(frames, AudioConfig()),
                                     lambda k, s: k * s * 13)


def batch(*prompts: Prompt) -> dict:
    """Left-padded input_ids / attention_mask and the batch's grids, frames and durations in order."""
    width = max(len(p.ids) for p in prompts)
    ids = torch.tensor([[PAD] * (width - len(p.ids)) + p.ids for p in prompts])
    mask = torch.tensor([[0] * (width - len(p.ids)) + [1] * len(p.ids) for p in prompts])
    images = [g for p in prompts for g in p.images]
    videos = [g for p in prompts for g in p.videos]
    frames = [f for p in prompts for f in p.frames]
    seconds = [s for p in prompts for s in p.seconds]
    return dict(input_ids=ids, attention_mask=mask, image_grid_thw=torch.tensor(images) if images else None,
                video_grid_thw=torch.tensor(videos) if videos else None,
                audio_lengths=torch.tensor(frames) if frames else None,
                video_second_per_grid=torch.tensor(seconds) if seconds else None)


@pytest.fixture(scope="module")
def omni_ref():
    from transformers.models.qwen3_omni_moe import configuration_qwen3_omni_moe as oc
    from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as om

    text = dict(vocab_size=64, hidden_size=16, intermediate_size=16, moe_intermediate_size=8, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_experts=2, num_experts_per_tok=1)
    audio = dict(num_mel_bins=8, d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=16,
                 output_dim=16, downsample_hidden_size=8, n_window=50)
    vision = dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=16, out_hidden_size=16,
                  spatial_merge_size=MERGE, deepstack_visual_indexes=[0])
    cfg = oc.Qwen3OmniMoeThinkerConfig(text_config=text, audio_config=audio, vision_config=vision,
                                       position_id_per_seconds=13, **vars(TOK))
    return om.Qwen3OmniMoeThinkerForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="module")
def qwen35_ref():
    from transformers.models.qwen3_5_moe import configuration_qwen3_5_moe as qc
    from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe as qm

    text = dict(vocab_size=64, hidden_size=16, moe_intermediate_size=8, shared_expert_intermediate_size=8,
                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_experts=2,
                num_experts_per_tok=1, layer_types=["full_attention"])
    vision = dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=16, out_hidden_size=16,
                  spatial_merge_size=MERGE)
    return qm.Qwen3_5MoeModel(qc.Qwen3_5MoeConfig(text_config=text, vision_config=vision)).eval()


def omni_both(ref, inputs: dict, use_audio_in_video: bool = False):
    """(ours, reference) (position_ids, rope_deltas) for one batch."""
    ours = omni_position_ids(inputs["input_ids"], inputs["attention_mask"], TOK,
                             image_grid_thw=inputs["image_grid_thw"], video_grid_thw=inputs["video_grid_thw"],
                             audio_lengths=inputs["audio_lengths"],
                             video_second_per_grid=inputs["video_second_per_grid"],
                             use_audio_in_video=use_audio_in_video, spatial_merge_size=MERGE)
    theirs = ref.get_rope_index(inputs["input_ids"], inputs["image_grid_thw"], inputs["video_grid_thw"],
                                inputs["attention_mask"], use_audio_in_video, inputs["audio_lengths"],
                                inputs["video_second_per_grid"])
    return ours, theirs


def assert_same(ours, theirs):
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b), (a, b)


OMNI_CASES = {
    "text": lambda: [Prompt(1).text(17)],
    "audio": lambda: [Prompt(2).text(5).audio(237).text(4)],
    "audio_whole_chunks": lambda: [Prompt(3).text(3).audio(300).text(6).audio(41).text(2)],
    "image": lambda: [Prompt(4).text(6).image((1, 8, 12)).text(5)],
    "image_first": lambda: [Prompt(5).image((1, 6, 4)).text(3)],
    "video_1s": lambda: [Prompt(6).text(4).video((3, 4, 6), 1.0).text(5)],
    "video_half_s": lambda: [Prompt(7).text(4).video((3, 4, 6), 0.5).text(5)],
    "two_images_audio": lambda: [Prompt(8).text(4).image((1, 4, 4)).text(2).audio(150).text(3)
                                 .image((1, 10, 6)).text(4)],
    "padded_batch": lambda: [Prompt(9).text(3).image((1, 4, 8)).text(2).audio(120).text(3),
                             Prompt(10).text(5).video((2, 6, 4), 0.5).text(2),
                             Prompt(11).text(9)],
    "padded_text_audio": lambda: [Prompt(12).text(3).audio(90).text(2), Prompt(13).text(14)],
}


@pytest.mark.parametrize("case", OMNI_CASES)
def test_omni_matches_reference(omni_ref, case):
    assert_same(*omni_both(omni_ref, batch(*OMNI_CASES[case]())))


AUDIO_IN_VIDEO = {
    "audio_outlasts_video": lambda: [Prompt(20).text(3).omni_video_with_audio((3, 4, 4), 1.0, 420).text(4)],
    "video_outlasts_audio": lambda: [Prompt(21).text(3).omni_video_with_audio((4, 4, 6), 2.0, 150).text(4)],
    "tall_frame_short_audio": lambda: [Prompt(22).text(2).omni_video_with_audio((1, 40, 40), 1.0, 100).text(3)],
    "half_second_grids": lambda: [Prompt(23).omni_video_with_audio((3, 6, 4), 0.5, 260).text(3)],
    "padded_batch": lambda: [Prompt(24).text(2).image((1, 4, 4)).omni_video_with_audio((2, 4, 4), 1.0, 300)
                             .text(2).audio(70).text(2),
                             Prompt(25).text(3).omni_video_with_audio((3, 4, 6), 1.0, 333).text(3)],
}


@pytest.mark.parametrize("case", AUDIO_IN_VIDEO)
def test_omni_audio_in_video_matches_reference(omni_ref, case):
    assert_same(*omni_both(omni_ref, batch(*AUDIO_IN_VIDEO[case]()), use_audio_in_video=True))


def test_omni_tail_quirk_is_exercised(omni_ref):
    """The tall frame with short audio continues from the last audio token, below the frame's maximum."""
    prompt = AUDIO_IN_VIDEO["tall_frame_short_audio"]()[0]
    (pos, _), _ = omni_both(omni_ref, batch(prompt), use_audio_in_video=True)
    first, end = prompt.items[0]
    assert pos[:, 0, end].max() < pos[:, 0, first:end].max() + 1


class FakeCache:
    def __init__(self, length: int):
        self.length = length

    def get_seq_length(self) -> int:
        return self.length


@pytest.mark.parametrize("case", ["padded_batch", "padded_text_audio", "video_half_s"])
def test_omni_decode_matches_generation(omni_ref, case):
    inputs = batch(*OMNI_CASES[case]())
    steps = 4
    (_, deltas), _ = omni_both(omni_ref, inputs)
    ours = decode_positions(deltas, inputs["attention_mask"].sum(-1), steps)  # (3, B, steps)
    kwargs = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                  image_grid_thw=inputs["image_grid_thw"], video_grid_thw=inputs["video_grid_thw"],
                  audio_feature_lengths=inputs["audio_lengths"],
                  video_second_per_grid=inputs["video_second_per_grid"])
    prefill = omni_ref._prepare_position_ids_for_generation(inputs["input_ids"], kwargs)  # (4, B, S)
    grown = prefill[1:, :, -1:] + 1 + torch.arange(steps)  # generate() extends each row by one per token
    assert torch.equal(ours, grown)
    mask = torch.cat([inputs["attention_mask"], torch.ones(len(grown[0]), steps, dtype=torch.long)], dim=1)
    later = omni_ref._prepare_position_ids_for_generation(
        inputs["input_ids"], kwargs | dict(attention_mask=mask, past_key_values=FakeCache(mask.shape[1] - steps)))
    assert torch.equal(ours, later[:, :, -steps:].expand(3, -1, -1))


def test_omni_errors():
    inputs = batch(Prompt(30).text(3).audio(237, tokens_per_audio=20).text(2))
    with pytest.raises(PositionError, match="audio 0"):
        omni_position_ids(inputs["input_ids"], None, TOK, audio_lengths=inputs["audio_lengths"])
    inputs = batch(Prompt(31).text(3).image((1, 4, 4)).text(2))
    with pytest.raises(PositionError, match="2 entries"):
        omni_position_ids(inputs["input_ids"], None, TOK, image_grid_thw=torch.tensor([[1, 4, 4], [1, 4, 4]]))
    inputs = batch(Prompt(32).text(3).omni_video_with_audio((2, 4, 4), 1.0, 200).text(2))
    with pytest.raises(PositionError, match="use_audio_in_video is False"):
        omni_position_ids(inputs["input_ids"], None, TOK, video_grid_thw=inputs["video_grid_thw"],
                          audio_lengths=inputs["audio_lengths"],
                          video_second_per_grid=inputs["video_second_per_grid"])
    with pytest.raises(PositionError, match="no tokens"):
        omni_position_ids(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long), TOK)


# Qwen3.5-Omni scheme


def qwen35(inputs: dict):
    return qwen35_position_ids(inputs["input_ids"], inputs["attention_mask"], TOK,
                               image_grid_thw=inputs["image_grid_thw"], video_grid_thw=inputs["video_grid_thw"],
                               video_second_per_grid=inputs["video_second_per_grid"], spatial_merge_size=MERGE)


def mm_token_types(input_ids: torch.Tensor) -> torch.Tensor:
    """The Qwen3.5 processor's mm_token_type_ids: 1 image, 2 video, 0 anything else."""
    return (input_ids == TOK.image_token_id).int() + 2 * (input_ids == TOK.video_token_id).int()


def timestamped_video(prompt: Prompt, grid: tuple[int, int, int]) -> Prompt:
    """Qwen3.5's video layout: timestamp text, then each temporal patch as its own (1, h, w) item."""
    for _ in range(grid[0]):
        prompt.text(3).video((1, grid[1], grid[2]), 2.0)
    return prompt


QWEN35_REFERENCE_CASES = {
    "text": lambda: [Prompt(40).text(13)],
    "image": lambda: [Prompt(41).text(5).image((1, 8, 12)).text(4)],
    "two_images": lambda: [Prompt(42).image((1, 4, 4)).text(2).image((1, 12, 6)).text(3)],
    "single_patch_video": lambda: [Prompt(43).text(3).video((1, 6, 8), 2.0).text(2)],
    "timestamped_video": lambda: [timestamped_video(Prompt(44).text(3), (3, 4, 6)).text(2)],
    "padded_batch": lambda: [Prompt(45).text(3).image((1, 4, 8)).text(2),
                             Prompt(46).text(2).image((1, 6, 4)).text(1).image((1, 2, 2)).text(5),
                             Prompt(47).text(7)],
}


@pytest.mark.parametrize("case", QWEN35_REFERENCE_CASES)
def test_qwen35_matches_reference_for_text_and_images(qwen35_ref, case):
    inputs = batch(*QWEN35_REFERENCE_CASES[case]())
    theirs = qwen35_ref.get_rope_index(inputs["input_ids"], mm_token_types(inputs["input_ids"]),
                                       inputs["image_grid_thw"], inputs["video_grid_thw"], inputs["attention_mask"])
    assert_same(qwen35(inputs), theirs)


def tick(k: int, seconds: float) -> int:
    return math.floor(k * seconds / 0.16 + 1e-6)


def random_prompt(seed: int) -> Prompt:
    """Text and a random mix of audio, images, videos and videos with audio."""
    rng = random.Random(seed)
    prompt = Prompt(seed).text(rng.randrange(1, 6))
    for _ in range(rng.randrange(1, 5)):
        kind = rng.choice(["audio", "image", "video", "video_audio"])
        grid = (rng.randrange(1, 5), 2 * rng.randrange(1, 6), 2 * rng.randrange(1, 6))
        seconds = rng.choice([0.5, 1.0, 2.0, 0.48])
        if kind == "audio":
            prompt.audio(0, tokens_per_audio=rng.randrange(1, 30))
        elif kind == "image":
            prompt.image((1, grid[1], grid[2]))
        elif kind == "video":
            prompt.video(grid, seconds)
        else:
            prompt.video_with_audio(grid, seconds, rng.randrange(1, 60), tick)
        prompt.text(rng.randrange(0, 4))
    return prompt


@pytest.mark.parametrize("seed", range(12))
def test_qwen35_clock_properties(seed):
    prompt = random_prompt(seed)
    other = Prompt(100 + seed).text(4)
    inputs = batch(prompt, other)
    pos, deltas = qwen35(inputs)
    width = inputs["input_ids"].shape[1]
    offset = width - len(prompt.ids)
    p = pos[:, 0, offset:]  # (3, n) the unpadded prompt
    assert pos.dtype == torch.long and torch.all(pos[:, 0, :offset] == 0)
    assert torch.all(p[0, 1:] >= p[0, :-1]), "temporal ids never go back"
    inside = torch.zeros(len(prompt.ids), dtype=torch.bool)
    for first, end in prompt.items:
        inside[first:end] = True
        assert p[:, first:end].min() == p[:, :first].max() + 1, "each item starts at 1 + the maximum before it"
    for i in (~inside).nonzero().flatten().tolist():
        before = p[:, :i].max() + 1 if i else 0
        assert torch.all(p[:, i] == before), "text continues at 1 + the maximum before it"
    assert deltas[0, 0] == p.max() + 1 - len(prompt.ids)
    assert torch.equal(decode_positions(deltas, inputs["attention_mask"].sum(-1), 2)[:, 0],
                       (p.max() + 1 + torch.arange(2)).expand(3, -1))


def test_qwen35_video_ticks():
    """Patch k of a video sits at tick floor(k * seconds / 0.16) after the video's start; H, W as for an image."""
    for seconds, ticks in [(2.0, [0, 12, 25, 37]), (1.0, [0, 6, 12, 18]), (0.48, [0, 3, 6, 9])]:
        prompt = Prompt(50).text(3).video((4, 4, 6), seconds).text(2)
        pos, _ = qwen35(batch(prompt))
        first, end = prompt.items[0]
        video = pos[:, 0, first:end].reshape(3, 4, 2, 3)  # (3, t, h, w)
        start = first  # the text before it is contiguous from 0
        assert video[0, :, 0, 0].tolist() == [start + t for t in ticks]
        assert torch.equal(video[1, 0], (start + torch.arange(2)).view(2, 1).expand(2, 3))
        assert torch.equal(video[2, 3], (start + torch.arange(3)).view(1, 3).expand(2, 3))


def test_qwen35_audio_shares_the_video_clock():
    """Audio token j of a video's audio is at tick j; a patch precedes the audio token of its own tick."""
    prompt = Prompt(60).text(2).video_with_audio((3, 4, 4), 1.0, 20, tick).text(2)
    pos, _ = qwen35(batch(prompt))
    first, end = prompt.items[0]
    ids = torch.tensor(prompt.ids[first:end])
    item = pos[:, 0, first:end]
    audio = item[:, ids == TOK.audio_token_id]
    assert torch.equal(audio, (first + torch.arange(20)).expand(3, -1))
    patch_starts = [first + tick(k, 1.0) for k in range(3)]
    assert item[0, ids == TOK.video_token_id].view(3, 4).tolist() == [[s] * 4 for s in patch_starts]
    for s in patch_starts:
        patch_at = (item[0] == s).nonzero().flatten()
        assert ids[patch_at[0]] == TOK.video_token_id


def test_qwen35_audio_with_timestamps_is_sequential():
    """Timestamp text inside an audio just continues the count, as a text + audio prompt does."""
    prompt = Prompt(70).text(3)
    prompt.ids += [TOK.audio_start_token_id] + [TOK.audio_token_id] * 10 + [5, 6] + [TOK.audio_token_id] * 7
    prompt.ids += [AUDIO_END]
    prompt.text(2)
    pos, deltas = qwen35(batch(prompt))
    assert torch.equal(pos[:, 0], torch.arange(len(prompt.ids)).expand(3, -1))
    assert deltas.tolist() == [[0]]


def test_qwen35_errors():
    inputs = batch(Prompt(80).text(2).video((4, 4, 4), 1.0).text(2))
    with pytest.raises(PositionError, match="video_second_per_grid"):
        qwen35_position_ids(inputs["input_ids"], None, TOK, video_grid_thw=inputs["video_grid_thw"])
    bad = inputs["input_ids"].clone()
    bad[0, 2] = 7  # the <|vision_start|> now opens nothing; the video pads float in text
    with pytest.raises(PositionError, match="1 entries"):
        qwen35_position_ids(bad, None, TOK, video_grid_thw=inputs["video_grid_thw"],
                            video_second_per_grid=[1.0])
    inputs = batch(Prompt(81).text(2).video_with_audio((2, 4, 4), 1.0, 30, tick).text(2))
    shuffled = inputs["input_ids"].clone()
    shuffled[0, 4], shuffled[0, 12] = shuffled[0, 12].clone(), shuffled[0, 4].clone()
    assert not torch.equal(shuffled, inputs["input_ids"])
    with pytest.raises(PositionError, match="interleaved by time"):
        qwen35_position_ids(shuffled, None, TOK, video_grid_thw=inputs["video_grid_thw"],
                            video_second_per_grid=[1.0])
