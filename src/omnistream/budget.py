"""Token budget: what an image, a video or an audio costs the Thinker, and refusing input that cannot fit."""

from __future__ import annotations

from dataclasses import dataclass, field

from .audio.encoder import num_audio_tokens
from .config import AudioConfig, VisionConfig
from .thinker import InputError
from .vision.preprocess import IMAGE_MAX_PIXELS, IMAGE_MIN_PIXELS, VIDEO_MAX_PIXELS, VIDEO_MIN_PIXELS
from .vision.preprocess import num_image_tokens, num_video_tokens
from .vision.video import DEFAULT_FPS, DEFAULT_MAX_FRAMES, sample_times

MARKERS = 2  # the start and end tokens around every item
TIMESTAMP_TOKENS = 10  # at most, for "<1234.5 seconds>" in Qwen tokenizers (digits are single tokens)


def image_cost(height: int, width: int, vision: VisionConfig, min_pixels: int = IMAGE_MIN_PIXELS,
               max_pixels: int = IMAGE_MAX_PIXELS) -> int:
    """Thinker tokens of one image of this size (placeholders and markers)."""
    return MARKERS + num_image_tokens(height, width, vision.patch_size, vision.spatial_merge_size, min_pixels,
                                      max_pixels)


def video_cost(seconds: float, height: int, width: int, vision: VisionConfig, fps: float = DEFAULT_FPS,
               max_frames: int = DEFAULT_MAX_FRAMES, timestamps: bool = True, min_pixels: int = VIDEO_MIN_PIXELS,
               max_pixels: int = VIDEO_MAX_PIXELS) -> int:
    """Thinker tokens of a video sampled at `fps`, with a timestamp before each temporal patch (Qwen3.5-Omni)."""
    times, _ = sample_times(seconds, fps, max_frames, vision.temporal_patch_size)
    patches = -(-len(times) // vision.temporal_patch_size)
    per_patch = num_video_tokens(vision.temporal_patch_size, height, width, vision.patch_size,
                                 vision.temporal_patch_size, vision.spatial_merge_size, min_pixels, max_pixels)
    return MARKERS + patches * (per_patch + (TIMESTAMP_TOKENS if timestamps else 0))


def audio_cost(seconds: float, audio: AudioConfig) -> int:
    """Thinker tokens of `seconds` of audio (100 mel frames per second)."""
    return MARKERS + int(num_audio_tokens(int(seconds * 100), audio))


@dataclass
class Budget:
    """Running token count of one prompt against the context limit; `add` refuses what would not fit."""

    limit: int
    used: int = 0
    items: list[tuple[str, int]] = field(default_factory=list)

    def add(self, name: str, tokens: int) -> "Budget":
        """Count `tokens` for `name`, or raise InputError giving the item's cost, the total and the limit."""
        if self.used + tokens > self.limit:
            raise InputError(f"{name} costs {tokens} tokens; with the {self.used} already in the prompt that is "
                             f"{self.used + tokens}, over the context limit of {self.limit} tokens")
        self.used += tokens
        self.items.append((name, tokens))
        return self
