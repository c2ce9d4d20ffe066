"""Code2Wav: parity with transformers' Qwen3OmniMoeCode2Wav, chunked decode, streaming == offline."""

import itertools
import random

import pytest
import torch
from reference import randomize
from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeCode2WavConfig
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeCode2Wav

from omnistream.audio.code2wav import Code2Wav, Code2WavConfig, Code2WavStream

TINY = dict(codebook_size=64, num_quantizers=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, intermediate_size=48, sliding_window=72, decoder_dim=32)
REAL_RATES = TINY  # release upsampling (2, 2) x (8, 5, 4, 3): 1920 samples per frame
SMALL_RATES = TINY | dict(upsample_rates=(2, 3), decoder_dim=16)  # 24 samples per frame: long sequences run fast
TOL = 1e-5


def build(kw: dict, seed: int = 0):
    """(reference, ours) on the same random weights; LayerScale and ConvNeXt gamma near 1 so every path counts."""
    hf = Qwen3OmniMoeCode2Wav(Qwen3OmniMoeCode2WavConfig(**kw))
    randomize(hf, seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(("layer_scale.scale", "gamma")):
                p.add_(1.0)
    hf.set_attn_implementation("eager")
    hf = hf.float().eval()
    ours = Code2Wav(Code2WavConfig.from_hf(hf.config.to_dict()))
    ours.load_state_dict(hf.state_dict(), strict=True)
    return hf, ours.eval()


@pytest.fixture(scope="module")
def real():
    return build(REAL_RATES)


@pytest.fixture(scope="module")
def small():
    return build(SMALL_RATES, seed=1)


def codes_for(model: Code2Wav, batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    c = model.config
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, c.codebook_size, (batch, c.num_quantizers, frames), generator=g)


def stream(model: Code2Wav, codes: torch.Tensor, groups) -> list[torch.Tensor]:
    """Push codes in consecutive groups of the given sizes (cycled); return every chunk, flush last."""
    s = Code2WavStream(model, codes.shape[0])
    out, t, sizes = [], 0, itertools.cycle(groups)
    while t < codes.shape[-1]:
        n = next(sizes)
        out.append(s.push(codes[..., t] if n == 1 else codes[..., t : t + n]))
        t += n
    out.append(s.flush())
    return out


def test_state_dict_matches_reference(real):
    hf, ours = real
    assert set(ours.state_dict()) == set(hf.state_dict())
    assert torch.equal(ours.code_offset, hf.code_offset)
    assert "code_offset" not in ours.state_dict()


def test_config_release_defaults():
    cfg = Code2WavConfig.from_hf(Qwen3OmniMoeCode2WavConfig().to_dict())
    assert cfg == Code2WavConfig()
    assert cfg.total_upsample == 1920 and cfg.latency_samples == 555
    assert [cfg.num_samples(t) for t in (1, 2, 300)] == [1920 * t - 555 for t in (1, 2, 300)]


@pytest.mark.parametrize("frames", [1, 7, 90])
def test_forward_matches_reference(real, frames):
    hf, ours = real
    codes = codes_for(ours, 2, frames)
    with torch.no_grad():
        want, got = hf(codes), ours(codes)
    assert got.shape == (2, 1, 1920 * frames - 555)
    assert (got - want).abs().max() < TOL


def test_forward_matches_reference_long(small):
    hf, ours = small
    codes = codes_for(ours, 2, 330)
    with torch.no_grad():
        want, got = hf(codes), ours(codes)
    assert got.shape == (2, 1, ours.config.num_samples(330))
    assert (got - want).abs().max() < TOL


def test_chunked_decode_matches_reference(real, small):
    hf, ours = real
    codes = codes_for(ours, 1, 330, seed=2)
    with torch.no_grad():
        assert (ours.chunked_decode(codes) - hf.chunked_decode(codes)).abs().max() < TOL
    hf, ours = small
    codes = codes_for(ours, 2, 100, seed=3)
    with torch.no_grad():
        want, got = hf.chunked_decode(codes, 40, 10), ours.chunked_decode(codes, 40, 10)
    assert got.shape == want.shape and (got - want).abs().max() < TOL


@pytest.mark.parametrize("groups", [[1], [2], [7], [10_000], "random"])
def test_stream_equals_offline(small, groups):
    _, ours = small
    codes = codes_for(ours, 2, 333, seed=4)
    if groups == "random":
        rng = random.Random(0)
        groups = [rng.choice([1, 2, 3, 7, 50]) for _ in range(333)]
    chunks = stream(ours, codes, groups)
    with torch.no_grad():
        want = ours(codes)
    got = torch.cat(chunks, dim=-1)
    assert got.shape == want.shape and (got - want).abs().max() < TOL
    assert chunks[-1].shape == (2, 1, 0)  # flush: nothing was pending


@pytest.mark.parametrize("groups", [[1], [3, 7]])
def test_stream_equals_offline_real_rates(real, groups):
    hf, ours = real
    codes = codes_for(ours, 2, 80, seed=5)
    got = torch.cat(stream(ours, codes, groups), dim=-1)
    with torch.no_grad():
        want = hf(codes)
    assert got.shape == want.shape and (got - want).abs().max() < TOL


def test_first_chunk_after_one_frame(real):
    _, ours = real
    codes = codes_for(ours, 1, 4, seed=6)
    s = Code2WavStream(ours)
    sizes = [s.push(codes[..., t]).shape[-1] for t in range(4)]
    assert s.latency_samples == 555
    assert sizes == [1920 - 555, 1920, 1920, 1920]


def test_batch_rows_are_independent(small):
    _, ours = small
    codes = codes_for(ours, 2, 120, seed=7)
    both = torch.cat(stream(ours, codes, [5]), dim=-1)
    for b in range(2):
        with torch.no_grad():
            alone = ours(codes[b : b + 1])
        assert (both[b : b + 1] - alone).abs().max() < TOL


def test_stream_restarts_after_flush(small):
    _, ours = small
    codes = codes_for(ours, 1, 100, seed=8)
    s = Code2WavStream(ours)
    s.push(codes[..., :60])
    s.flush()
    got = torch.cat([s.push(codes[..., :30]), s.push(codes[..., 30:])], dim=-1)
    with torch.no_grad():
        assert (got - ours(codes)).abs().max() < TOL


def test_clear_errors(small):
    _, ours = small
    codes = codes_for(ours, 1, 5)
    with pytest.raises(ValueError, match="quantizers"):
        ours(codes[:, :3])
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        ours(codes + 64)
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        ours(codes - 100)
    with pytest.raises(ValueError, match="integer"):
        ours(codes.float())
    s = Code2WavStream(ours, batch_size=2)
    with pytest.raises(ValueError, match="batch 2"):
        s.push(codes[..., 0])
    with pytest.raises(ValueError, match="quantizers"):
        s.push(torch.zeros(2, 5, dtype=torch.long))
