"""The ARIA speech session (Qwen3.5-Omni layout: hybrid Thinker, hybrid Talker, one interleaved stream)."""

import math

import numpy as np
import pytest
import torch

from omnistream.aria import Kind, PriorRate
from omnistream.audio.code2wav import Code2Wav, Code2WavConfig
from omnistream.config import tiny_qwen35
from omnistream.engine.session import AudioChunk, SpeechSession, SpeechTokens, TextDelta
from omnistream.talker import Talker, TalkerConfig
from omnistream.thinker import Thinker
from reference import randomize

Q, K = 4, 64
TOKENS = SpeechTokens(im_start_token_id=240, im_end_token_id=241, tts_pad_token_id=242, tts_bos_token_id=243,
                      tts_eos_token_id=244, system_token_id=245, user_token_id=246, assistant_token_id=247)
SLOT, EOS = 70, 71


def talker_config(**kw):
    text = tiny_qwen35(vocab_size=80, hidden_size=32, intermediate_size=40, num_hidden_layers=4).to_hf()
    cp = dict(model_type="qwen3_omni_moe_text", vocab_size=K, hidden_size=32, intermediate_size=48,
              num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=0,
              rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    cfg = dict(text_config=text, code_predictor_config=cp, num_code_groups=Q, thinker_hidden_size=64,
               accept_hidden_layer=2, codec_pad_id=72, codec_bos_id=73, codec_eos_token_id=EOS, codec_nothink_id=74,
               codec_think_bos_id=75, codec_think_eos_id=76, speaker_id={"anna": 77}, interleave="aria",
               codec_text_slot_id=SLOT, aria_default_ratio=3.0) | kw
    return TalkerConfig.from_hf(cfg)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    thinker = Thinker(tiny_qwen35())
    talker = Talker(talker_config())
    c2w = Code2Wav(Code2WavConfig(codebook_size=K, num_quantizers=Q, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, intermediate_size=48,
                                  upsample_rates=(2, 3), decoder_dim=16))
    for i, m in enumerate((thinker, talker, c2w)):
        randomize(m, seed=i)
    return thinker.eval(), talker.eval(), c2w.eval()


def prompt():
    return torch.tensor([[240, 245, 10, 5, 6, 241, 10, 240, 246, 10, 30, 31, 32, 33, 241, 10, 240, 247, 10]])


def speak(models, **kw):
    thinker, talker, c2w = models
    kw = dict(speaker="anna", thinker_eos_token_id=None, thinker_max_new_tokens=12, talker_max_new_tokens=200) | kw
    s = SpeechSession(thinker, talker, c2w, TOKENS, **kw)
    events = list(s.speak(prompt()))
    return s, events


@pytest.mark.parametrize("ratio", [0.5, 1.0, 3.0])
def test_stream_keeps_the_guard_and_loses_nothing(models, ratio):
    s, events = speak(models, rate=PriorRate({}, ratio))
    tokens = [e.token_id for e in events if isinstance(e, TextDelta)]
    stream = s.scheduler.stream
    assert [u.value for u in stream if u.kind is Kind.TEXT] == tokens  # every reply token fed once, in order
    assert [u.value for u in stream if u.kind is Kind.SPEECH] == s.codes[0].tolist()
    t = n = 0
    for u in stream:
        t += u.kind is Kind.TEXT
        n += u.kind is Kind.SPEECH
        if u.kind is Kind.SPEECH and t < len(tokens):
            assert n <= ratio * t + 1e-9, "speech ran ahead of its text"
    assert n <= math.ceil(ratio * len(tokens)) + 4  # frame cap once the text is closed
    assert ((s.codes >= 0) & (s.codes < K)).all()
    pcm = np.concatenate([e.pcm for e in events if isinstance(e, AudioChunk)])
    with torch.no_grad():
        offline = models[2](s.codes[None])[0, 0].numpy()
    assert pcm.shape == offline.shape and np.abs(pcm - offline).max() < 1e-5


def test_speech_streams_while_the_thinker_writes(models):
    s, events = speak(models, rate=PriorRate({}, 3.0))
    first_audio = next(i for i, e in enumerate(events) if isinstance(e, AudioChunk))
    assert any(isinstance(e, TextDelta) for e in events[first_audio:])
    assert s.timings["first_audio_packet"] < s.timings["thinker_total"]
    assert s.timings["frames"] == s.codes.shape[1] > 0 and "stalls" in s.timings


def test_language_prior_and_talker_budget(models):
    thinker, talker, c2w = models
    talker.config.aria_frames_per_token = {"zh": 0.5}
    try:
        s, _ = speak(models, language="zh")
        assert s.codes.shape[1] <= math.ceil(0.5 * 12) + 4
    finally:
        talker.config.aria_frames_per_token = {}
    s, _ = speak(models, talker_max_new_tokens=5)
    assert len(s.scheduler.stream) == 5


def test_bad_aria_ids_are_refused(models):
    thinker, _, c2w = models
    talker = Talker(talker_config(codec_text_slot_id=3))
    with pytest.raises(ValueError, match=r"outside the speech codes \[0, 64\)"):
        SpeechSession(thinker, talker, c2w, TOKENS, speaker="anna")


def test_an_empty_reply_is_an_error(models):
    thinker = models[0]
    with torch.no_grad():
        first = int(thinker.lm(prompt())[0][0, -1].argmax())
    with pytest.raises(ValueError, match="empty reply"):
        speak(models, thinker_eos_token_id=first)


def test_a_given_reply_is_spoken_instead_of_the_thinkers(models):
    thinker, talker, c2w = models
    reply = [40, 41, 42, 43, 241]
    s = SpeechSession(thinker, talker, c2w, TOKENS, speaker="anna", thinker_eos_token_id=241,
                      rate=PriorRate({}, 2.0), talker_max_new_tokens=100)
    events = list(s.speak(prompt(), reply=reply))
    assert [e.token_id for e in events if isinstance(e, TextDelta)] == reply
    assert [u.value for u in s.scheduler.stream if u.kind is Kind.TEXT] == reply
    assert s.codes.shape[1] > 0
    with pytest.raises(Exception, match="reply is empty"):
        list(s.speak(prompt(), reply=[]))


def test_a_think_block_is_shown_but_not_spoken(models):
    """With reasoning ids, the text streams the whole reply but the Talker hears only what follows </think>: the
    same text units and the same speech as the answer given alone."""
    thinker, talker, c2w = models
    answer = [40, 41, 42, 43, 241]
    thought = [50, 60, 61, 10, 51, 10, 10]  # <think> ... \n </think> \n \n
    runs = []
    for reply in (thought + answer, answer):
        s = SpeechSession(thinker, talker, c2w, TOKENS, speaker="anna", thinker_eos_token_id=241,
                          rate=PriorRate({}, 2.0), talker_max_new_tokens=100, reasoning=(50, 51, {10}))
        events = list(s.speak(prompt(), reply=reply))
        assert [e.token_id for e in events if isinstance(e, TextDelta)] == reply
        runs.append(s)
    with_thought, alone = runs
    assert [u.value for u in with_thought.scheduler.stream if u.kind is Kind.TEXT] == answer
    assert torch.equal(with_thought.codes, alone.codes)
    s = SpeechSession(thinker, talker, c2w, TOKENS, speaker="anna", thinker_eos_token_id=241,
                      rate=PriorRate({}, 2.0), talker_max_new_tokens=100, reasoning=(50, 51, {10}))
    with pytest.raises(ValueError, match="empty reply"):
        list(s.speak(prompt(), reply=[50, 60, 241]))
    s = SpeechSession(thinker, talker, c2w, TOKENS, speaker="anna", thinker_eos_token_id=241,
                      rate=PriorRate({}, 2.0), talker_max_new_tokens=100, reasoning=(50, 51, {10}))
    with pytest.raises(ValueError, match="ended inside its think block"):  # the budget ends in the block
        list(s.speak(prompt(), reply=[50, 60, 61]))


def test_a_fixed_rate_talker_may_say_every_code_but_no_other_special_id(models):
    """The fixed-rate loop masks the ids past the codebook except speech-EOS, whatever the vocabulary's size (a demo
    twin's is the codebook and 19 specials: masking the reference's last 1024 ids left it codes 0..18 and EOS)."""
    thinker, _, c2w = models
    talker = Talker(talker_config(interleave="fixed", codec_text_slot_id=None))
    randomize(talker, seed=3)

    def prefer_specials(module, args, logits):  # every special id but EOS far above the codes, EOS never
        logits = logits.clone()
        logits[..., K:] += 1e3
        logits[..., EOS] = -1e9
        return logits

    talker.codec_head.register_forward_hook(prefer_specials)
    s = SpeechSession(thinker, talker.eval(), c2w, TOKENS, speaker="anna", thinker_eos_token_id=None,
                      thinker_max_new_tokens=6, talker_max_new_tokens=12)
    list(s.speak(prompt()))
    assert s.codes.shape[1] == 11  # every budgeted step a frame (the last sampled code gets none, as in the reference)
    assert int(s.codes[0].max()) < K and len(set(s.codes[0].tolist())) > 1
