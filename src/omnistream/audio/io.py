"""Audio input: whatever a user gives (file, bytes, array, tensor) → mono float32 at the encoder's rate.

Files and bytes are decoded with soundfile (libsndfile: wav, flac, ogg vorbis/opus, mp3 where the build
has it) and, when libsndfile cannot read them, with PyAV (FFmpeg: mp3, aac, the audio track of
mp4/mkv/webm and the rest). A file carries its own sample rate, so `sample_rate` is only for arrays;
passing it with a file or bytes is an error rather than a silent override. Arrays are (N,), (N, C) or
(C, N): the smaller dimension is taken as channels (C ≤ 8; a square array reads as (N, C)), and
channels are averaged to mono.
"""

import io
import os
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import soxr
import torch

from .features import AudioError
from ..files import check_input_file

MIN_SAMPLE_RATE = 8000
MAX_CHANNELS = 8

# (dtype kind, itemsize) → (offset, scale) taking the samples to float in [-1, 1)
_PCM_SCALES = {
    ("i", 2): (0.0, 1.0 / 32768),
    ("i", 4): (0.0, 1.0 / 2**31),
    ("u", 1): (128.0, 1.0 / 128),
    ("f", 4): (0.0, 1.0),
    ("f", 8): (0.0, 1.0),
}
_TORCH_DTYPES = {torch.int16, torch.int32, torch.uint8, torch.float32, torch.float64}


class AudioInputError(AudioError):
    """Audio a user gave that cannot be used: unreadable, empty, non-finite, wrong rate, too long."""


def load_audio(source, sample_rate=None, target_rate=16000, max_seconds=None) -> np.ndarray:
    """Return `source` (path, bytes, array or tensor) as mono float32 samples at `target_rate` Hz."""
    if isinstance(target_rate, bool) or not isinstance(target_rate, int) or target_rate <= 0:
        raise AudioInputError(f"target_rate must be a positive integer number of Hz, got {target_rate!r}")
    if max_seconds is not None and not max_seconds > 0:
        raise AudioInputError(f"max_seconds must be positive when given, got {max_seconds!r}")
    if isinstance(source, (str, os.PathLike)):
        name = f"audio file '{source}'"
        _reject_rate(sample_rate, name)
        frames, rate = _read_path(Path(source), name, max_seconds)  # (N, C)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        name = f"audio bytes ({len(source)} bytes)"
        _reject_rate(sample_rate, name)
        if len(source) == 0:
            raise AudioInputError(f"{name} are empty")
        frames, rate = _decode(lambda: io.BytesIO(source), name, max_seconds)  # (N, C)
    elif isinstance(source, (np.ndarray, torch.Tensor)):
        kind = "tensor" if isinstance(source, torch.Tensor) else "array"
        name = f"audio {kind} of shape {tuple(source.shape)} and dtype {source.dtype}"
        frames = _array_frames(source, name)  # (N, C)
        rate = _check_rate(sample_rate, name)
    else:
        raise AudioInputError(
            f"cannot load audio from a {type(source).__name__}; give a path, bytes, a numpy array or a torch tensor"
        )
    return _to_mono_at_rate(frames, rate, name, target_rate, max_seconds)


def pcm16_bytes_to_float(data: bytes) -> np.ndarray:
    """Return raw little-endian int16 PCM bytes as float32 samples in [-1, 1)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise AudioInputError(f"PCM16 packet must be bytes, got a {type(data).__name__}")
    if len(data) % 2:
        raise AudioInputError(f"PCM16 packet has an odd byte count ({len(data)}); int16 samples are 2 bytes each")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32768)


def _reject_rate(sample_rate, name: str) -> None:
    """Refuse a `sample_rate` for encoded input, whose own header says the rate."""
    if sample_rate is not None:
        raise AudioInputError(
            f"sample_rate={sample_rate!r} was given for {name}, but encoded audio carries its own rate; "
            "pass sample_rate only with arrays or tensors"
        )


def _check_rate(sample_rate, name: str) -> float:
    """Validate the `sample_rate` a user gave for an array."""
    if sample_rate is None:
        raise AudioInputError(f"{name} needs sample_rate= (raw samples carry no rate)")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.integer, np.floating)):
        raise AudioInputError(f"sample_rate of {name} must be a number of Hz, got {sample_rate!r}")
    if not np.isfinite(sample_rate) or sample_rate <= 0:
        raise AudioInputError(f"sample_rate of {name} must be positive, got {sample_rate!r}")
    return sample_rate


def _array_frames(source, name: str) -> np.ndarray:
    """Return an array or tensor as float frames (N, C), scaled from its PCM dtype."""
    if isinstance(source, torch.Tensor):
        if source.dtype not in _TORCH_DTYPES:
            raise AudioInputError(f"{name}: unsupported dtype; use int16, int32, uint8, float32 or float64")
        source = source.detach().cpu().numpy()
    scale = _PCM_SCALES.get((source.dtype.kind, source.dtype.itemsize))
    if scale is None:
        raise AudioInputError(f"{name}: unsupported dtype; use int16, int32, uint8, float32 or float64")
    if source.ndim not in (1, 2):
        raise AudioInputError(f"{name}: expected shape (N,), (N, C) or (C, N), got {source.ndim} dimensions")
    if source.size == 0:
        raise AudioInputError(f"{name} is empty")
    frames = source.reshape(-1, 1) if source.ndim == 1 else source  # (N, C) or (C, N)
    if frames.shape[0] < frames.shape[1]:  # the smaller dimension is channels
        frames = frames.T  # (N, C)
    if frames.shape[1] > MAX_CHANNELS:
        raise AudioInputError(
            f"{name}: the smaller dimension ({frames.shape[1]}) is taken as channels and exceeds {MAX_CHANNELS}"
        )
    offset, factor = scale
    if offset == 0.0 and factor == 1.0:
        return frames
    return (frames.astype(np.float64) - offset) * factor  # (N, C)


def _read_path(path: Path, name: str, max_seconds) -> tuple[np.ndarray, int]:
    """Decode an audio or video file to float frames (N, C) and its sample rate."""
    check_input_file(path, name, AudioInputError)
    return _decode(lambda: str(path), name, max_seconds)


def _decode(open_source, name: str, max_seconds) -> tuple[np.ndarray, int]:
    """Decode with soundfile, falling back to PyAV for what libsndfile cannot read."""
    try:
        return _decode_soundfile(open_source(), name, max_seconds)
    except RuntimeError as sf_error:  # soundfile's LibsndfileError; older releases raise plain RuntimeError
        soundfile_reason = str(sf_error)
    try:
        with av.open(open_source()) as container:
            return _decode_av(container, name, max_seconds)
    except av.FFmpegError as av_error:
        raise AudioInputError(
            f"{name} could not be decoded (soundfile: {soundfile_reason}; PyAV/FFmpeg: {av_error})"
        ) from av_error


def _decode_soundfile(file, name: str, max_seconds) -> tuple[np.ndarray, int]:
    """Read all frames (N, C) with libsndfile, refusing an over-long file before reading it."""
    with sf.SoundFile(file) as f:
        if max_seconds is not None and f.frames > 0 and f.frames / f.samplerate > max_seconds:
            _raise_too_long(name, f.frames / f.samplerate, max_seconds)
        return f.read(dtype="float32", always_2d=True), f.samplerate  # (N, C)


def _decode_av(container, name: str, max_seconds) -> tuple[np.ndarray, int]:
    """Decode the first audio stream to float frames (N, C), stopping once past `max_seconds`."""
    if not container.streams.audio:
        raise AudioInputError(f"{name} has no audio stream (a video-only or non-audio container)")
    stream = container.streams.audio[0]
    to_planar_float = av.AudioResampler(format="fltp")  # keeps the first frame's layout and rate
    chunks, count, rate = [], 0, None
    for frame in container.decode(stream):
        for out in to_planar_float.resample(frame):
            chunks.append(out.to_ndarray())  # (C, n)
            count, rate = count + out.samples, out.sample_rate
        if max_seconds is not None and rate and count / rate > max_seconds:
            _raise_too_long(name, count / rate, max_seconds, stopped=True)
    for out in to_planar_float.resample(None):
        chunks.append(out.to_ndarray())  # (C, n)
        rate = out.sample_rate
    if not chunks:
        raise AudioInputError(f"{name} has an audio stream but it decodes to no samples (empty)")
    return np.concatenate(chunks, axis=1).T, rate  # (N, C)


def _raise_too_long(name: str, seconds: float, max_seconds, stopped: bool = False) -> None:
    """Raise the over-`max_seconds` error with both durations."""
    lasts = f"lasts more than {seconds:.2f} s (decoding stopped there)" if stopped else f"lasts {seconds:.2f} s"
    raise AudioInputError(f"{name} {lasts}, above the max_seconds={max_seconds} s limit")


def _to_mono_at_rate(frames: np.ndarray, rate, name: str, target_rate: int, max_seconds) -> np.ndarray:
    """Check frames (N, C) at `rate`, average channels and resample to `target_rate`."""
    if rate < MIN_SAMPLE_RATE:
        raise AudioInputError(f"sample rate {rate:g} Hz of {name} is below the {MIN_SAMPLE_RATE} Hz minimum")
    if frames.shape[0] == 0:
        raise AudioInputError(f"{name} is empty (0 samples)")
    bad = int(np.count_nonzero(~np.isfinite(frames)))
    if bad:
        raise AudioInputError(f"{name} has {bad} non-finite samples (NaN or inf) out of {frames.size}")
    seconds = frames.shape[0] / rate
    if max_seconds is not None and seconds > max_seconds:
        _raise_too_long(name, seconds, max_seconds)
    mono = np.ascontiguousarray(frames.mean(axis=1), dtype=np.float32)  # (N,)
    if rate == target_rate:
        return mono
    return soxr.resample(mono, rate, target_rate, quality="HQ").astype(np.float32, copy=False)  # (N',)
