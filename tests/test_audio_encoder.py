"""AuT encoder vs transformers' Qwen3OmniMoeAudioEncoder (N=3), the N=4 layout, token counts, long audio."""

import pytest
import torch
from transformers.models.qwen3_omni_moe import configuration_qwen3_omni_moe as oc
from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as om

from omnistream.audio.encoder import AudioEncoder, num_audio_tokens
from omnistream.config import AudioConfig, ConfigError, qwen35_omni_audio, tiny_audio
from reference import randomize

TOL = 1e-4


@pytest.fixture(scope="module")
def pair():
    cfg = tiny_audio()
    hf_cfg = {k: v for k, v in vars(cfg).items() if k != "num_downsample"}
    hf = om.Qwen3OmniMoeAudioEncoder(oc.Qwen3OmniMoeAudioEncoderConfig(**hf_cfg))
    randomize(hf, 0)
    hf.set_attn_implementation("eager")
    ours = AudioEncoder(AudioConfig.from_hf(hf.config.to_dict())).eval()
    ours.load_state_dict(hf.state_dict())
    return hf.eval(), ours


def reference(hf, feats, lengths):
    packed = torch.cat([feats[i, :, :n] for i, n in enumerate(lengths)], dim=1)  # (mels, sum T)
    with torch.no_grad():
        return hf(input_features=packed, feature_lens=torch.tensor(lengths)).last_hidden_state


@pytest.mark.parametrize("lengths", [
    [57],  # under one second: one short chunk, no padding
    [300],  # exactly three seconds: the tail chunk is full
    [57, 300, 731],  # mixed: every tail chunk padded to 100 frames (the reference's pad-to-longest-chunk)
    [2500, 99],  # longer than the 200-frame attention window
    [40, 73],  # all chunks short: padded to 73, window sized by that
])
def test_matches_reference(pair, lengths):
    hf, ours = pair
    g = torch.Generator().manual_seed(sum(lengths))
    feats = torch.randn(len(lengths), 128, max(lengths), generator=g)
    ref = reference(hf, feats, lengths)
    with torch.no_grad():
        got = ours(feats, lengths)
    assert got.shape == ref.shape
    assert ref.abs().max() > 0.1
    assert (got - ref).abs().max().item() < TOL


def test_token_counts_match_reference_formula():
    frames = torch.arange(0, 1000)
    ours = num_audio_tokens(frames, tiny_audio())
    assert torch.equal(ours, om._get_feat_extract_output_lengths(frames, 50))
    assert [num_audio_tokens(n, tiny_audio()) for n in (100, 250, 300, 30)] == [13, 33, 39, 4]


def test_qwen35_layout_is_160_ms_per_token():
    cfg = qwen35_omni_audio(d_model=32, encoder_layers=1, encoder_attention_heads=4, encoder_ffn_dim=32,
                            downsample_hidden_size=8, output_dim=16)
    assert [num_audio_tokens(n, cfg) for n in (128, 1280, 6400)] == [8, 80, 400]  # 1.28 s, 12.8 s, 64 s
    torch.manual_seed(0)
    model = AudioEncoder(cfg).eval()
    feats = torch.randn(2, 128, 640)
    with torch.no_grad():
        out = model(feats, [640, 300])
        alone = model(feats[:1], [640])  # 5 whole chunks: nothing in it depends on the other audio
    assert out.shape == (40 + num_audio_tokens(300, cfg), 16)
    assert (out[:40] - alone).abs().max().item() < 1e-5


def test_window_is_a_per_call_parameter(pair):
    _, ours = pair
    feats = torch.randn(1, 128, 800)
    with torch.no_grad():
        short = ours(feats, [800], window_frames=100)
        long = ours(feats, [800], window_frames=800)
        one_chunk_pieces = torch.cat([ours(feats[:, :, i : i + 100], [100]) for i in range(0, 800, 100)])
    assert (short - one_chunk_pieces).abs().max().item() < 1e-5  # a 1-chunk window sees only its chunk
    assert (short - long).abs().max().item() > 1e-3
    with pytest.raises(ValueError, match="not a positive multiple of the 100-frame chunk"):
        ours(feats, [800], window_frames=150)


def test_bad_configs():
    with pytest.raises(ConfigError, match="multiple of encoder_attention_heads"):
        AudioConfig(d_model=30, encoder_attention_heads=4)
    with pytest.raises(ConfigError, match="not a multiple of the chunk"):
        AudioConfig(n_window_infer=150)
