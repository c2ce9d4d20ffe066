"""Log-mel features vs transformers' WhisperFeatureExtractor as Qwen3-Omni's processor calls it."""

import numpy as np
import pytest
import torch
from audio_fixtures import espeak_speech, harmonic_speechlike, white_noise

from omnistream.audio.features import AudioError, LogMel, log_mel, num_frames, slaney_mel_filterbank

TOL = 1e-5
SR = 16000
# the audio kwargs Qwen3OmniMoeProcessor passes to its feature extractor (plus return_tensors)
CALL_KWARGS = dict(padding=True, truncation=False, return_attention_mask=True, sampling_rate=SR, return_tensors="pt")


def reference_extractor(n_mels: int = 128):
    """WhisperFeatureExtractor configured like Qwen3-Omni's preprocessor_config.json."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=SR, hop_length=160, n_fft=400, chunk_length=300,
                                   padding_value=0.0, return_attention_mask=True)


@pytest.fixture(scope="module")
def reference():
    return reference_extractor()


@pytest.fixture(scope="module")
def signals():
    """Name -> 3 s float32 signal at 16 kHz; the speech one needs espeak-ng and is absent without it."""
    out = {"silence": np.zeros(3 * SR, np.float32), "white_noise": white_noise(3.0, SR, seed=1),
           "harmonic": harmonic_speechlike(3.0, SR, seed=2)}
    try:
        out["speech"] = np.pad(espeak_speech("The quick brown fox jumps over the lazy dog."), (0, 3 * SR))[: 3 * SR]
    except pytest.skip.Exception:
        pass
    return out


def get_signal(signals, name):
    if name not in signals:
        pytest.skip("espeak-ng is not installed (shutil.which('espeak-ng') is None)")
    return signals[name]


def compare(reference, waveforms, n_mels=128):
    """Max abs feature difference to the reference; the masks must be equal and the shapes agree."""
    ref = reference(waveforms, **CALL_KWARGS)
    features, mask = log_mel(waveforms, n_mels=n_mels)
    assert features.dtype == torch.float32 and mask.dtype == torch.long
    assert features.shape == ref["input_features"].shape
    assert torch.equal(mask, ref["attention_mask"].long())
    return (features - ref["input_features"]).abs().max().item()


def test_filterbank_matches_transformers():
    from transformers.audio_utils import mel_filter_bank

    ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=128, min_frequency=0.0, max_frequency=8000.0,
                          sampling_rate=SR, norm="slaney", mel_scale="slaney")
    ours = slaney_mel_filterbank(201, 128, SR, 0.0, 8000.0)
    assert ours.dtype == torch.float64 and ours.shape == ref.shape
    assert np.abs(ours.numpy() - ref).max() < 1e-6
    assert torch.allclose(LogMel().mel_filters, torch.from_numpy(ref).float().T, rtol=0, atol=1e-6)


@pytest.mark.parametrize("length", [16000, 16001, 15999, 400, 201])
@pytest.mark.parametrize("name", ["speech", "silence", "white_noise", "harmonic"])
def test_single_matches_reference(reference, signals, name, length):
    start = 4000  # skip the onset so short cuts of speech still hold sound
    waveform = get_signal(signals, name)[start : start + length]
    assert compare(reference, [waveform]) < TOL


def test_silence_is_flat():
    features, mask = log_mel([np.zeros(1600, np.float32)])
    assert torch.equal(features, torch.full((1, 128, 10), (-10.0 + 4.0) / 4.0))  # log10(1e-10) everywhere
    assert mask.sum().item() == 10


@pytest.mark.parametrize("name", ["speech", "white_noise", "harmonic"])
def test_batch_matches_reference(reference, signals, name):
    signal = get_signal(signals, name)
    lengths = [4800, 16000, 43200, 161, 16001, 15999]  # 0.3 s, 1 s, 2.7 s and ragged ends
    batch = [signal[i * 100 : i * 100 + n] for i, n in enumerate(lengths)]
    assert compare(reference, batch) < TOL
    for waveform in batch:
        if len(waveform) > 200:  # the reference cannot take a 161-sample waveform alone
            assert compare(reference, [waveform]) < TOL


def test_batch_with_silence_matches_reference(reference, signals):
    batch = [signals["silence"][:4800], signals["harmonic"][:16000], signals["silence"][:43200]]
    assert compare(reference, batch) < TOL


def test_mask_counts_every_started_hop():
    _, mask = log_mel([np.ones(16001, np.float32) * 0.1, np.ones(32000, np.float32) * 0.1])
    assert mask.shape == (2, 200)
    assert mask.sum(-1).tolist() == [101, 200]  # in a batch a partial last hop counts (the reference's rule)
    _, alone = log_mel([np.ones(16001, np.float32) * 0.1])
    assert alone.shape == (1, 100) and alone.sum().item() == num_frames(16001) == 100


def test_other_mel_count_and_input_types(signals):
    waveform = signals["harmonic"][:16000]
    assert compare(reference_extractor(80), [waveform], n_mels=80) < TOL
    from_tensor, _ = log_mel([torch.from_numpy(waveform.astype(np.float64))])
    from_array, _ = log_mel([waveform])
    assert torch.equal(from_tensor, from_array)


def test_num_frames():
    assert [num_frames(n) for n in (0, 159, 160, 16000, 16001, 15999)] == [0, 0, 1, 100, 100, 99]


@pytest.mark.parametrize("waveforms, message", [
    ([], "empty"),
    (np.zeros((2, 16000), np.float32), "list"),
    ([np.zeros(16000, np.float32), np.zeros(0, np.float32)], "waveform 1 has 0 samples; need at least 160"),
    ([np.zeros(16000, np.float32), np.zeros(159, np.float32)], "waveform 1 has 159 samples"),
    ([np.zeros(180, np.float32)], "longest waveform has 180 samples; need at least 201"),
    ([np.zeros((16000, 2), np.float32)], r"waveform 0 has shape \(16000, 2\); expected 1-D"),
    ([np.zeros(16000, np.int16)], "waveform 0 has dtype int16"),
    ([[0.0] * 16000], "waveform 0 is a list"),
    ([np.zeros(16000, np.float32), np.array([0.0, np.nan, np.inf] * 100, np.float32)],
     "waveform 1 has 200 NaN or infinite samples"),
    ([np.full(400, 1e300)], "waveform 0 has 400 NaN or infinite samples"),
])
def test_errors(waveforms, message):
    with pytest.raises(AudioError, match=message):
        log_mel(waveforms)
    assert issubclass(AudioError, ValueError)
