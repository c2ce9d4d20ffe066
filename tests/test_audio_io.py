"""load_audio on files, bytes, arrays and tensors: decoders, resampling, channel folding, PCM scaling, errors."""

import shutil
import subprocess
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from omnistream.audio.io import AudioInputError, load_audio, pcm16_bytes_to_float

SR = 16000
AMP = 0.5


def sine(rate, seconds=1.0, freq=1000.0):
    """A float32 sine of amplitude AMP."""
    t = np.arange(int(round(rate * seconds))) / rate
    return (AMP * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def has_encoder(name):
    """Whether this PyAV build can encode with `name`."""
    if name not in av.codecs_available:
        return False
    try:
        av.codec.Codec(name, "w")
    except Exception:
        return False
    return True


def write_av(path, x, rate, audio_codec, video_codec=None, with_audio=True):
    """Write mono x (N,) with PyAV, optionally beside a few 64x64 video frames."""
    with av.open(str(path), "w") as container:
        if video_codec:
            video = container.add_stream(video_codec, rate=10)
            video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        if with_audio:
            audio = container.add_stream(audio_codec, rate=rate, layout="mono")
            fmt = "fltp" if "fltp" in [f.name for f in audio.codec_context.codec.audio_formats] else "flt"
            frame = av.AudioFrame.from_ndarray(x[None], format=fmt, layout="mono")  # (1, N)
            frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)  # pts → priming edit list
            for packet in [*audio.encode(frame), *audio.encode(None)]:
                container.mux(packet)
        if video_codec:
            for i in range(5):
                image = np.full((64, 64, 3), 40 * i, np.uint8)  # (H, W, 3)
                for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in video.encode(None):
                container.mux(packet)


def peak_hz(y, rate=SR):
    """Frequency of the largest spectral peak of y."""
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return np.argmax(spectrum) * rate / len(y)


def best_correlation(a, b, max_lag):
    """Largest normalized cross-correlation of a and b over lags within ±max_lag samples."""
    n = len(a) + len(b)
    xc = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)  # lag k at index k (mod n)
    lags = np.r_[xc[: max_lag + 1], xc[-max_lag:]]
    return lags.max() / (np.linalg.norm(a) * np.linalg.norm(b))


def assert_clean_sine(y, seconds=1.0):
    """y is a 1 kHz sine of amplitude AMP at 16 kHz: right length, peak, and samples within 1e-2."""
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - seconds * SR) <= 2
    assert abs(peak_hz(y) - 1000) <= SR / len(y)
    edge = SR // 100  # the resampler's filter settles within 10 ms of each end
    ref = sine(SR, len(y) / SR)
    assert np.abs(y[edge:-edge] - ref[edge:-edge]).max() < 1e-2


# lossless files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext, subtype, rate", [
    ("wav", "PCM_16", 44100),
    ("wav", "FLOAT", 44100),
    ("wav", "PCM_16", 8000),
    ("wav", "PCM_24", 16000),
    ("flac", "PCM_16", 44100),
    ("flac", "PCM_16", 8000),
])
def test_lossless_file_resampled_to_16k(tmp_path, ext, subtype, rate):
    path = tmp_path / f"sine.{ext}"
    sf.write(path, sine(rate), rate, subtype=subtype)
    assert_clean_sine(load_audio(path))
    assert_clean_sine(load_audio(str(path)))


def test_matching_rate_is_not_resampled(tmp_path):
    x = sine(SR)
    sf.write(tmp_path / "a.wav", x, SR, subtype="FLOAT")
    assert np.array_equal(load_audio(tmp_path / "a.wav"), x)
    assert np.array_equal(load_audio(x, sample_rate=SR), x)


def test_other_target_rate(tmp_path):
    sf.write(tmp_path / "a.wav", sine(44100), 44100, subtype="FLOAT")
    y = load_audio(tmp_path / "a.wav", target_rate=24000)
    assert abs(len(y) - 24000) <= 2 and abs(peak_hz(y, 24000) - 1000) <= 1


# lossy files and video containers ------------------------------------------------------------------------


def check_lossy(y, seconds=1.0):
    """y lasts `seconds` within 50 ms and correlates with the source sine."""
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) / SR - seconds) <= 0.05
    assert best_correlation(y, sine(SR, seconds), SR // 20) > 0.9
    assert abs(peak_hz(y) - 1000) <= 2 * SR / len(y)


@pytest.mark.parametrize("subtype, rate", [("VORBIS", 44100), ("OPUS", 48000)])
def test_ogg(tmp_path, subtype, rate):
    if subtype not in sf.available_subtypes("OGG"):
        pytest.skip(f"this libsndfile cannot write ogg {subtype}")
    sf.write(tmp_path / "a.ogg", sine(rate), rate, format="OGG", subtype=subtype)
    check_lossy(load_audio(tmp_path / "a.ogg"))


@pytest.mark.parametrize("name, audio_codec, video_codec, rate", [
    ("a.mp3", "libmp3lame", None, 44100),
    ("a.mp4", "aac", "mpeg4", 44100),
    ("a.mkv", "aac", "mpeg4", 22050),
    ("a.webm", "libopus", "libvpx", 48000),
])
def test_pyav_written_file(tmp_path, name, audio_codec, video_codec, rate):
    for codec in filter(None, (audio_codec, video_codec)):
        if not has_encoder(codec):
            pytest.skip(f"this PyAV build has no {codec} encoder")
    path = tmp_path / name
    write_av(path, sine(rate), rate, audio_codec, video_codec)
    check_lossy(load_audio(path))
    check_lossy(load_audio(path.read_bytes()))


def test_mp3_falls_back_to_pyav_without_libsndfile_mp3(tmp_path, monkeypatch):
    if not has_encoder("libmp3lame"):
        pytest.skip("this PyAV build has no libmp3lame encoder")
    write_av(tmp_path / "a.mp3", sine(44100), 44100, "libmp3lame")
    by_soundfile = load_audio(tmp_path / "a.mp3")

    def no_mp3(*args, **kwargs):
        raise RuntimeError("Format not recognised.")

    monkeypatch.setattr(sf, "SoundFile", no_mp3)
    by_pyav = load_audio(tmp_path / "a.mp3")
    check_lossy(by_pyav)
    assert abs(len(by_pyav) - len(by_soundfile)) <= SR // 20


def test_video_without_audio_stream(tmp_path):
    path = tmp_path / "silent.mp4"
    write_av(path, None, None, None, "mpeg4", with_audio=False)
    with pytest.raises(AudioInputError, match=r"silent\.mp4.*no audio stream"):
        load_audio(path)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_speech_survives_every_container(tmp_path):
    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "Hello, this is a test of the audio loader."], check=True)
    x, rate = sf.read(wav, dtype="float32")
    ref = load_audio(wav)
    assert abs(len(ref) - len(x) * SR / rate) <= 2
    sf.write(tmp_path / "speech.flac", x, rate)
    assert np.abs(load_audio(tmp_path / "speech.flac") - ref).max() < 1e-4
    lossy = [tmp_path / "speech.ogg"]
    sf.write(lossy[0], x, rate, format="OGG", subtype="VORBIS")
    if has_encoder("libmp3lame"):
        lossy.append(tmp_path / "speech.mp3")
        write_av(lossy[-1], x, rate, "libmp3lame")
    for path in lossy:
        y = load_audio(path)
        assert abs(len(y) - len(ref)) / SR <= 0.05, path
        assert best_correlation(y, ref, SR // 20) > 0.9, path


# channels, bytes, arrays ---------------------------------------------------------------------------------


def test_stereo_file_folded_to_mono(tmp_path):
    x = sine(44100)
    sf.write(tmp_path / "opposite.wav", np.stack([x, -x], axis=1), 44100, subtype="FLOAT")  # (N, 2)
    assert np.abs(load_audio(tmp_path / "opposite.wav")).max() < 1e-6
    sf.write(tmp_path / "same.wav", np.stack([x, x], axis=1), 44100, subtype="FLOAT")
    assert_clean_sine(load_audio(tmp_path / "same.wav"))


def test_stereo_array_layouts():
    x = sine(SR)
    for frames in (np.stack([x, x], axis=1), np.stack([x, x], axis=0), torch.from_numpy(np.stack([x, x]))):
        assert np.array_equal(load_audio(frames, sample_rate=SR), x)
    assert np.abs(load_audio(np.stack([x, -x]), sample_rate=SR)).max() == 0
    three = np.stack([x, 2 * x, 3 * x], axis=1)  # (N, 3)
    assert np.allclose(load_audio(three, sample_rate=SR), 2 * x, atol=1e-6)


def test_pcm_dtypes_scaled_exactly():
    ints = np.array([-32768, -1, 0, 1, 16384, 32767], np.int16)
    assert np.array_equal(load_audio(ints, sample_rate=SR), ints.astype(np.float32) / 32768)
    assert np.array_equal(load_audio(torch.from_numpy(ints), sample_rate=SR), ints.astype(np.float32) / 32768)
    wide = np.array([-(2**31), 0, 2**30, 2**31 - 1], np.int32)
    assert np.array_equal(load_audio(wide, sample_rate=SR), (wide / 2**31).astype(np.float32))
    bytes8 = np.array([0, 64, 128, 192, 255], np.uint8)
    assert np.array_equal(load_audio(bytes8, sample_rate=SR), np.array([-1, -0.5, 0, 0.5, 127 / 128], np.float32))
    doubles = np.array([0.25, -1.5, 0.1])
    assert np.array_equal(load_audio(doubles, sample_rate=SR), doubles.astype(np.float32))
    assert np.array_equal(load_audio(ints.byteswap().view(">i2"), sample_rate=SR), ints / np.float32(32768))


def test_array_resampled_and_int16_file_matches_array(tmp_path):
    pcm = np.round(sine(44100) * 32767).astype(np.int16)
    assert_clean_sine(load_audio(pcm, sample_rate=44100))
    assert_clean_sine(load_audio(torch.from_numpy(pcm), sample_rate=44100.0))
    sf.write(tmp_path / "a.wav", pcm, 44100, subtype="PCM_16")
    assert np.array_equal(load_audio(tmp_path / "a.wav"), load_audio(pcm, sample_rate=44100))


def test_wav_bytes_equal_path(tmp_path):
    sf.write(tmp_path / "a.wav", sine(22050), 22050)
    data = (tmp_path / "a.wav").read_bytes()
    assert np.array_equal(load_audio(data), load_audio(tmp_path / "a.wav"))
    assert np.array_equal(load_audio(bytearray(data)), load_audio(memoryview(data)))


def test_pcm16_packet():
    samples = np.array([-32768, -2, 0, 3, 32767], "<i2")
    out = pcm16_bytes_to_float(samples.tobytes())
    assert out.dtype == np.float32 and np.array_equal(out, samples / np.float32(32768))
    assert pcm16_bytes_to_float(b"").shape == (0,)
    packet = np.zeros(320, "<i2").tobytes()  # 20 ms at 16 kHz
    assert pcm16_bytes_to_float(packet).shape == (320,)
    with pytest.raises(AudioInputError, match=r"odd byte count \(641\)"):
        pcm16_bytes_to_float(packet + b"\x00")
    with pytest.raises(AudioInputError, match="must be bytes"):
        pcm16_bytes_to_float(samples)


# errors a user can cause ---------------------------------------------------------------------------------


def test_missing_file_directory_and_empty_file(tmp_path):
    with pytest.raises(AudioInputError, match=r"nope\.wav' does not exist"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(AudioInputError, match="is not a file"):
        load_audio(tmp_path)
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(AudioInputError, match=r"zero\.wav' is empty \(0 bytes\)"):
        load_audio(tmp_path / "zero.wav")
    sf.write(tmp_path / "noframes.wav", np.zeros(0, np.float32), SR)
    with pytest.raises(AudioInputError, match=r"noframes\.wav' is empty \(0 samples\)"):
        load_audio(tmp_path / "noframes.wav")
    with pytest.raises(AudioInputError, match=r"audio bytes \(0 bytes\) are empty"):
        load_audio(b"")


@pytest.mark.parametrize("name, content", [
    ("noise.wav", bytes(range(256)) * 40),
    ("text.mp3", b"this is not an mp3 file\n" * 100),
    ("broken.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\xff" * 3000),
])
def test_corrupt_file_is_one_clear_error(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(AudioInputError, match=rf"{name.replace('.', '[.]')}' could not be decoded \(soundfile: .*PyAV"):
        load_audio(tmp_path / name)


def test_truncated_wav_header(tmp_path):
    sf.write(tmp_path / "a.wav", sine(SR), SR)
    (tmp_path / "cut.wav").write_bytes((tmp_path / "a.wav").read_bytes()[:30])
    with pytest.raises(AudioInputError, match=r"cut\.wav"):
        load_audio(tmp_path / "cut.wav")


def test_corrupt_bytes():
    with pytest.raises(AudioInputError, match=r"audio bytes \(11 bytes\) could not be decoded"):
        load_audio(b"not audio!!")


def test_non_finite_samples_counted(tmp_path):
    x = sine(SR)
    x[[5, 10, 15]] = np.nan
    x[20:22] = np.inf
    with pytest.raises(AudioInputError, match=r"shape \(16000,\).* has 5 non-finite samples"):
        load_audio(x, sample_rate=SR)
    with pytest.raises(AudioInputError, match="has 5 non-finite"):
        load_audio(torch.from_numpy(x), sample_rate=SR)
    sf.write(tmp_path / "nan.wav", x, SR, subtype="FLOAT")
    with pytest.raises(AudioInputError, match=r"nan\.wav' has 5 non-finite samples"):
        load_audio(tmp_path / "nan.wav")


def test_sample_rate_below_minimum(tmp_path):
    x = sine(4000)
    with pytest.raises(AudioInputError, match=r"^sample rate 4000 Hz of audio array of shape \(4000,\) and dtype "
                       r"float32 is below the 8000 Hz minimum$"):
        load_audio(x, sample_rate=4000)
    sf.write(tmp_path / "low.wav", x, 4000)
    with pytest.raises(AudioInputError, match=r"sample rate 4000 Hz of audio file '.*low\.wav' is below the 8000 Hz"):
        load_audio(tmp_path / "low.wav")


@pytest.mark.parametrize("rate, message", [
    (None, "needs sample_rate="),
    (0, "must be positive, got 0"),
    (-16000, "must be positive, got -16000"),
    (float("nan"), "must be positive, got nan"),
    ("16k", "must be a number of Hz, got '16k'"),
    (True, "must be a number of Hz, got True"),
])
def test_bad_array_sample_rate(rate, message):
    with pytest.raises(AudioInputError, match=rf"audio array of shape \(16000,\).*{message}"):
        load_audio(sine(SR), sample_rate=rate)


def test_sample_rate_with_a_file_is_refused(tmp_path):
    sf.write(tmp_path / "a.wav", sine(SR), SR)
    with pytest.raises(AudioInputError, match=r"sample_rate=44100 was given for audio file '.*a\.wav'"):
        load_audio(tmp_path / "a.wav", sample_rate=44100)
    with pytest.raises(AudioInputError, match=r"sample_rate=16000 was given for audio bytes"):
        load_audio((tmp_path / "a.wav").read_bytes(), sample_rate=16000)


def test_too_long(tmp_path):
    with pytest.raises(AudioInputError, match=r"lasts 2\.00 s, above the max_seconds=1\.5 s limit"):
        load_audio(sine(SR, 2.0), sample_rate=SR, max_seconds=1.5)
    assert len(load_audio(sine(SR, 2.0), sample_rate=SR, max_seconds=2.0)) == 2 * SR
    sf.write(tmp_path / "long.flac", sine(44100, 3.0), 44100)
    with pytest.raises(AudioInputError, match=r"long\.flac' lasts 3\.00 s, above the max_seconds=2 s limit"):
        load_audio(tmp_path / "long.flac", max_seconds=2)
    write_av(tmp_path / "long.mp4", sine(44100, 3.0), 44100, "aac", "mpeg4")
    with pytest.raises(AudioInputError, match=r"long\.mp4' lasts more than 1\.\d+ s .*max_seconds=1 s limit"):
        load_audio(tmp_path / "long.mp4", max_seconds=1)


@pytest.mark.parametrize("array", [
    np.zeros(100, np.int64),
    np.zeros(100, np.int8),
    np.zeros(100, np.float16),
    np.zeros(100, np.complex64),
    np.zeros(100, bool),
    torch.zeros(100, dtype=torch.bfloat16),
    torch.zeros(100, dtype=torch.int64),
])
def test_unsupported_dtype(array):
    with pytest.raises(AudioInputError, match=r"dtype .*unsupported dtype; use int16, int32, uint8, float32"):
        load_audio(array, sample_rate=SR)


@pytest.mark.parametrize("array, message", [
    (np.zeros((2, 3, 100), np.float32), r"shape \(2, 3, 100\).*got 3 dimensions"),
    (np.array(0.5, np.float32), r"shape \(\).*got 0 dimensions"),
    (np.zeros((9, 1000), np.float32), r"shape \(9, 1000\).*smaller dimension \(9\).*exceeds 8"),
    (np.zeros((1000, 20), np.int16), r"shape \(1000, 20\).*smaller dimension \(20\)"),
    (np.zeros((0,), np.float32), r"shape \(0,\).* is empty"),
    (np.zeros((0, 2), np.int16), r"shape \(0, 2\).* is empty"),
])
def test_bad_array_shape(array, message):
    with pytest.raises(AudioInputError, match=message):
        load_audio(array, sample_rate=SR)


def test_bad_source_type_and_arguments():
    with pytest.raises(AudioInputError, match="cannot load audio from a list"):
        load_audio([0.0, 0.1], sample_rate=SR)
    with pytest.raises(AudioInputError, match="target_rate must be a positive integer"):
        load_audio(sine(SR), sample_rate=SR, target_rate=0)
    with pytest.raises(AudioInputError, match="max_seconds must be positive"):
        load_audio(sine(SR), sample_rate=SR, max_seconds=0)


def test_is_a_value_error():
    assert issubclass(AudioInputError, ValueError)
