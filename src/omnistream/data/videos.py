"""Drawn videos: shapes appear and leave at known times; timestamped captions and a scene segmentation of them.

A video is 4 to 8 seconds at FPS = 2 frames per second (SIZE x SIZE, the scene grid of scenes.py), encoded with
PyAV (H.264 in MP4; MPEG-4 Part 2 when libx264 is missing). Each of its 1-3 shapes is visible from its `appear`
time up to, not including, its `leave` time (both whole frames, at least 1 s apart; `leave` = the duration means
it stays to the end and its leaving is not captioned). Frame k, shown at k / FPS seconds, holds exactly the
shapes with appear <= k / FPS < leave. Times are written as the processor's timestamps ("<2.5 seconds>").
Segments cut the video at every appear and leave time; within one, the same shapes are visible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

from ..vision.video import timestamp_text
from .scenes import BACKGROUND, SIZE, Shape, capital, draw_shape, listing, phrase, random_shapes

FPS = 2
MIN_FRAMES, MAX_FRAMES = 4 * FPS, 8 * FPS
MIN_VISIBLE_FRAMES = FPS
CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"


@dataclass(frozen=True)
class Track:
    """A shape and the frames it is visible in: appear <= frame < leave."""

    shape: Shape
    appear: int
    leave: int


@dataclass(frozen=True)
class Timeline:
    """The tracks of a video and its length in frames."""

    tracks: list[Track]
    frames: int

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.frames / FPS

    def visible(self, frame: int) -> list[Track]:
        """The tracks shown in one frame."""
        return [t for t in self.tracks if t.appear <= frame < t.leave]


def random_timeline(rng: random.Random) -> Timeline:
    """1-3 shapes over 4-8 s, each visible for at least MIN_VISIBLE_FRAMES."""
    frames = rng.randint(MIN_FRAMES, MAX_FRAMES)
    tracks = []
    for shape in random_shapes(rng, rng.randint(1, 3)):
        appear = rng.randint(0, frames - MIN_VISIBLE_FRAMES)
        tracks.append(Track(shape, appear, rng.randint(appear + MIN_VISIBLE_FRAMES, frames)))
    return Timeline(tracks, frames)


def render(timeline: Timeline) -> np.ndarray:
    """The frames (T, SIZE, SIZE, 3) uint8."""
    out = np.empty((timeline.frames, SIZE, SIZE, 3), dtype=np.uint8)
    for k in range(timeline.frames):
        image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
        draw = ImageDraw.Draw(image)
        for track in timeline.visible(k):
            draw_shape(draw, track.shape)
        out[k] = np.asarray(image)
    return out


def write_video(timeline: Timeline, path: Path) -> None:
    """Encode the timeline's frames as an MP4 at FPS: H.264 lossless (qp 0), single-threaded. Lossless, because under
    heavy machine load x264 was seen to write different bytes for the same frames even with one thread in every
    stage; the decoded frames are then exact whatever it decides."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(CODEC, rate=FPS)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, FPS)
        stream.codec_context.thread_count = 1
        if CODEC == "libx264":
            stream.codec_context.options = {"qp": "0", "preset": "veryfast", "threads": "1",
                                            "x264-params": "threads=1:lookahead-threads=1:sliced-threads=0"}
        for k, pixels in enumerate(render(timeline)):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _events(timeline: Timeline) -> list[tuple[int, str, Track]]:
    """(frame, "appear" or "leave", track) in time order, leavings before appearances at the same time."""
    events = [(t.appear, "appear", t) for t in timeline.tracks]
    events += [(t.leave, "leave", t) for t in timeline.tracks if t.leave < timeline.frames]
    order = {track: i for i, track in enumerate(timeline.tracks)}
    return sorted(events, key=lambda e: (e[0], e[1] != "leave", order[e[2]]))


def _stamp(frame: int) -> str:
    """The processor's timestamp text of a frame's time, e.g. "<2.5 seconds>"."""
    return timestamp_text(frame / FPS)


def captions(timeline: Timeline, lang: str) -> str:
    """One line per event: "<2.0 seconds> A red circle appears." / "<3.5 seconds> The red circle leaves."."""
    lines = []
    for frame, what, track in _events(timeline):
        if lang == "en":
            text = (f"{capital(phrase(track.shape, lang))} appears." if what == "appear"
                    else f"{capital(phrase(track.shape, lang, definite=True))} leaves.")
        elif lang == "es":
            text = (f"Aparece {phrase(track.shape, lang)}." if what == "appear"
                    else f"{capital(phrase(track.shape, lang, definite=True))} desaparece.")
        else:
            text = (f"出现了{phrase(track.shape, lang)}。" if what == "appear"
                    else f"{phrase(track.shape, lang, definite=True)}消失了。")
        lines.append(f"{_stamp(frame)} {text}")
    return "\n".join(lines)


def segments(timeline: Timeline) -> list[tuple[int, int, list[Track]]]:
    """(start frame, end frame, visible tracks) of each stretch between consecutive appear/leave times."""
    cuts = sorted({0, timeline.frames} | {t.appear for t in timeline.tracks} | {t.leave for t in timeline.tracks})
    return [(a, b, timeline.visible(a)) for a, b in zip(cuts, cuts[1:])]


def segment_text(timeline: Timeline, lang: str) -> str:
    """One line per segment: "<0.0 seconds> to <2.0 seconds>: a red circle and a blue square." (or nothing)."""
    lines = []
    for start, end, tracks in segments(timeline):
        shapes = [t.shape for t in tracks]
        if lang == "en":
            lines.append(f"{_stamp(start)} to {_stamp(end)}: {listing(shapes, lang) if shapes else 'nothing'}.")
        elif lang == "es":
            lines.append(f"{_stamp(start)} a {_stamp(end)}: {listing(shapes, lang) if shapes else 'nada'}.")
        else:
            lines.append(f"{_stamp(start)}到{_stamp(end)}：{listing(shapes, lang) if shapes else '没有图形'}。")
    return "\n".join(lines)


def caption_prompt(lang: str) -> str:
    """The instruction that asks for timestamped captions."""
    return {"en": "Describe what happens in the video, with the time of each event.",
            "es": "Describe lo que pasa en el vídeo, con el momento de cada suceso.",
            "zh": "请描述视频中发生的事情，并给出每件事的时间。"}[lang]


def segment_prompt(lang: str) -> str:
    """The instruction that asks for the scene segmentation."""
    return {"en": "Split the video into scenes in which the same shapes are visible; give each scene's start "
                  "and end time and its shapes.",
            "es": "Divide el vídeo en escenas en las que se ven las mismas figuras; da el inicio y el final de "
                  "cada escena y sus figuras.",
            "zh": "请把视频分成场景，每个场景中可见的图形相同；给出每个场景的开始时间、结束时间和其中的图形。"}[lang]


def timeline_meta(timeline: Timeline) -> dict:
    """The timeline as JSON-ready data: duration, fps, shapes with appear/leave seconds, segments in seconds."""
    index = {t: i for i, t in enumerate(timeline.tracks)}
    shapes = [{"colour": t.shape.colour, "kind": t.shape.kind, "row": t.shape.row, "col": t.shape.col,
               "center": list(t.shape.center), "appear": t.appear / FPS, "leave": t.leave / FPS}
              for t in timeline.tracks]
    spans = [{"start": a / FPS, "end": b / FPS, "shapes": [index[t] for t in ts]} for a, b, ts in segments(timeline)]
    return {"duration": timeline.duration, "fps": FPS, "shapes": shapes, "segments": spans}
