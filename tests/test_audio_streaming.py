"""AudioEncoderStream == the offline encoder on running-floor log-mel, for N=3 and N=4, in packets of any size.

Running vs global log-mel floor (features.py): identical from the loudest frame on, and everywhere on audio
whose quiet parts stay within 80 dB of the loudness so far (harmonic speech over a 0.05 white-noise floor: max
difference 0.0). Before the loudest frame they differ wherever the audio is quieter than that; measured with
espeak-ng 1.51, "The quick brown fox jumps over the lazy dog." (its first ~11 ms near-silent) differs by up to
0.81 in 18 of the 33 frames before its peak, and by up to 0.81 in 68 frames with 0.5 s of digital silence first
(-1.5 running, floored at -0.69 globally); harmonic_speechlike with only its 0.003 breath noise differs by
0.01 to 0.52 (seeds 0-4), always before its loudest frame."""

import functools

import numpy as np
import pytest
import torch
from audio_fixtures import espeak_speech, harmonic_speechlike, white_noise

from omnistream.audio.encoder import AudioEncoder, num_audio_tokens
from omnistream.audio.features import AudioError, log_mel
from omnistream.audio.io import AudioInputError, pcm16_bytes_to_float
from omnistream.audio.streaming import AudioEncoderStream
from omnistream.config import qwen35_omni_audio, tiny_audio

TOL = 1e-5
SR = 16000
SMALL = dict(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=48, downsample_hidden_size=8,
             output_dim=64)
SENTENCE = "The quick brown fox jumps over the lazy dog."


@functools.cache
def encoder(n: int) -> AudioEncoder:
    """A tiny random AuT with n Conv2D blocks: N=3 the Qwen3-Omni layout, N=4 Qwen3.5-Omni's."""
    torch.manual_seed(n)
    return AudioEncoder(tiny_audio() if n == 3 else qwen35_omni_audio(**SMALL)).eval()


@functools.cache
def audio(name: str, n: int) -> np.ndarray:
    """Test audio by name; 'two_chunks' is exactly two chunks of encoder n."""
    if name == "short":
        return harmonic_speechlike(0.7, seed=1)
    if name == "two_chunks":
        return harmonic_speechlike(2 * encoder(n).config.chunk_frames / 100, seed=2)
    if name == "long":
        return harmonic_speechlike(5.3, seed=3)
    if name == "ragged":
        return harmonic_speechlike(1.9, seed=5)[:30437]  # 37 samples into a hop: the last frame reads the reflection
    return np.pad(espeak_speech(SENTENCE), (8000, 0))  # 0.5 s of digital silence first


@functools.cache
def offline(name: str, n: int, window_frames: int) -> torch.Tensor:
    """Tokens of the offline path on the running-floor features: what the stream must reproduce."""
    wave = audio(name, n)
    features, _ = log_mel([wave], floor="running")  # (1, mels, T)
    with torch.no_grad():
        return encoder(n)(features, [len(wave) // 160], window_frames=window_frames)


def stream_all(stream: AudioEncoderStream, packets) -> torch.Tensor:
    """Push every packet, then finish -> all tokens (n, output_dim)."""
    return torch.cat([stream.push(p) for p in packets] + [stream.finish()])


def split(wave: np.ndarray, size) -> list[np.ndarray]:
    """Packets of `size` samples, or of random sizes 0..5000 (empty packets included) for size='random'."""
    if size != "random":
        return [wave[i : i + size] for i in range(0, len(wave), size)]
    cuts = np.cumsum(np.random.default_rng(0).integers(0, 5000, len(wave) // 1000 + 10))
    return np.split(wave, cuts[cuts < len(wave)])


def final_frames(samples: int) -> int:
    """Mel frames that no later audio can change once `samples` samples have arrived."""
    return 0 if samples <= 200 else (samples - 200) // 160 + 1


@pytest.mark.parametrize("size", [1, 320, 333, 4000, "random", "whole"])
@pytest.mark.parametrize("chunks", [1, 4])
@pytest.mark.parametrize("name", ["short", "two_chunks", "long", "ragged", "speech"])
@pytest.mark.parametrize("n", [3, 4])
def test_stream_equals_offline(n, name, chunks, size):
    enc = encoder(n)
    window_frames = chunks * enc.config.chunk_frames
    wave = audio(name, n)
    ref = offline(name, n, window_frames)
    stream = AudioEncoderStream(enc, window_frames)
    got = stream_all(stream, split(wave, len(wave) if size == "whole" else size))
    frames = len(wave) // 160
    assert got.shape == ref.shape == (num_audio_tokens(frames, enc.config), enc.config.output_dim)
    assert ref.abs().max() > 0.1
    assert (got - ref).abs().max().item() < TOL
    assert stream.tokens_emitted == len(ref) and stream.frames_consumed == frames


@pytest.mark.parametrize("chunks", [1, 4])
@pytest.mark.parametrize("n", [3, 4])
def test_tokens_leave_as_soon_as_their_window_is_final(n, chunks):
    enc = encoder(n)
    window_frames = chunks * enc.config.chunk_frames
    wave, ref = audio("long", n), offline("long", n, window_frames)
    stream = AudioEncoderStream(enc, window_frames)
    lookahead = 160 * (window_frames - 1) + 200  # the window's last frame is centred 160 (W - 1) in, reads 200 on
    assert len(stream.push(wave[: lookahead - 1])) == 0
    first = stream.push(wave[lookahead - 1 : lookahead])
    per_window = num_audio_tokens(window_frames, enc.config)
    assert len(first) == per_window and (first - ref[:per_window]).abs().max().item() < TOL
    assert stream.frames_consumed == window_frames and stream.latency_seconds == 40 / SR
    outs = [first]
    for packet in split(wave[lookahead:], 333):
        outs.append(stream.push(packet))
        assert stream.frames_consumed == final_frames(stream.samples_received) // window_frames * window_frames
        assert stream.latency_seconds <= (160 * window_frames + 39) / SR
    assert (torch.cat(outs + [stream.finish()]) - ref).abs().max().item() < TOL


@pytest.mark.parametrize("n", [3, 4])
def test_audio_shorter_than_a_chunk_waits_for_finish_and_pads_nothing(n):
    enc = encoder(n)
    wave = audio("short", n)  # 70 frames: less than one chunk
    stream = AudioEncoderStream(enc)
    assert all(len(stream.push(p)) == 0 for p in split(wave, 320))
    got = stream.finish()
    ref = offline("short", n, enc.config.chunk_frames)
    assert (got - ref).abs().max().item() < TOL
    features, _ = log_mel([wave], floor="running")
    with torch.no_grad():
        padded = enc.encode_segment(features[0], enc.config.chunk_frames, 10 ** 6)  # as if padded to a chunk
    assert (padded - ref).abs().max().item() > 1e-3  # so the test can tell the two apart


def test_default_window_is_one_chunk_and_reset_starts_over():
    enc = encoder(4)
    stream = AudioEncoderStream(enc)
    assert stream.window_frames == enc.config.chunk_frames == 128  # 1.28 s
    wave = audio("two_chunks", 4)
    first = stream_all(stream, split(wave, 320))
    stream.reset()
    assert stream.tokens_emitted == stream.frames_consumed == stream.samples_received == 0
    again = stream_all(stream, split(wave, 4000))
    assert (first - again).abs().max().item() < TOL and (first - offline("two_chunks", 4, 128)).abs().max().item() < TOL


def test_int16_bytes_tensors_and_float64_packets():
    enc = encoder(3)
    pcm = (audio("long", 3) * 32767).astype("<i2").tobytes()
    wave = pcm16_bytes_to_float(pcm)  # the dequantized audio the stream sees
    features, _ = log_mel([wave], floor="running")
    with torch.no_grad():
        ref = enc(features, [len(wave) // 160], window_frames=100)
    from_bytes = stream_all(AudioEncoderStream(enc), [pcm[i : i + 640] for i in range(0, len(pcm), 640)])  # 20 ms
    assert (from_bytes - ref).abs().max().item() < TOL
    packets = split(wave, 320)  # the same 20 ms boundaries, so only the packet type differs
    from_tensors = stream_all(AudioEncoderStream(enc), [torch.from_numpy(p) for p in packets])
    from_float64 = stream_all(AudioEncoderStream(enc), [p.astype(np.float64) for p in packets])
    assert torch.equal(from_tensors, from_bytes) and torch.equal(from_float64, from_bytes)
    from_other_sizes = stream_all(AudioEncoderStream(enc), [torch.from_numpy(p) for p in split(wave, 500)])
    assert (from_other_sizes - from_bytes).abs().max().item() < TOL


def test_running_floor_equals_global_above_the_floor():
    wave = harmonic_speechlike(5.3, seed=0) + 0.05 * white_noise(5.3, seed=9)  # quiet parts within 80 dB
    assert torch.equal(log_mel([wave], floor="running")[0], log_mel([wave])[0])


def test_running_floor_on_speech_with_silence():
    wave = audio("speech", 3)  # 0.5 s of digital silence, then speech
    running, _ = log_mel([wave], floor="running")
    reference, _ = log_mel([wave])
    loudest = int(reference.amax(dim=1).argmax())  # the frame holding the global peak
    assert torch.equal(running[..., loudest:], reference[..., loudest:])
    silent = 49  # frames 0..48 read only zeros
    assert torch.all(running[..., :silent] == -1.5)  # log10(1e-10) = -10, within 80 dB of the silence so far
    assert torch.all(reference[..., :silent] == reference.min()) and reference.min() > -1.0  # floored at peak - 8


def test_running_floor_is_per_item_in_a_batch():
    a, b = audio("speech", 3)[:30000], harmonic_speechlike(1.1, seed=4)
    batch, mask = log_mel([a, b], floor="running")
    for i, wave in enumerate((a, b)):
        alone, _ = log_mel([wave], floor="running")
        inside = final_frames(len(wave))  # later frames read the batch's zero padding, not the reflection
        assert (batch[i, :, :inside] - alone[0, :, :inside]).abs().max().item() < TOL
    with pytest.raises(ValueError, match="floor must be one of"):
        log_mel([a], floor="max")


def test_errors():
    enc = encoder(3)
    wave = audio("short", 3)
    stream = AudioEncoderStream(enc)
    stream.push(wave[:320])
    bad = wave[320:640].copy()
    bad[[3, 7]] = [np.nan, np.inf]
    with pytest.raises(AudioInputError, match="packet 1 has 2 NaN or infinite samples .* out of 320"):
        stream.push(bad)
    with pytest.raises(AudioInputError, match=r"packet 2: PCM16 packet has an odd byte count \(3\)"):
        stream.push(b"\x00\x01\x02")
    with pytest.raises(AudioInputError, match=r"packet 3 has shape \(2, 160\); expected 1-D"):
        stream.push(np.zeros((2, 160), np.float32))
    with pytest.raises(AudioInputError, match="packet 4 has dtype int16"):
        stream.push(np.zeros(160, np.int16))
    with pytest.raises(AudioInputError, match="packet 5 is a list"):
        stream.push([0.0] * 160)
    got = stream_all(stream, split(wave[320:], 320))  # rejected packets left the stream as it was
    assert (got - offline("short", 3, 100)).abs().max().item() < TOL
    with pytest.raises(RuntimeError, match="after finish"):
        stream.push(wave[:320])
    with pytest.raises(RuntimeError, match="finish\\(\\) was called twice"):
        stream.finish()
    short = AudioEncoderStream(enc)
    short.push(wave[:200])
    with pytest.raises(AudioInputError, match="received 200 samples; need at least 201"):
        short.finish()
    assert issubclass(AudioInputError, AudioError)
    with pytest.raises(ValueError, match="150 mel frames is not a positive multiple"):
        AudioEncoderStream(enc, 150)
