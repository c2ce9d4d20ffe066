"""Thinker on audio + text prompts vs transformers' Qwen3OmniMoeThinkerForConditionalGeneration."""

import pytest
import torch

from omnistream.config import AudioConfig, TextConfig, tiny_omni
from omnistream.thinker import InputError, Thinker
from omnistream.weights import convert_thinker_state_dict, load_omni_thinker, load_state_into
from reference import hf_thinker

TOL = 1e-4


@pytest.fixture(scope="module")
def pair():
    hf = hf_thinker(tiny_omni(), seed=7)
    cfg = hf.config.to_dict()
    ours = Thinker(TextConfig.from_hf(cfg), AudioConfig.from_hf(cfg), cfg["audio_token_id"]).eval()
    load_state_into(ours, convert_thinker_state_dict(hf.state_dict(), towers=("audio_tower",)))
    return hf, ours


def audio_prompt(ours, frames, seed):
    """[text] <audio_start> <audio_pad> x n <audio_end> [text], with the features the pads stand for."""
    cfg = ours.audio_tower.config
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(1, cfg.num_mel_bins, frames, generator=g)
    n = ours.audio_tower.token_counts(torch.tensor([frames])).item()
    start, pad = ours.lm.config.vocab_size - 1, ours.audio_token_id
    ids = torch.cat([torch.randint(0, 200, (5,), generator=g), torch.tensor([start] + [pad] * n + [start - 6]),
                     torch.randint(0, 200, (4,), generator=g)])[None]
    return ids, feats


@pytest.mark.parametrize("frames", [73, 300, 1234])
def test_audio_prompt_logits_match(pair, frames):
    hf, ours = pair
    ids, feats = audio_prompt(ours, frames, frames)
    with torch.no_grad():
        ref = hf(input_ids=ids, input_features=feats, feature_attention_mask=torch.ones(1, frames, dtype=torch.long),
                 attention_mask=torch.ones_like(ids)).logits
        got, _ = ours(ids, feats, [frames])
    assert (got - ref).abs().max().item() < TOL


def test_audio_prompt_greedy_tokens_match(pair):
    hf, ours = pair
    ids, feats = audio_prompt(ours, 420, 1)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, input_features=feats, feature_attention_mask=torch.ones(1, 420, dtype=torch.long),
                          attention_mask=torch.ones_like(ids), max_new_tokens=20, min_new_tokens=20,
                          do_sample=False)[:, ids.shape[1]:]
        cache = ours.lm.new_cache(1, ids.shape[1] + 20)
        logits, _ = ours(ids, feats, [420], cache=cache, logits_to_keep=1)
        tokens = [logits[:, -1].argmax(-1)]
        for _ in range(19):
            tokens.append(ours.lm.decode(tokens[-1], cache).argmax(-1))
    assert torch.stack(tokens, 1).tolist() == ref.tolist()


def test_placeholder_count_mismatch_is_explained(pair):
    _, ours = pair
    ids, feats = audio_prompt(ours, 300, 2)
    one_pad_less = ids.clone()
    one_pad_less[0, 6] = 3  # position 6 is the first <audio_pad>
    with pytest.raises(InputError, match="audio encodes to 39 tokens but the prompt has 38 audio placeholders"):
        ours(one_pad_less, feats, [300])
    with pytest.raises(InputError, match="no audio was given"):
        ours(ids)


def test_loads_from_a_save_pretrained_directory(pair, tmp_path):
    hf, _ = pair
    hf.save_pretrained(tmp_path)
    loaded = load_omni_thinker(tmp_path)
    ids, feats = audio_prompt(loaded, 250, 3)
    with torch.no_grad():
        ref = hf(input_ids=ids, input_features=feats, feature_attention_mask=torch.ones(1, 250, dtype=torch.long)).logits
        assert (loaded(ids, feats, [250])[0] - ref).abs().max().item() < TOL
