"""Images and video frames → normalised patches for the vision encoder, as Qwen3-Omni's processor makes them.

The steps are those of transformers' PIL Qwen2-VL image processor configured for Qwen3-Omni (patch 16,
temporal patch 2, merge 2, mean = std = 0.5), and give the same floats bit for bit: convert to RGB,
`smart_resize` to multiples of patch * merge within [min_pixels, max_pixels], bicubic resize with PIL,
x / 255, (x - mean) / std, then flatten patches in merge-block order (each run of merge**2 rows is one
merge block, row-major over blocks); an image is one frame repeated to fill the temporal patch, a video
repeats its last frame to fill the last one.

Work is done on uint8 pixels until the final patches: an image is resized before anything is converted
to float, so an absurdly large input costs its own bytes and a patch array bounded by `max_pixels`.
Where the reference and this module differ:
- 16-bit greyscale ("I;16*") is scaled to 8 bits (v * 255 / 65535); the reference's `convert("RGB")`
  clips at 255, which turns a real 16-bit picture white.
- Image files get their EXIF orientation applied (as `transformers.image_utils.load_image` does), but
  transparency is then composited on white like any other image, where `load_image` drops the alpha.
- Video frames are resized with PIL bicubic; the reference video processor resizes with torchvision's
  antialiased bicubic, which agrees with PIL to about one grey level.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..files import check_input_file

PATCH_SIZE = 16
TEMPORAL_PATCH_SIZE = 2
MERGE_SIZE = 2
IMAGE_MIN_PIXELS = 56 * 56  # Qwen3-Omni preprocessor_config.json: min_pixels
IMAGE_MAX_PIXELS = 28 * 28 * 16384  # and max_pixels (12,845,056: about 3584 x 3584)
VIDEO_MIN_PIXELS = 128 * 32 * 32  # per frame, Qwen3-Omni processor videos_kwargs size.shortest_edge
VIDEO_MAX_PIXELS = 768 * 32 * 32  # per frame, size.longest_edge (768 merged tokens a frame)
MAX_ASPECT_RATIO = 200
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_COMPOSITE_ROWS = 256  # rows blended at a time when compositing an RGBA array onto white


class VisionInputError(ValueError):
    """An image or video a user gave that cannot be used: unreadable, wrong type, degenerate or too large."""


def smart_resize(height: int, width: int, factor: int = PATCH_SIZE * MERGE_SIZE,
                 min_pixels: int = IMAGE_MIN_PIXELS, max_pixels: int = IMAGE_MAX_PIXELS) -> tuple[int, int]:
    """The (height, width) closest in aspect to the input, multiples of `factor`, within [min_pixels, max_pixels]."""
    _check_size(height, width)
    _check_limits(factor, min_pixels, max_pixels)
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise VisionInputError(
            f"image of {height}x{width} (height x width) has aspect ratio {ratio:.1f}, "
            f"above the vision encoder's limit of {MAX_ASPECT_RATIO}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def image_grid_thw(height: int, width: int, patch_size: int = PATCH_SIZE, merge_size: int = MERGE_SIZE,
                   min_pixels: int = IMAGE_MIN_PIXELS, max_pixels: int = IMAGE_MAX_PIXELS) -> tuple[int, int, int]:
    """The (t, h, w) patch grid an image of this size becomes."""
    h, w = smart_resize(height, width, patch_size * merge_size, min_pixels, max_pixels)
    return 1, h // patch_size, w // patch_size


def num_image_tokens(height: int, width: int, patch_size: int = PATCH_SIZE, merge_size: int = MERGE_SIZE,
                     min_pixels: int = IMAGE_MIN_PIXELS, max_pixels: int = IMAGE_MAX_PIXELS) -> int:
    """Vision tokens (merged patches) an image of this size costs, computed without touching pixels."""
    t, h, w = image_grid_thw(height, width, patch_size, merge_size, min_pixels, max_pixels)
    return t * h * w // merge_size**2


def num_video_tokens(num_frames: int, height: int, width: int, patch_size: int = PATCH_SIZE,
                     temporal_patch_size: int = TEMPORAL_PATCH_SIZE, merge_size: int = MERGE_SIZE,
                     min_pixels: int = VIDEO_MIN_PIXELS, max_pixels: int = VIDEO_MAX_PIXELS) -> int:
    """Vision tokens a video of `num_frames` sampled frames of this size costs, computed without touching pixels."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise VisionInputError(f"num_frames must be a positive integer, got {num_frames!r}")
    _, h, w = image_grid_thw(height, width, patch_size, merge_size, min_pixels, max_pixels)
    return -(-num_frames // temporal_patch_size) * h * w // merge_size**2


def image_size(image) -> tuple[int, int]:
    """(height, width) of an image (PIL, HWC array, path or bytes) as it will be seen, reading only a file's header."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    if isinstance(image, np.ndarray):
        return _check_array(image).shape[:2]
    with _open(image) as img:  # lazy: header only
        width, height = img.size
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientations that turn the picture a quarter
            width, height = height, width
    return height, width


def load_image(source) -> Image.Image:
    """Decode an image file (path or bytes), turned upright by its EXIF orientation."""
    img = _open(source)
    name = _name(source)
    try:
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
    except (OSError, SyntaxError, ValueError) as err:  # PIL's truncated / corrupt data errors
        raise VisionInputError(f"{name} could not be decoded: {err}") from err
    return img


def to_rgb(image: Image.Image) -> Image.Image:
    """The image in mode RGB, transparency composited onto white (as the reference processor does)."""
    image = _eight_bit(image)
    if image.mode == "RGB" and not _has_alpha(image):
        return image
    if _has_alpha(image):  # alpha band, or a palette / grey transparency entry
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess_image(image, patch_size: int = PATCH_SIZE, temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
                     merge_size: int = MERGE_SIZE, min_pixels: int = IMAGE_MIN_PIXELS,
                     max_pixels: int = IMAGE_MAX_PIXELS, mean: Sequence[float] = IMAGE_MEAN,
                     std: Sequence[float] = IMAGE_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches (N, 3*tp*p*p) float32 and grid_thw (1, 3) long of one image (PIL, path, bytes or HWC uint8 array)."""
    _check_patching(patch_size, temporal_patch_size, merge_size)
    mean, std = _check_stats(mean, std)
    pil = image if isinstance(image, Image.Image) else _as_pil(image)
    height, width = smart_resize(pil.height, pil.width, patch_size * merge_size, min_pixels, max_pixels)
    frame = np.asarray(_rgb_at_size(pil, height, width, _name(image)))  # (H, W, 3) uint8
    return _patchify(frame[None], patch_size, temporal_patch_size, merge_size, mean, std)


def preprocess_frames(frames, patch_size: int = PATCH_SIZE, temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
                      merge_size: int = MERGE_SIZE, min_pixels: int = VIDEO_MIN_PIXELS,
                      max_pixels: int = VIDEO_MAX_PIXELS, mean: Sequence[float] = IMAGE_MEAN,
                      std: Sequence[float] = IMAGE_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches (N, 3*tp*p*p) float32 and grid_thw (1, 3) long of video frames: (T, H, W, 3) or a list of HWC uint8."""
    _check_patching(patch_size, temporal_patch_size, merge_size)
    mean, std = _check_stats(mean, std)
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise VisionInputError(f"a video array must be (frames, height, width, channels), got shape {frames.shape}")
    if len(frames) == 0:
        raise VisionInputError("a video needs at least one frame, got none")
    sizes = {tuple(_check_array(f, f"video frame {i}").shape[:2]) for i, f in enumerate(frames)}
    if len(sizes) > 1:
        raise VisionInputError(f"video frames must all have one size, got (height, width) sizes {sorted(sizes)}")
    (height, width), = sizes
    size = smart_resize(height, width, patch_size * merge_size, min_pixels, max_pixels)
    if not (isinstance(frames, np.ndarray) and frames.shape[1:] == (*size, 3)):  # else already RGB at size
        frames = np.stack([_frame_at_size(f, *size) for f in frames])  # (T, H', W', 3) uint8
    return _patchify(frames, patch_size, temporal_patch_size, merge_size, mean, std)


def _patchify(frames: np.ndarray, patch_size: int, temporal_patch_size: int, merge_size: int,
              mean: np.ndarray, std: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised patches in merge-block order of uint8 frames (T, H, W, 3), H and W multiples of patch * merge."""
    p, tp, m = patch_size, temporal_patch_size, merge_size
    t, height, width, channels = frames.shape
    gt, gh, gw = -(-t // tp), height // p, width // p
    out = np.empty((gt, gh // m, gw // m, m, m, channels, tp, p, p), dtype=np.float32)
    for i in range(gt * tp):  # past the last frame, repeat it to fill the last temporal patch
        x = frames[min(i, t - 1)].reshape(gh // m, m, p, gw // m, m, p, channels)
        x = x.transpose(0, 3, 1, 4, 6, 2, 5)  # (gh/m, gw/m, m, m, C, p, p)
        np.divide(x, np.float32(255), out=out[i // tp, ..., i % tp, :, :], dtype=np.float32)  # == float64 x/255 cast
    out -= mean[:, None, None, None]
    out /= std[:, None, None, None]
    pixel_values = torch.from_numpy(out.reshape(gt * gh * gw, channels * tp * p * p))  # (N, 3*tp*p*p)
    return pixel_values, torch.tensor([[gt, gh, gw]], dtype=torch.long)


def _rgb_at_size(image: Image.Image, height: int, width: int, name: str) -> Image.Image:
    """The image in RGB, bicubic-resized to (height, width) while still 8-bit."""
    try:
        image = _eight_bit(image)
        if image.mode == "L" and not _has_alpha(image):  # resize one grey band, then copy it: same pixels
            return image.resize((width, height), Image.Resampling.BICUBIC).convert("RGB")
        return to_rgb(image).resize((width, height), Image.Resampling.BICUBIC)
    except (OSError, SyntaxError) as err:  # a lazily opened image whose data turns out corrupt
        raise VisionInputError(f"{name} could not be decoded: {err}") from err


def _frame_at_size(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """An HW / HWC uint8 frame as RGB at (height, width); an RGB frame already that size is returned as is."""
    if frame.shape == (height, width, 3):
        return frame
    return np.asarray(_rgb_at_size(_array_to_pil(frame), height, width, "video frame"))


def _as_pil(image) -> Image.Image:
    """A PIL image from a path, bytes or HWC uint8 array."""
    if isinstance(image, np.ndarray):
        return _array_to_pil(_check_array(image))
    if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):
        return load_image(image)
    raise VisionInputError(
        f"cannot read an image from a {type(image).__name__}; give a PIL image, a path, bytes "
        "or a (height, width, channels) uint8 numpy array"
    )


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """PIL image of an HW / HWC uint8 array; 4 channels are composited on white as the reference does for arrays."""
    if array.ndim == 2 or array.shape[2] == 1:
        return Image.fromarray(array.reshape(array.shape[:2]))
    if array.shape[2] == 3:
        return Image.fromarray(array)
    rgb = np.empty(array.shape[:2] + (3,), dtype=np.uint8)
    for start in range(0, array.shape[0], _COMPOSITE_ROWS):  # in row blocks: float64 temporaries stay small
        block = array[start:start + _COMPOSITE_ROWS]
        alpha = block[..., 3:4] / 255
        rgb[start:start + _COMPOSITE_ROWS] = np.round(alpha * block[..., :3] + (1 - alpha) * 255)
    return Image.fromarray(rgb)


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale scaled to 8-bit "L"; every other mode unchanged."""
    if image.mode not in _SIXTEEN_BIT_MODES:
        return image
    wide = np.asarray(image).astype(np.uint32)  # (H, W)
    return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))


def _has_alpha(image: Image.Image) -> bool:
    """Whether the image carries transparency (an alpha band or a transparency entry)."""
    return "A" in image.getbands() or image.info.get("transparency") is not None


def _open(source) -> Image.Image:
    """Open an image path or bytes lazily (header read, pixels not yet decoded)."""
    name = _name(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise VisionInputError(f"{name} are empty")
        file = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        check_input_file(source, name, VisionInputError)
        file = source
    else:
        raise VisionInputError(f"cannot open an image from a {type(source).__name__}; give a path or bytes")
    try:
        return Image.open(file)
    except Image.DecompressionBombError as err:
        raise VisionInputError(
            f"{name} is too large to decode ({err}); the limit is 2 * PIL.Image.MAX_IMAGE_PIXELS "
            f"= {2 * Image.MAX_IMAGE_PIXELS} pixels"
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise VisionInputError(f"{name} is not a readable image: {err}") from err


def _name(source) -> str:
    """How an image input is named in error messages."""
    if isinstance(source, (str, os.PathLike)):
        return f"image file '{os.fspath(source)}'"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"image bytes ({len(source)} bytes)"
    if isinstance(source, np.ndarray):
        return f"image array of shape {source.shape}"
    if isinstance(source, Image.Image):
        return f"PIL image of mode {source.mode} and size {source.width}x{source.height} (width x height)"
    return f"image of type {type(source).__name__}"


def _check_array(array, name: str = "image array") -> np.ndarray:
    """Check an image array is (H, W) or (H, W, C) uint8 with C in 1, 3, 4."""
    if not isinstance(array, np.ndarray):
        raise VisionInputError(f"{name} must be a numpy array, got a {type(array).__name__}")
    if array.dtype != np.uint8:
        raise VisionInputError(f"{name} must be uint8 (0..255), got dtype {array.dtype}")
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        hint = "; it looks channels-first, transpose it to (H, W, C)" if array.ndim == 3 and array.shape[0] in (
            1, 3, 4) else ""
        raise VisionInputError(
            f"{name} must be (height, width) or (height, width, channels) with 1, 3 or 4 channels, "
            f"got shape {array.shape}{hint}"
        )
    _check_size(array.shape[0], array.shape[1])
    return array


def _check_size(height, width) -> None:
    """Refuse non-integer or empty image sizes."""
    for label, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise VisionInputError(f"image {label} must be a positive integer number of pixels, got {value!r}")


def _check_limits(factor, min_pixels, max_pixels) -> None:
    """Refuse resize limits that cannot be met."""
    for label, value, low in (("factor", factor, 1), ("min_pixels", min_pixels, 0), ("max_pixels", max_pixels, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise VisionInputError(f"{label} must be an integer >= {low}, got {value!r}")
    if min_pixels > max_pixels:
        raise VisionInputError(f"min_pixels ({min_pixels}) must not exceed max_pixels ({max_pixels})")


def _check_patching(patch_size, temporal_patch_size, merge_size) -> None:
    """Refuse patch, temporal patch or merge sizes that are not positive integers."""
    for label, value in (("patch_size", patch_size), ("temporal_patch_size", temporal_patch_size),
                         ("merge_size", merge_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise VisionInputError(f"{label} must be a positive integer, got {value!r}")


def _check_stats(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std as float32 arrays of 3, std non-zero."""
    mean = np.asarray(mean, dtype=np.float32).reshape(-1)
    std = np.asarray(std, dtype=np.float32).reshape(-1)
    if mean.shape != (3,) or std.shape != (3,):
        raise VisionInputError(f"mean and std need one value per RGB channel (3), got {mean.size} and {std.size}")
    if not np.all(std != 0) or not np.all(np.isfinite(mean)) or not np.all(np.isfinite(std)):
        raise VisionInputError(f"mean must be finite and std finite and non-zero, got mean {mean} and std {std}")
    return mean, std
