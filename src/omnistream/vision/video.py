"""Video input: decode with PyAV, sample frames uniformly in time, one timestamp per temporal patch.

Frames are sampled every 1/fps seconds from the stream's start; when that would exceed `max_frames`
the rate is lowered so that `max_frames` frames span the whole video (a dynamic rate: 400 s at 2 fps
with max_frames=400 is sampled at 1 fps). Each target time takes the first frame shown at most half a
source frame before it, and no frame is taken twice, so a source slower than `fps` gives each of its
frames once. The count is padded to a multiple of the temporal patch size by repeating the last frame
(and its time), as the reference processors pad. Sampled frames are resized at once (smart resize with
the video pixel limits) so memory is bounded by max_frames * max_pixels * 3 bytes, whatever the source
resolution.

Timestamps follow Qwen3-VL's processor (which Qwen3.5 uses): one per temporal patch, the mean of the
times of its first and last frame, written "<3.5 seconds>". The reference derives frame times from
frame index / average fps; here they are the frames' own presentation times, equal for constant-rate
video.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from ..files import check_input_file
from .preprocess import (
    MERGE_SIZE,
    PATCH_SIZE,
    TEMPORAL_PATCH_SIZE,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    VisionInputError,
    smart_resize,
)

DEFAULT_FPS = 2.0
DEFAULT_MAX_FRAMES = 768  # the reference video processors' max_frames
_TEXT_FORMATS = {"tty"}  # FFmpeg demuxers that turn any text file into a "video"


@dataclass(frozen=True)
class Video:
    """Sampled RGB frames of a video and when each was shown."""

    frames: np.ndarray  # (T, H, W, 3) uint8, T a multiple of the temporal patch size
    timestamps: np.ndarray  # (T,) float64 seconds from the start of the video stream
    fps: float  # frames per second sampled (after the max_frames cap and the source's own rate)
    duration: float  # seconds of the whole video stream


@dataclass(frozen=True)
class VideoInfo:
    """What a video's headers say, read without decoding a frame."""

    duration: float  # seconds
    height: int
    width: int
    fps: float | None  # the stream's average frame rate, when known


def probe_video(source) -> VideoInfo:
    """Duration, size and frame rate of a video file or bytes, from its headers."""
    name, opener = _source(source)
    with _open(opener, name) as container:
        stream = _video_stream(container, name)
        duration = _duration(container, stream, opener, name)
        return VideoInfo(duration, stream.codec_context.height, stream.codec_context.width, _rate(stream))


def sample_times(duration: float, fps: float = DEFAULT_FPS, max_frames: int = DEFAULT_MAX_FRAMES,
                 temporal_patch_size: int = TEMPORAL_PATCH_SIZE) -> tuple[np.ndarray, float]:
    """Target times in seconds (every 1/rate from 0) and the rate, lowered so there are at most `max_frames`."""
    _check_sampling(fps, max_frames, temporal_patch_size)
    cap = max_frames - max_frames % temporal_patch_size  # padding to a whole temporal patch stays within the cap
    count = max(1, math.ceil(duration * fps - 1e-9))
    if count > cap:
        fps, count = cap / duration, cap
    return np.arange(count) / fps, fps


def load_video(source, fps: float = DEFAULT_FPS, max_frames: int = DEFAULT_MAX_FRAMES, max_seconds=None,
               min_pixels: int = VIDEO_MIN_PIXELS, max_pixels: int = VIDEO_MAX_PIXELS,
               temporal_patch_size: int = TEMPORAL_PATCH_SIZE, patch_size: int = PATCH_SIZE,
               merge_size: int = MERGE_SIZE) -> Video:
    """Decode a video (path or bytes), sample it at `fps` (at most `max_frames`) and resize its frames."""
    _check_sampling(fps, max_frames, temporal_patch_size)
    if max_seconds is not None and not max_seconds > 0:
        raise VisionInputError(f"max_seconds must be positive when given, got {max_seconds!r}")
    name, opener = _source(source)
    with _open(opener, name) as container:
        stream = _video_stream(container, name)
        duration = _duration(container, stream, opener, name)
        if max_seconds is not None and duration > max_seconds:
            raise VisionInputError(f"{name} lasts {duration:.2f} s, above the max_seconds={max_seconds} s limit")
        targets, rate = sample_times(duration, fps, max_frames, temporal_patch_size)
        source_rate = _rate(stream)
        frames, times = _decode_at(container, stream, targets, source_rate, name, temporal_patch_size,
                                   (patch_size * merge_size, min_pixels, max_pixels))
    if source_rate is not None:
        rate = min(rate, source_rate)
    return Video(frames, times, float(rate), float(duration))


def temporal_patch_timestamps(video: Video, temporal_patch_size: int = TEMPORAL_PATCH_SIZE) -> np.ndarray:
    """One time in seconds per temporal patch: the mean of its first and last frame's times (Qwen3-VL)."""
    times = np.asarray(video.timestamps, dtype=np.float64)
    if pad := -len(times) % temporal_patch_size:
        times = np.concatenate([times, np.repeat(times[-1:], pad)])
    groups = times.reshape(-1, temporal_patch_size)  # (T/tp, tp)
    return (groups[:, 0] + groups[:, -1]) / 2


def timestamp_text(seconds: float) -> str:
    """The text placed before a temporal patch's tokens, e.g. "<3.5 seconds>" (Qwen3-VL's format)."""
    return f"<{seconds:.1f} seconds>"


def _decode_at(container, stream, targets: np.ndarray, source_rate, name: str, temporal_patch_size: int,
               resize: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 and times (T,) at the targets, padded with the last to whole temporal patches."""
    tolerance = 0.5 / source_rate if source_rate else 0.0
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else None
    capacity = len(targets) + -len(targets) % temporal_patch_size
    frames, times, count, k, index = None, np.zeros(capacity), 0, 0, 0
    stream.thread_type = "AUTO"
    try:
        for frame in container.decode(stream):
            if frame.time is not None:
                start = frame.time if start is None else start
                t = frame.time - start
            else:  # no timestamp: count frames at the average rate
                t = index / source_rate if source_rate else float(index)
            index += 1
            if t + tolerance < targets[k]:  # take the first frame shown from half a frame before the target
                continue
            if frames is None:  # sized by the first frame taken: never more than max_frames * max_pixels * 3 bytes
                height, width = smart_resize(frame.height, frame.width, *resize)
                frames = np.empty((capacity, height, width, 3), dtype=np.uint8)
            image = frame.to_image()  # PIL RGB at the source size
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BICUBIC)
            frames[count], times[count] = np.asarray(image), max(t, 0.0)
            count += 1
            while k < len(targets) and targets[k] <= t + tolerance:
                k += 1
            if k == len(targets):
                break
    except av.FFmpegError as err:
        raise VisionInputError(f"{name} is corrupt: decoding failed after {index} frames ({err})") from err
    if frames is None:
        raise VisionInputError(f"{name} has a video stream but no decodable frames")
    padded = count + -count % temporal_patch_size
    frames[count:padded], times[count:padded] = frames[count - 1], times[count - 1]
    if padded < capacity:  # a source slower than the sampling rate: give back the unused frames
        return frames[:padded].copy(), times[:padded].copy()
    return frames, times


def _duration(container, stream, opener, name: str) -> float:
    """Seconds of the video stream from the headers, else by reading every packet's time (no decoding)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    rate = _rate(stream)
    if stream.frames and rate:
        return stream.frames / rate
    end = 0.0
    with _open(opener, name) as scan:
        scan_stream = _video_stream(scan, name)
        try:
            for packet in scan.demux(scan_stream):
                if packet.pts is not None and packet.time_base:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
        except av.FFmpegError as err:
            raise VisionInputError(f"{name} is corrupt: reading its packets failed ({err})") from err
    return end


def _rate(stream) -> float | None:
    """The stream's average (else guessed) frame rate in frames per second, None when unknown."""
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if isinstance(rate, Fraction) and rate > 0 else None


def _video_stream(container, name: str):
    """The first video stream that is not a still (cover art) picture."""
    if container.format.name in _TEXT_FORMATS:
        raise VisionInputError(f"{name} is a text file, not a video (FFmpeg would render it as ANSI art)")
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise VisionInputError(f"{name} has no video stream")


def _source(source):
    """An error-message name and a function opening a fresh file object (or path) for `source`."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise VisionInputError("video bytes are empty")
        return f"video bytes ({len(source)} bytes)", lambda: io.BytesIO(source)
    if isinstance(source, (str, os.PathLike)):
        name = f"video file '{os.fspath(source)}'"
        check_input_file(source, name, VisionInputError)
        return name, lambda: os.fspath(source)
    raise VisionInputError(f"cannot read a video from a {type(source).__name__}; give a path or bytes")


def _open(opener, name: str):
    """Open a container for reading, as a clear error when FFmpeg cannot."""
    try:
        return av.open(opener(), mode="r")
    except av.FFmpegError as err:
        raise VisionInputError(f"{name} could not be opened as a video ({err})") from err


def _check_sampling(fps, max_frames, temporal_patch_size) -> None:
    """Refuse a non-positive rate or a frame cap below one temporal patch."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise VisionInputError(f"fps must be a positive number of frames per second, got {fps!r}")
    if isinstance(temporal_patch_size, bool) or not isinstance(temporal_patch_size, int) or temporal_patch_size < 1:
        raise VisionInputError(f"temporal_patch_size must be a positive integer, got {temporal_patch_size!r}")
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < temporal_patch_size:
        raise VisionInputError(
            f"max_frames must be an integer of at least temporal_patch_size ({temporal_patch_size}), got {max_frames!r}"
        )
