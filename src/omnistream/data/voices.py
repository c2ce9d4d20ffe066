"""espeak-ng voices: a fixed roster split into training and held-out voices, and speech at 24 kHz.

A voice is an espeak-ng language voice with a variant (`+m1`..`+m8`, `+f1`..`+f5`), a pitch (-p, 0..99) and a
speed (-s, words per minute). The roster has 16 voices in three languages; 12 are for training and 4 (one per
language, two for English) are held out: the eval split speaks only with those, so evaluation hears voices the
model never trained on. Beside the roster, a crowd of other espeak-ng timbres at random pitch and speed
(`crowd_voice`) says half of the training split's input speech (see tasks.py). Mandarin uses `cmn-latn-pinyin`,
which reads pinyin with tone numbers (plain `cmn` would read the tone digits aloud), so Mandarin speech input is
always pinyin (see text.py).
"""

from __future__ import annotations

import functools
import random
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from .errors import DataError

SAMPLE_RATE = 24000
ESPEAK = "espeak-ng"
SPLITS = ("train", "eval")


@dataclass(frozen=True)
class Voice:
    """One speaker: a name (as a user would ask for it), its language and the espeak-ng settings that make it."""

    name: str
    language: str  # "en", "zh" or "es"
    espeak: str  # espeak-ng language voice
    variant: str  # espeak-ng variant file under voices/!v
    pitch: int  # -p, 0..99
    speed: int  # -s, words per minute
    split: str  # "train" or "eval" (held out)

    @property
    def espeak_voice(self) -> str:
        """The -v argument, e.g. "en+f3"."""
        return f"{self.espeak}+{self.variant}"


def _v(name, language, espeak, variant, pitch, speed, split="train") -> Voice:
    """A roster entry (training voice unless split says otherwise)."""
    return Voice(name, language, espeak, variant, pitch, speed, split)


ROSTER: tuple[Voice, ...] = (
    _v("Ava", "en", "en", "f3", 55, 165), _v("Ben", "en", "en", "m1", 45, 170),
    _v("Chloe", "en", "en", "f1", 62, 150), _v("Dan", "en", "en", "m3", 38, 180),
    _v("Fang", "zh", "cmn-latn-pinyin", "f2", 58, 150), _v("Gang", "zh", "cmn-latn-pinyin", "m2", 42, 145),
    _v("Hui", "zh", "cmn-latn-pinyin", "f4", 66, 155), _v("Jun", "zh", "cmn-latn-pinyin", "m4", 50, 140),
    _v("Lucia", "es", "es", "f5", 60, 160), _v("Mateo", "es", "es", "m5", 45, 165),
    _v("Nora", "es", "es", "f1", 54, 150), _v("Pablo", "es", "es", "m6", 40, 170),
    _v("Quinn", "en", "en", "m8", 35, 155, "eval"), _v("Rosa", "en", "en", "f2", 70, 175, "eval"),
    _v("Shan", "zh", "cmn-latn-pinyin", "m7", 55, 150, "eval"), _v("Tomas", "es", "es", "m2", 50, 158, "eval"),
)


# espeak-ng variants no roster voice uses (nor m7 / m8, which only held-out voices have): the crowd that says half the
# training split's input speech beside the roster, so the encoder meets timbres beyond twelve voices
CROWD_VARIANTS = ("Alex", "Andy", "Annie", "Denis", "Gene", "Henrique", "Hugo", "Jacky", "Lee", "Mario", "Michael",
                  "Mike", "Storm", "Tweaky", "adam", "anika", "announcer", "antonio", "aunty", "belinda", "benjamin",
                  "boris", "caleb", "croak", "david", "ed", "edward", "grandma", "grandpa", "gustave", "iven", "john",
                  "kaukovalta", "klatt", "klatt2", "klatt3", "linda", "max", "michel", "norbert", "pablo", "paul",
                  "quincy", "rob", "robert", "steph", "travis", "victor", "zac")
CROWD_PITCH, CROWD_SPEED = (20, 80), (130, 190)

ASSISTANT = {"en": "Ava", "zh": "Fang", "es": "Lucia"}  # the voice that speaks spoken-question answers


def assistant_voice(language: str) -> Voice:
    """The training voice that says the assistant's answers in `language`."""
    name = ASSISTANT.get(language)
    if name is None:
        raise DataError(f"no assistant voice for language {language!r}; expected one of {', '.join(ASSISTANT)}")
    return next(v for v in ROSTER if v.name == name)


def crowd_voice(rng: random.Random, language: str) -> Voice:
    """A training voice drawn from the crowd: a CROWD_VARIANTS timbre at a random pitch and speed, named
    "crowd:{variant}:{pitch}:{speed}"."""
    espeak = next((v.espeak for v in ROSTER if v.language == language), None)
    if espeak is None:
        raise DataError(f"no voice for language {language!r}; expected one of {', '.join(sorted(ASSISTANT))}")
    variant, pitch, speed = rng.choice(CROWD_VARIANTS), rng.randint(*CROWD_PITCH), rng.randint(*CROWD_SPEED)
    return Voice(f"crowd:{variant}:{pitch}:{speed}", language, espeak, variant, pitch, speed, "train")


def voices(split: str, language: str | None = None) -> list[Voice]:
    """The roster's voices of one split ("train" or "eval"), optionally of one language, in roster order."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return [v for v in ROSTER if v.split == split and (language is None or v.language == language)]


def _executable() -> str:
    """The espeak-ng program, or a DataError saying how to install it."""
    exe = shutil.which(ESPEAK)
    if exe is None:
        raise DataError("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng); "
                        "the speech tasks need it")
    return exe


@functools.lru_cache(maxsize=1)
def _installed() -> tuple[frozenset[str], Path | None]:
    """espeak-ng's language voice names (lower case) and its data directory."""
    exe = _executable()
    listing = subprocess.run([exe, "--voices"], capture_output=True, text=True, check=False).stdout
    names = set()
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5:
            names.update({fields[1].lower(), fields[4].lower(), fields[4].rsplit("/", 1)[-1].lower()})
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"Data at:\s*(\S+)", version)
    return frozenset(names), Path(found.group(1)) if found else None


def check_voice(voice: Voice) -> None:
    """Raise a DataError unless espeak-ng is installed with this voice's language and variant."""
    names, data = _installed()
    if voice.espeak.lower() not in names:
        raise DataError(f"voice {voice.name}: espeak-ng has no language voice {voice.espeak!r} "
                        f"(see `espeak-ng --voices`)")
    if data is not None and not (data / "voices" / "!v" / voice.variant).is_file():
        raise DataError(f"voice {voice.name}: espeak-ng has no variant {voice.variant!r} "
                        f"(no file {data / 'voices' / '!v' / voice.variant})")


def _parse_wav(data: bytes, voice: Voice) -> tuple[np.ndarray, int]:
    """Samples (float32) and rate of espeak-ng's --stdout WAV (16-bit mono PCM; its sizes are placeholders)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE" or data[12:16] != b"fmt ":
        raise DataError(f"voice {voice.name}: espeak-ng wrote no WAV data")
    channels = int.from_bytes(data[22:24], "little")
    rate = int.from_bytes(data[24:28], "little")
    bits = int.from_bytes(data[34:36], "little")
    start = data.find(b"data", 36)
    if channels != 1 or bits != 16 or start < 0:
        raise DataError(f"voice {voice.name}: espeak-ng wrote {channels}-channel {bits}-bit audio; "
                        "expected mono 16-bit")
    body = data[start + 8:]
    pcm = np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2")
    return pcm.astype(np.float32) / 32768.0, rate


def speak(text: str, voice: Voice) -> np.ndarray:
    """`text` spoken by `voice`: float32 mono at 24 kHz. Mandarin text must be tone-numbered pinyin."""
    check_voice(voice)
    cmd = [_executable(), "-b", "1", "-v", voice.espeak_voice, "-p", str(voice.pitch), "-s", str(voice.speed),
           "--stdout"]
    done = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, check=False)
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip()
        raise DataError(f"voice {voice.name}: espeak-ng failed with status {done.returncode}: {message}")
    samples, rate = _parse_wav(done.stdout, voice)
    if samples.size == 0 or not np.any(samples):
        raise DataError(f"voice {voice.name}: espeak-ng produced no sound for {text!r}")
    return np.clip(soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ"), -1.0, 1.0).astype(np.float32)
