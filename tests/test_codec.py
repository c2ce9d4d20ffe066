"""Audio tokenizer (codec encoder side): code layout for Code2Wav, RVQ, causality, losses, a short training run."""

import math

import pytest
import torch

from omnistream.audio.code2wav import Code2Wav, Code2WavConfig
from omnistream.audio.codec import (AudioTokenizer, CodecConfig, ResidualVQ, causal_log_mel,
                                    multi_resolution_stft_loss, reconstruction_loss)

C2W = Code2WavConfig(codebook_size=64, num_quantizers=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1, intermediate_size=48, decoder_dim=32)
TINY = dict(codebook_dim=16, n_mels=32, mel_width=32, width=48, decoder_width=32)


def tokenizer(seed: int = 0, decoder: bool = False) -> AudioTokenizer:
    torch.manual_seed(seed)
    return AudioTokenizer(CodecConfig.from_code2wav(C2W, **TINY), decoder=decoder).eval()


def sweep(n: int, sr: int = 24000, f0: float = 100.0, f1: float = 4000.0) -> torch.Tensor:
    """Linear sine sweep (n,) from f0 to f1 Hz, amplitude 0.5."""
    t = torch.arange(n) / sr
    dur = n / sr
    return 0.5 * torch.sin(2 * math.pi * (f0 * t + (f1 - f0) * t**2 / (2 * dur)))


def test_config_follows_code2wav():
    c = CodecConfig.from_code2wav(Code2WavConfig())
    assert (c.num_quantizers, c.codebook_size, c.hop, c.sample_rate) == (16, 2048, 1920, 24000)
    assert [c.num_frames(n) for n in (1, 1919, 1920, 1921, 3840)] == [1, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="mel_hop"):
        CodecConfig(mel_hop=250)
    tok = AudioTokenizer(CodecConfig(), decoder=False)
    with pytest.raises(ValueError, match="does not match"):
        tok.check_compatible(Code2WavConfig())


@pytest.mark.parametrize("n", [1, 1920, 5000])
def test_codes_layout_decodes_with_code2wav(n):
    tok = tokenizer()
    tok.check_compatible(C2W)
    wave = torch.randn(2, n) * 0.1
    codes = tok.encode(wave, sample_rate=24000)
    assert codes.shape == (2, C2W.num_quantizers, math.ceil(n / 1920)) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < C2W.codebook_size
    c2w = Code2Wav(C2W).eval()
    c2w.check_codes(codes)
    with torch.no_grad():
        out = c2w(codes)
    assert out.shape == (2, 1, C2W.num_samples(codes.shape[-1])) and torch.isfinite(out).all()
    # (N,) and (B, 1, N) inputs give the same codes as (B, N)
    assert torch.equal(tok.encode(wave[0]), codes[:1])
    assert torch.equal(tok.encode(wave[:, None]), codes)


def test_rvq_error_decreases_with_more_quantizers():
    torch.manual_seed(0)
    rvq = ResidualVQ(num_quantizers=6, codebook_size=32, dim=8)
    z = torch.randn(4, 100, 8)
    rvq.kmeans_init(z, iters=5)
    errs = []
    for n_q in range(1, 7):
        codes = rvq.encode(z, n_q)
        assert codes.shape == (4, n_q, 100)
        errs.append(float((z - rvq.decode_codes(codes).detach()).pow(2).mean()))
    assert errs[0] < float(z.pow(2).mean())
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    # forward: straight-through output equals the decoded codes, gradient reaches z, losses are finite
    z.requires_grad_(True)
    out = rvq(z)
    assert torch.allclose(out.z_q, rvq.decode_codes(out.codes), atol=1e-5)
    (out.z_q.sum() + out.commitment_loss + out.codebook_loss).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert rvq.codebooks.grad is not None and rvq.codebooks.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        rvq.decode_codes(torch.full((1, 2, 3), 32))
    with pytest.raises(ValueError):
        rvq(torch.randn(1, 3, 7))


def test_dead_code_replacement():
    torch.manual_seed(0)
    rvq = ResidualVQ(2, 16, 4).train()
    z = torch.randn(2, 10, 4) + 50.0  # far from every initial entry: a single entry wins
    rvq(z)
    assert rvq.replace_dead_codes(z) >= 15
    assert int(rvq.usage.sum()) == 0
    rvq(z)
    assert int((rvq.usage[0] > 0).sum()) > 1


def test_encoding_is_causal():
    tok = tokenizer(seed=1)
    wave = torch.randn(1, 5 * 1920) * 0.2
    later = wave.clone()
    later[:, 3 * 1920 :] = torch.randn(1, 2 * 1920)
    a, b = tok.encode(wave), tok.encode(later)
    assert torch.equal(a[..., :3], b[..., :3])
    with torch.no_grad():
        za, zb = tok.encoder(wave), tok.encoder(later)
    assert torch.allclose(za[:, :3], zb[:, :3], atol=1e-6)
    assert not torch.allclose(za[:, 3:], zb[:, 3:], atol=1e-3)  # the later frames do see the change
    # a prefix encodes to the prefix of the codes (frames complete within it)
    assert torch.equal(tok.encode(wave[:, : 2 * 1920]), a[..., :2])
    mel = causal_log_mel(wave)
    mel2 = causal_log_mel(later)
    assert mel.shape == (1, 80, 5 * 1920 // 240)
    assert torch.equal(mel[..., : 3 * 1920 // 240], mel2[..., : 3 * 1920 // 240])


def test_stft_and_reconstruction_losses():
    x = sweep(4800)[None]
    assert float(multi_resolution_stft_loss(x, x)) == 0.0
    assert float(reconstruction_loss(x, x)) == 0.0
    pred = (x + 0.05 * torch.randn_like(x)).requires_grad_(True)
    loss = multi_resolution_stft_loss(pred, x, ffts=(256, 512, 1024))
    assert loss.item() > 0
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    pred.grad = None
    rec = reconstruction_loss(pred, x)
    assert rec.item() > 0
    rec.backward()
    assert torch.isfinite(pred.grad).all()
    silent = torch.zeros(1, 2000, requires_grad=True)
    multi_resolution_stft_loss(silent, torch.zeros(1, 2000)).backward()
    assert torch.isfinite(silent.grad).all()
    with pytest.raises(ValueError, match="shapes"):
        multi_resolution_stft_loss(x, x[:, :-1])


def test_training_reduces_loss_on_sweep():
    tok = tokenizer(seed=0, decoder=True).train()
    wave = torch.stack([sweep(4 * 1920), sweep(4 * 1920, f0=3000.0, f1=200.0)])
    with torch.no_grad():
        tok.quantizer.kmeans_init(tok.encoder(wave), iters=3)
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    totals = []
    for _ in range(25):
        losses = tok.training_losses(wave)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        totals.append(losses["total"].item())
    assert set(losses) == {"reconstruction", "stft", "commitment", "codebook", "total"}
    assert all(math.isfinite(t) for t in totals)
    assert sum(totals[-5:]) / 5 < 0.8 * sum(totals[:5]) / 5, totals


def test_clear_errors():
    tok = tokenizer()
    with pytest.raises(ValueError, match="empty"):
        tok.encode(torch.zeros(1, 0))
    with pytest.raises(ValueError, match="NaN"):
        tok.encode(torch.tensor([[0.0, float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="24000 Hz"):
        tok.encode(torch.zeros(1, 100), sample_rate=16000)
    with pytest.raises(ValueError, match="floating"):
        tok.encode(torch.zeros(1, 100, dtype=torch.int16))
    with pytest.raises(ValueError, match="mono"):
        tok.encode(torch.zeros(1, 2, 100))
    with pytest.raises(ValueError, match="n_q"):
        tok(torch.zeros(1, 100), n_q=0)
    with pytest.raises(ValueError, match="decoder"):
        tok.training_losses(torch.zeros(1, 100))
