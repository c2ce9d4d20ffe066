"""Image / video preprocessing: bit-exact parity with transformers' Qwen2-VL PIL processor, video sampling, errors."""

from __future__ import annotations

import time
import tracemalloc

import av
import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as ref_smart_resize
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
from vision_fixtures import MODES, draw_image, write_audio_only, write_frameless_video, write_video

from omnistream.vision.preprocess import (
    IMAGE_MAX_PIXELS,
    IMAGE_MIN_PIXELS,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    VisionInputError,
    image_grid_thw,
    image_size,
    load_image,
    num_image_tokens,
    num_video_tokens,
    preprocess_frames,
    preprocess_image,
    smart_resize,
    to_rgb,
)
from omnistream.vision.video import (
    load_video,
    probe_video,
    sample_times,
    temporal_patch_timestamps,
    timestamp_text,
)


def reference(min_pixels=IMAGE_MIN_PIXELS, max_pixels=IMAGE_MAX_PIXELS):
    """transformers' PIL Qwen2-VL image processor configured as Qwen3-Omni's preprocessor_config.json."""
    return Qwen2VLImageProcessorPil(patch_size=16, temporal_patch_size=2, merge_size=2, min_pixels=min_pixels,
                                    max_pixels=max_pixels, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def assert_same_as_reference(ours, ref_out):
    """Bit-exact pixel_values and equal grids."""
    pixel_values, grid = ours
    assert pixel_values.dtype == torch.float32 and grid.dtype == torch.long
    assert grid.tolist() == ref_out["image_grid_thw"].tolist()
    assert pixel_values.shape == ref_out["pixel_values"].shape
    assert np.array_equal(pixel_values.numpy(), ref_out["pixel_values"])


# ---------------------------------------------------------------------------------------------- smart_resize


def test_smart_resize_equals_reference_on_many_sizes():
    rng = np.random.default_rng(0)
    sizes = [(1, 1), (1, 200), (200, 1), (15, 15), (16, 16), (17, 3000), (31, 6200), (32, 32), (48, 48),
             (224, 224), (1080, 1920), (3584, 3584), (3585, 3585), (20000, 16000), (100000, 500)]
    sizes += [tuple(int(v) for v in np.exp(rng.uniform(0, 10, 2))) for _ in range(400)]
    limits = [(IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS), (VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS), (0, 1024), (4096, 65536)]
    checked = 0
    for height, width in sizes:
        if max(height, width) / min(height, width) > 200:
            continue
        for min_pixels, max_pixels in limits:
            for factor in (32, 28):
                assert smart_resize(height, width, factor, min_pixels, max_pixels) == ref_smart_resize(
                    height, width, factor, min_pixels, max_pixels), (height, width, factor, min_pixels, max_pixels)
                checked += 1
    assert checked > 2000


def test_smart_resize_aspect_ratio_limit_matches_reference():
    assert smart_resize(10, 2000) == ref_smart_resize(10, 2000, 32, IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS)
    for height, width in [(10, 2001), (3001, 15), (1, 100000)]:
        with pytest.raises(ValueError, match="aspect ratio"):
            ref_smart_resize(height, width, 32, IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS)
        with pytest.raises(VisionInputError, match=r"aspect ratio .* above the vision encoder's limit of 200"):
            smart_resize(height, width)


@pytest.mark.parametrize("args", [(0, 10), (10, -1), (2.5, 10), (True, 10)])
def test_smart_resize_refuses_bad_sizes(args):
    with pytest.raises(VisionInputError, match="positive integer"):
        smart_resize(*args)


def test_smart_resize_refuses_bad_limits():
    with pytest.raises(VisionInputError, match="must not exceed"):
        smart_resize(100, 100, 32, min_pixels=5000, max_pixels=4000)
    with pytest.raises(VisionInputError, match="factor"):
        smart_resize(100, 100, 0)


# ------------------------------------------------------------------------------------------- image parity


@pytest.mark.parametrize("width,height", [(123, 77), (640, 480), (1, 1), (7, 900), (900, 7), (33, 1500),
                                          (1920, 1080), (512, 512)])
def test_image_parity_sizes(width, height):
    image = draw_image(width, height, "RGB", seed=width)
    assert_same_as_reference(preprocess_image(image), reference()(image))


@pytest.mark.parametrize("width,height,max_pixels", [(1000, 700, 200_000), (700, 2300, 100_000), (64, 64, 1024)])
def test_image_parity_downscale(width, height, max_pixels):
    image = draw_image(width, height, "RGB", seed=1)
    ours = preprocess_image(image, min_pixels=1, max_pixels=max_pixels)  # the reference refuses min_pixels=0
    assert_same_as_reference(ours, reference(1, max_pixels)(image))
    assert ours[1][0, 1] * ours[1][0, 2] * 16 * 16 <= max_pixels


@pytest.mark.parametrize("mode", [m for m in MODES if m != "I;16"])
def test_image_parity_modes(mode):
    for width, height in [(123, 77), (300, 500)]:
        image = draw_image(width, height, mode, seed=3)
        assert_same_as_reference(preprocess_image(image), reference()(image))


def test_rgba_is_composited_on_white_like_the_reference():
    image = Image.new("RGBA", (64, 64), (255, 0, 0, 0))  # fully transparent red
    image.paste((0, 0, 255, 128), (0, 0, 32, 64))  # half-transparent blue on the left
    rgb = np.asarray(to_rgb(image))
    assert (rgb[:, 40] == 255).all()  # transparent → white, not red
    assert rgb[0, 0].tolist() == [127, 127, 255]
    assert_same_as_reference(preprocess_image(image), reference()(image))


def test_sixteen_bit_grey_is_scaled_not_clipped():
    image = draw_image(200, 120, "I;16")
    wide = np.asarray(image).astype(np.uint32)
    eight_bit = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
    assert_same_as_reference(preprocess_image(image), reference()(eight_bit))
    clipped = reference()(image)["pixel_values"]  # the reference's convert("RGB") saturates at 255
    assert (clipped == 1.0).mean() > 0.9
    assert (preprocess_image(image)[0] == 1.0).float().mean() < 0.1


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_array_parity(channels):
    rng = np.random.default_rng(channels)
    array = rng.integers(0, 256, (150, 230, channels), dtype=np.uint8)
    assert_same_as_reference(preprocess_image(array), reference()(array))
    if channels == 1:
        assert_same_as_reference(preprocess_image(array[..., 0]), reference()(array))


def test_files_and_bytes_match_the_decoded_image(tmp_path):
    image = draw_image(321, 123, "RGBA", seed=5)
    path = tmp_path / "picture.png"
    image.save(path)
    expected = reference()(image)
    assert_same_as_reference(preprocess_image(path), expected)
    assert_same_as_reference(preprocess_image(str(path)), expected)
    assert_same_as_reference(preprocess_image(path.read_bytes()), expected)
    assert image_size(path) == image_size(path.read_bytes()) == (123, 321)


def test_exif_orientation_is_applied(tmp_path):
    image = draw_image(200, 80, "RGB", seed=6)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    assert image_size(path) == (200, 80)
    loaded = load_image(path)
    assert loaded.size == (80, 200)
    upright = Image.open(path).transpose(Image.Transpose.ROTATE_270)
    assert_same_as_reference(preprocess_image(path), reference()(upright))


def test_patches_are_in_merge_block_order_and_duplicated_in_time():
    rng = np.random.default_rng(7)
    array = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)  # already a multiple of 32: no resize
    pixel_values, grid = preprocess_image(array)
    assert grid.tolist() == [[1, 4, 6]]
    patches = pixel_values.view(-1, 3, 2, 16, 16)
    normalized = (torch.from_numpy(array).float() / 255 - 0.5) / 0.5  # (H, W, 3)
    for j in range(patches.shape[0]):
        block, within = divmod(j, 4)
        row = block // 3 * 2 + within // 2
        col = block % 3 * 2 + within % 2
        expected = normalized[row * 16:(row + 1) * 16, col * 16:(col + 1) * 16].permute(2, 0, 1)
        assert torch.equal(patches[j, :, 0], expected)
        assert torch.equal(patches[j, :, 1], expected)


def test_token_counts_without_pixels():
    ref = reference()
    for height, width in [(77, 123), (1080, 1920), (5, 900), (4000, 3000), (20000, 16000)]:
        grid = image_grid_thw(height, width)
        assert grid[1] * grid[2] == ref.get_number_of_image_patches(height, width)
        assert num_image_tokens(height, width) == grid[1] * grid[2] // 4
    pixel_values, grid = preprocess_image(draw_image(123, 77))
    assert num_image_tokens(77, 123) == pixel_values.shape[0] // 4
    assert num_video_tokens(5, 64, 96, min_pixels=0) == 3 * 4 * 6 // 4


def test_absurd_image_is_resized_down_without_full_size_arrays():
    image = Image.new("L", (20000, 16000), 90)  # 320 M pixels
    tracemalloc.start()
    start = time.perf_counter()
    pixel_values, grid = preprocess_image(image)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t, h, w = grid[0].tolist()
    assert t == 1 and h * w * 16 * 16 <= IMAGE_MAX_PIXELS
    assert pixel_values.shape == (h * w, 1536)
    assert peak < 1.5 * pixel_values.numel() * 4  # the output and uint8 buffers, never a full-size copy
    assert seconds < 15
    assert torch.allclose(pixel_values, torch.tensor((90 / 255 - 0.5) / 0.5))


# ----------------------------------------------------------------------------------------------- video frames


def test_frames_patch_like_the_reference_video_patchify():
    rng = np.random.default_rng(8)
    frames = rng.integers(0, 256, (5, 64, 96, 3), dtype=np.uint8)  # odd count: the last frame is repeated
    pixel_values, grid = preprocess_frames(frames, min_pixels=0)
    assert grid.tolist() == [[3, 4, 6]]
    video = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5  # (T, C, H, W)
    expected, *ref_grid = Qwen3VLVideoProcessor.patchify(None, video[None], patch_size=16, merge_size=2,
                                                         temporal_patch_size=2)
    assert ref_grid == [3, 4, 6]
    assert torch.equal(pixel_values, expected[0])


def test_two_equal_frames_equal_an_image():
    image = draw_image(300, 200, "RGB", seed=9)
    frame = np.asarray(image)
    ours = preprocess_frames([frame, frame])
    assert_same_as_reference(ours, reference(VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS)(image))
    assert num_video_tokens(2, 200, 300) == ours[0].shape[0] // 4


def test_frames_refuse_mixed_sizes_and_empty():
    with pytest.raises(VisionInputError, match="one size"):
        preprocess_frames([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 32, 3), np.uint8)])
    with pytest.raises(VisionInputError, match="at least one frame"):
        preprocess_frames([])
    with pytest.raises(VisionInputError, match=r"must be \(frames, height, width, channels\)"):
        preprocess_frames(np.zeros((64, 64, 3), np.uint8))


# ----------------------------------------------------------------------------------------------- image errors


def test_image_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    good = tmp_path / "good.png"
    draw_image(300, 200).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    cases = [
        (tmp_path / "missing.png", "does not exist"),
        (tmp_path, "is not a file"),
        (tmp_path / "empty.png", "empty"),
        (tmp_path / "notes.txt", "not a readable image"),
        (truncated, "could not be decoded"),
        (b"", "empty"),
        (np.zeros((10, 10), np.float32), "uint8"),
        (np.zeros((3, 40, 50), np.uint8), "channels-first"),
        (np.zeros((0, 10, 3), np.uint8), "positive integer"),
        ([[0, 1]], "cannot read an image from a list"),
        (Image.new("RGB", (3000, 10)), "aspect ratio"),
    ]
    for source, message in cases:
        with pytest.raises(VisionInputError, match=message):
            preprocess_image(source)


def test_decompression_bomb_is_refused_with_the_limit(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    draw_image(100, 100).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(VisionInputError, match="too large to decode.*2000 pixels"):
        preprocess_image(path)
    with pytest.raises(VisionInputError, match="too large"):
        image_size(path)


def test_bad_normalisation_and_patching_arguments():
    image = draw_image(64, 64)
    with pytest.raises(VisionInputError, match="one value per RGB channel"):
        preprocess_image(image, mean=(0.5, 0.5))
    with pytest.raises(VisionInputError, match="non-zero"):
        preprocess_image(image, std=(0.5, 0.0, 0.5))
    with pytest.raises(VisionInputError, match="temporal_patch_size"):
        preprocess_image(image, temporal_patch_size=0)


# ------------------------------------------------------------------------------------------------------ video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """3 s at 30 fps, mpeg4, with an AAC audio track."""
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", seconds=3.0, fps=30, audio=True)


def all_frames(path):
    """Every frame of a video as RGB PIL images, in order."""
    with av.open(str(path)) as container:
        return [frame.to_image() for frame in container.decode(video=0)]


def test_video_samples_at_the_target_rate(clip):
    info = probe_video(clip)
    assert (info.duration, info.height, info.width, info.fps) == (3.0, 64, 96, 30.0)
    video = load_video(clip, fps=2.0)
    height, width = smart_resize(64, 96, 32, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS)
    assert video.frames.shape == (6, height, width, 3) and video.frames.dtype == np.uint8
    assert np.allclose(video.timestamps, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    assert video.fps == 2.0 and video.duration == 3.0
    source = all_frames(clip)
    for frame, t in zip(video.frames, video.timestamps):
        expected = source[round(t * 30)].resize((width, height), Image.Resampling.BICUBIC)
        assert np.array_equal(frame, np.asarray(expected))
    assert np.array_equal(load_video(clip.read_bytes(), fps=2.0).frames, video.frames)


def test_video_pads_to_whole_temporal_patches(clip):
    video = load_video(clip, fps=1.0, min_pixels=0, max_pixels=64 * 96)
    assert video.frames.shape[0] == 4
    assert np.allclose(video.timestamps, [0.0, 1.0, 2.0, 2.0])
    assert np.array_equal(video.frames[-1], video.frames[-2])
    pixel_values, grid = preprocess_frames(video.frames, min_pixels=0, max_pixels=64 * 96)
    assert grid.tolist() == [[2, 4, 6]] and pixel_values.shape == (48, 1536)
    assert num_video_tokens(4, 64, 96, min_pixels=0, max_pixels=64 * 96) == 12


def test_video_max_frames_lowers_the_rate(clip):
    video = load_video(clip, fps=10.0, max_frames=9, min_pixels=0, max_pixels=64 * 96)
    assert video.frames.shape[0] == 8  # the cap rounded down to whole temporal patches
    assert video.fps == pytest.approx(8 / 3)
    assert np.allclose(video.timestamps, np.arange(8) * 3 / 8, atol=0.5 / 30 + 1e-9)
    times, rate = sample_times(400.0, fps=2.0, max_frames=400)
    assert rate == 1.0 and len(times) == 400 and times[-1] == 399.0  # the paper's 400 s at 1 fps


def test_video_slower_than_the_target_rate_gives_each_frame_once(tmp_path):
    path = write_video(tmp_path / "slow.mp4", seconds=2.0, fps=5)
    video = load_video(path, fps=10.0, min_pixels=0, max_pixels=64 * 96)
    assert video.frames.shape[0] == 10
    assert np.allclose(video.timestamps, np.arange(10) / 5)
    assert video.fps == 5.0


def test_video_with_b_frames(tmp_path):
    path = write_video(tmp_path / "h264.mp4", seconds=2.2, fps=25, codec="libx264")
    video = load_video(path, fps=2.0, min_pixels=0, max_pixels=64 * 96)
    assert video.frames.shape[0] == 6  # 5 sampled, padded to 6
    assert np.allclose(video.timestamps, [0.0, 0.48, 1.0, 1.48, 2.0, 2.0])
    columns = [np.nonzero(frame[:, :, 0].max(axis=0) > 200)[0].mean() for frame in video.frames[:5]]
    assert np.all(np.diff(columns) > 0)  # the square keeps moving right


def test_timestamps_match_qwen3_vl(clip):
    video = load_video(clip, fps=2.0, min_pixels=0, max_pixels=64 * 96)
    indices = [round(t * 30) for t in video.timestamps]
    expected = Qwen3VLProcessor._calculate_timestamps(None, indices, 30.0, 2)
    assert np.allclose(temporal_patch_timestamps(video), expected)
    assert [timestamp_text(t) for t in expected] == [f"<{t:.1f} seconds>" for t in expected]
    assert timestamp_text(3.5) == "<3.5 seconds>" and timestamp_text(0.25) == "<0.2 seconds>"


def test_video_argument_errors(clip):
    for fps in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(VisionInputError, match="fps must be a positive"):
            load_video(clip, fps=fps)
    with pytest.raises(VisionInputError, match="max_frames"):
        load_video(clip, max_frames=1)
    with pytest.raises(VisionInputError, match=r"lasts 3.00 s, above the max_seconds=2 s limit"):
        load_video(clip, max_seconds=2)


def test_video_file_errors(tmp_path, clip):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x11garbage" * 200)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    (tmp_path / "notes.txt").write_text("hello " * 100)
    (tmp_path / "notes.dat").write_text("hello " * 100)
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases = [
        (garbage, "could not be opened as a video"),
        (truncated, "could not be opened as a video|corrupt|no decodable frames"),
        (tmp_path / "notes.txt", "is a text file, not a video"),
        (tmp_path / "notes.dat", "could not be opened as a video"),
        (write_frameless_video(tmp_path / "frameless.avi"), "no decodable frames"),
        (write_audio_only(tmp_path / "tone.wav"), "no video stream"),
        (tmp_path / "missing.mp4", "does not exist"),
        (tmp_path / "empty.mp4", "empty"),
        (b"", "empty"),
        (12, "cannot read a video from a int"),
    ]
    for source, message in cases:
        with pytest.raises(VisionInputError, match=message):
            load_video(source)
