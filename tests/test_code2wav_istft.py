"""Code2Wav iSTFT head: config choice, causal overlap-add, streaming == offline, causality, gradients flow."""

import dataclasses
import itertools
import math
import random

import pytest
import torch
from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeCode2WavConfig

from omnistream.audio.code2wav import Code2Wav, Code2WavConfig, Code2WavState, Code2WavStream
from omnistream.audio.codec import multi_resolution_stft_loss, reconstruction_loss
from omnistream.config import ConfigError
from test_code2wav import codes_for, stream

TINY = dict(codebook_size=64, num_quantizers=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, intermediate_size=48, sliding_window=72, head="istft", istft_dim=24,
            istft_layers=2)
CONFIGS = {
    "100hz": TINY | dict(upsampling_ratios=(2, 4), istft_n_fft=960, istft_hop=240),  # 1920 per frame, 720 held
    "short": TINY | dict(upsampling_ratios=(2,), istft_n_fft=72, istft_hop=12),  # 24 per frame < 60 held
    "half": TINY | dict(upsampling_ratios=(1,), istft_n_fft=80, istft_hop=40),  # n_fft = 2 hop: uneven envelope
}
TOL = 1e-5


def build(kw: dict, seed: int = 0) -> Code2Wav:
    """Tiny iSTFT Code2Wav with seeded weights; LayerScale and ConvNeXt gamma near 1 so every path counts."""
    torch.manual_seed(seed)
    model = Code2Wav(Code2WavConfig(**kw))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("layer_scale.scale", "gamma")):
                p.add_(1.0)
    return model.eval()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request):
    return build(CONFIGS[request.param])


def test_head_config():
    assert Code2WavConfig().head == "conv"
    assert Code2WavConfig.from_hf(Qwen3OmniMoeCode2WavConfig().to_dict()).head == "conv"  # absent -> conv
    demo = Code2WavConfig.istft_demo()
    assert Code2WavConfig.from_hf(dataclasses.asdict(demo)) == demo
    with pytest.raises(ConfigError, match="head must be one of"):
        Code2WavConfig(head="bogus")
    with pytest.raises(ValueError, match="multiple of istft_hop"):
        Code2WavConfig(head="istft", istft_n_fft=1000, istft_hop=240)
    with pytest.raises(ValueError, match="at least twice"):
        Code2WavConfig(head="istft", istft_n_fft=240, istft_hop=240)
    names = set(build(CONFIGS["short"]).state_dict())
    assert any(n.startswith("head.") for n in names) and not any(n.startswith("decoder.") for n in names)


def test_demo_config_size():
    c = Code2WavConfig.istft_demo()
    n = sum(p.numel() for p in Code2Wav(c).parameters())
    print(f"istft demo Code2Wav: {n / 1e6:.2f}M parameters, {c.total_upsample} samples/frame, "
          f"{c.latency_samples} held ({c.latency_samples / 24:.0f} ms)")
    assert 2e6 < n < 4e6
    assert c.total_upsample == 1920 and c.latency_samples == 720
    assert [c.num_samples(t) for t in (1, 2, 300)] == [1920 * t - 720 for t in (1, 2, 300)]


@pytest.mark.parametrize("n_fft,hop", [(960, 240), (72, 12), (80, 40), (90, 30)])
def test_overlap_add_reconstructs(n_fft, hop):
    """Spectra of the causal Hann-windowed frames of a signal -> the signal, offline and streamed."""
    head = build(TINY | dict(upsampling_ratios=(1,), istft_n_fft=n_fft, istft_hop=hop)).head
    frames = 37
    x = torch.randn(2, frames * hop)
    padded = torch.nn.functional.pad(x, (n_fft - hop, 0))  # frame j spans [(j + 1) hop - n_fft, (j + 1) hop)
    spec = torch.fft.rfft(padded.unfold(-1, n_fft, hop) * torch.hann_window(n_fft, dtype=x.dtype), dim=-1)
    want = x[:, : frames * hop - (n_fft - hop)]
    assert (head.synthesize(spec)[:, 0] - want).abs().max() < TOL
    state, chunks = Code2WavState(), []
    for a, b in itertools.pairwise([0, 1, 2, 5, 6, 20, frames]):
        chunks.append(head.synthesize(spec[:, a:b], state)[:, 0])
    assert (torch.cat(chunks, -1) - want).abs().max() < TOL


def check_stream(model: Code2Wav, frames: int, groups) -> None:
    """Streamed chunks (groups of frames) == offline decode, num_samples(frames) long; flush adds nothing."""
    codes = codes_for(model, 2, frames, seed=frames)
    if groups == "random":
        rng = random.Random(frames)
        groups = [rng.choice([1, 2, 3, 7, 50]) for _ in range(frames)]
    chunks = stream(model, codes, groups)
    with torch.no_grad():
        want = model(codes)
    got = torch.cat(chunks, dim=-1)
    assert want.shape == got.shape == (2, 1, model.config.num_samples(frames))
    err = (got - want).abs().max().item() if want.numel() else 0.0
    print(f"{model.config.total_upsample}/frame T={frames} groups={groups[:6]}: max |stream - offline| = {err:.2e}")
    assert err < TOL
    assert chunks[-1].shape == (2, 1, 0)  # flush: nothing was pending


@pytest.mark.parametrize("frames", [1, 7, 90, 100])  # 90, 100 > sliding_window 72
@pytest.mark.parametrize("groups", [[1], [1, 3, 5], "random"])
def test_stream_equals_offline(frames, groups):
    check_stream(build(CONFIGS["100hz"]), frames, groups)


@pytest.mark.parametrize("name", ["short", "half"])
@pytest.mark.parametrize("frames,groups", [(9, [1]), (100, [1, 3, 5])])
def test_stream_equals_offline_other_windows(name, frames, groups):
    check_stream(build(CONFIGS[name]), frames, groups)


def test_chunk_sizes_follow_num_samples(model):
    c = model.config
    codes = codes_for(model, 1, 12, seed=3)
    s = Code2WavStream(model)
    sizes = [s.push(codes[..., t]).shape[-1] for t in range(12)]
    assert sizes == [c.num_samples(t + 1) - c.num_samples(t) for t in range(12)]
    assert s.samples == c.num_samples(12)
    assert c.num_samples(12) == 12 * c.total_upsample - (c.istft_n_fft - c.istft_hop)


def test_first_chunk_after_one_frame():
    model = build(CONFIGS["100hz"])
    codes = codes_for(model, 1, 4, seed=6)
    s = Code2WavStream(model)
    sizes = [s.push(codes[..., t]).shape[-1] for t in range(4)]
    assert s.latency_samples == 720
    assert sizes == [1920 - 720, 1920, 1920, 1920]


def test_causal(model):
    """Changing frame t leaves samples [0, num_samples(t)) untouched, and does change the next ones."""
    c = model.config
    codes = codes_for(model, 1, 20, seed=9)
    with torch.no_grad():
        base = model(codes)
        for t in (0, 1, 5, 13, 19):
            other = codes.clone()
            other[..., t] = (other[..., t] + 1) % c.codebook_size
            changed = model(other)
            first = c.num_samples(t)
            assert torch.equal(changed[..., :first], base[..., :first])
            after = slice(first, first + c.istft_n_fft)
            assert (changed[..., after] - base[..., after]).abs().max() > 1e-4


def test_batch_rows_are_independent(model):
    codes = codes_for(model, 2, 30, seed=7)
    both = torch.cat(stream(model, codes, [5]), dim=-1)
    for b in range(2):
        with torch.no_grad():
            alone = model(codes[b : b + 1])
        assert (both[b : b + 1] - alone).abs().max() < TOL


def test_training_reduces_loss():
    """60 Adam steps towards a fixed 0.5 s tone from fixed random codes: L1 + log-mel + multi-resolution STFT."""
    torch.manual_seed(0)
    c = Code2WavConfig(codebook_size=64, num_quantizers=4, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=2, intermediate_size=128, upsampling_ratios=(2, 4), head="istft",
                       istft_dim=64, istft_layers=2)
    model = Code2Wav(c)
    codes = torch.randint(0, 64, (1, 4, 7), generator=torch.Generator().manual_seed(1))
    t = torch.arange(c.num_samples(7)) / 24000  # 12720 samples, 0.53 s
    target = sum(a * torch.sin(2 * math.pi * f * t) for a, f in ((0.3, 220), (0.15, 660), (0.05, 1500)))
    target = (target * torch.exp(-2 * t))[None, None]
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    losses = []
    for _ in range(60):
        wav = model(codes)
        loss = reconstruction_loss(wav, target) + multi_resolution_stft_loss(wav, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(f"istft head training: loss {losses[0]:.3f} -> {losses[-1]:.3f} ({1 - losses[-1] / losses[0]:.0%} lower)")
    assert all(p.grad is not None for p in model.head.parameters())
    assert losses[-1] < 0.7 * losses[0]
