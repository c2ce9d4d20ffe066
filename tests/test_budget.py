"""Token budget: the paper's long-input claims fit a 256k context; over-budget input is refused with numbers."""

import pytest

from omnistream.budget import Budget, audio_cost, image_cost, video_cost
from omnistream.config import VisionConfig, qwen35_omni_audio
from omnistream.thinker import InputError

CONTEXT = 262144  # 256k
QWEN35_VISION = VisionConfig(patch_size=16, temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=2048)


def test_400_seconds_of_720p_at_1_fps_fits_256k():
    capped = video_cost(400, 720, 1280, QWEN35_VISION, fps=1.0)  # frames resized within the video pixel cap
    native = video_cost(400, 720, 1280, QWEN35_VISION, fps=1.0, max_pixels=1280 * 736)  # full 720p patches
    assert capped == 2 + 200 * (20 * 36 + 10) == 146002  # 720x1280 -> 640x1152 under 786,432 pixels
    assert native == 2 + 200 * (22 * 40 + 10) == 178002  # 720x1280 -> 704x1280
    assert native < CONTEXT
    Budget(CONTEXT).add("400 s of 720p video", native).add("a question", 100)


def test_ten_hours_of_audio_fits_256k_at_160_ms_per_token():
    assert audio_cost(36000, qwen35_omni_audio()) == 2 + 225000 < CONTEXT


def test_over_budget_input_is_refused_with_both_numbers():
    budget = Budget(CONTEXT).add("system prompt", 500)
    cost = audio_cost(12 * 3600, qwen35_omni_audio())
    with pytest.raises(InputError, match=rf"12 h of audio costs {cost} tokens; with the 500 already in the prompt "
                                         rf"that is {cost + 500}, over the context limit of 262144 tokens"):
        budget.add("12 h of audio", cost)
    assert budget.used == 500


def test_image_cost_counts_merged_patches():
    assert image_cost(448, 448, QWEN35_VISION) == 2 + 196
