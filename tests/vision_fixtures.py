"""Test pictures drawn with PIL (shapes on a gradient, in any mode) and short videos written with PyAV."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

MODES = ("RGB", "RGB+transparency", "RGBA", "L", "L+transparency", "LA", "P", "P+transparency", "PA", "CMYK", "1",
         "I;16", "I", "F")


def draw_image(width: int, height: int, mode: str = "RGB", seed: int = 0, shapes: int = 3) -> Image.Image:
    """A `mode` picture: 1-3 coloured shapes over a colour gradient; alpha modes get a varying alpha."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    gradient = np.stack([xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1),
                         (xs + ys) * 255 // max(width + height - 2, 1)], axis=-1)
    rgb = Image.fromarray(gradient.astype(np.uint8))
    draw = ImageDraw.Draw(rgb)
    for _ in range(max(1, min(shapes, 3))):
        x0, x1 = sorted(rng.integers(0, width, 2))
        y0, y1 = sorted(rng.integers(0, height, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=colour)
    alpha = Image.fromarray(((xs * 7 + ys * 3) % 256).astype(np.uint8))
    if mode == "RGB":
        return rgb
    if mode in ("RGBA", "LA", "PA"):
        rgba = rgb.copy()
        rgba.putalpha(alpha)
        if mode == "PA":
            palette = rgb.quantize(colors=64).convert("PA")
            palette.putalpha(alpha)
            return palette
        return rgba if mode == "RGBA" else rgba.convert("LA")
    if mode == "P":
        return rgb.quantize(colors=64)
    if mode.endswith("+transparency"):  # one palette entry / grey level / colour marked transparent (PNG tRNS)
        image = rgb.quantize(colors=64) if mode == "P+transparency" else rgb.convert(mode.split("+")[0])
        centre = np.asarray(image)[height // 2, width // 2]
        image.info["transparency"] = int(centre) if centre.ndim == 0 else tuple(int(c) for c in centre)
        return image
    if mode == "I;16":
        wide = (gradient[..., 0].astype(np.uint32) * 257 + ys % 257).astype(np.uint16)  # spans 0..65535
        return Image.fromarray(wide)
    if mode in ("I", "F"):
        return rgb.convert("L").convert(mode)
    return rgb.convert(mode)  # L, CMYK, 1


def write_video(path: Path, seconds: float = 3.0, fps: int = 30, width: int = 96, height: int = 64,
                codec: str = "mpeg4", audio: bool = False) -> Path:
    """A yuv420p video of a white square sliding across a grey-blue background; optionally a 440 Hz AAC track."""
    count = round(seconds * fps)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "mpeg4":
            stream.codec_context.bit_rate = 2_000_000
        sound = container.add_stream("aac", rate=16000) if audio else None
        for i in range(count):
            pixels = np.full((height, width, 3), (60, 90, 140), dtype=np.uint8)
            x = i * (width - 16) // max(count - 1, 1)
            pixels[height // 2 - 8:height // 2 + 8, x:x + 16] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            t = np.arange(round(seconds * 16000)) / 16000
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]  # (1, N)
            frame = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
            frame.sample_rate = 16000
            for packet in sound.encode(frame):
                container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path


def write_frameless_video(path: Path) -> Path:
    """An AVI whose video stream holds no frames."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    return path


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    """A WAV file: a container FFmpeg reads, with no video stream."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=16000)
        t = np.arange(round(seconds * 16000)) / 16000
        tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)[None]  # (1, N)
        frame = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
