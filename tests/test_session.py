"""SpeechSession (Thinker -> Talker -> MTP -> Code2Wav) vs transformers' Qwen3OmniMoeForConditionalGeneration."""

import numpy as np
import pytest
import torch

from omnistream.audio.code2wav import Code2Wav, Code2WavConfig
from omnistream.config import AudioConfig, TextConfig, VisionConfig, tiny_omni
from omnistream.engine.session import AudioChunk, SpeechSession, SpeechTokens, TextDelta
from omnistream.talker import Talker, TalkerConfig, convert_talker_state_dict
from omnistream.thinker import InputError, Thinker
from omnistream.weights import convert_thinker_state_dict, load_state_into
from reference import TINY_AUDIO, TINY_VISION, randomize

Q = 4
IDS = dict(im_start_token_id=240, im_end_token_id=241, tts_pad_token_id=242, tts_bos_token_id=243,
           tts_eos_token_id=244, system_token_id=245, user_token_id=246, assistant_token_id=247)
NL = 10
THINKER_TOKENS, TALKER_TOKENS = 7, 14


def hf_omni_config():
    from transformers.models.qwen3_omni_moe import configuration_qwen3_omni_moe as oc

    text = tiny_omni()
    v = text.vocab_size
    thinker = dict(text_config=text.to_hf(), audio_config=TINY_AUDIO, vision_config=TINY_VISION,
                   vision_start_token_id=v - 5, audio_token_id=v - 4, image_token_id=v - 3, video_token_id=v - 2,
                   audio_start_token_id=v - 1)
    # talker vocab > 1024 so that "suppress the top 1024 ids except EOS" leaves codes 0..63 selectable
    talker_text = dict(vocab_size=1088, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
                       moe_intermediate_size=16, shared_expert_intermediate_size=24, norm_topk_prob=True,
                       rms_norm_eps=1e-6, max_position_embeddings=512,
                       rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 1, 1]})
    cp = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6, num_code_groups=Q, max_position_embeddings=512,
              rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    talker = dict(text_config=talker_text, code_predictor_config=cp, num_code_groups=Q, thinker_hidden_size=64,
                  accept_hidden_layer=2, codec_pad_id=1070, codec_bos_id=1071, codec_eos_token_id=1072,
                  codec_nothink_id=1073, codec_think_bos_id=1074, codec_think_eos_id=1075,
                  speaker_id={"ethan": 1080, "chelsie": 1081}, spatial_merge_size=1,
                  audio_token_id=v - 4, image_token_id=v - 3, video_token_id=v - 2, vision_start_token_id=v - 5,
                  audio_start_token_id=v - 1)
    c2w = dict(codebook_size=64, num_quantizers=Q, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=1, intermediate_size=48, sliding_window=72, decoder_dim=32)
    return oc.Qwen3OmniMoeConfig(thinker_config=thinker, talker_config=talker, code2wav_config=c2w,
                                 enable_audio_output=True, **IDS)


@pytest.fixture(scope="module")
def models():
    from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as om

    torch.manual_seed(0)
    hf = om.Qwen3OmniMoeForConditionalGeneration(hf_omni_config())
    randomize(hf, seed=11)
    with torch.no_grad():  # LayerScale / ConvNeXt gamma near 1 so every code2wav path counts
        for name, p in hf.code2wav.named_parameters():
            if name.endswith(("layer_scale.scale", "gamma")):
                p.add_(1.0)
    hf.set_attn_implementation("eager")
    hf.set_experts_implementation("eager")
    hf = hf.float().eval()
    cfg = hf.config.to_dict()
    tcfg = cfg["thinker_config"]
    thinker = Thinker(TextConfig.from_hf(tcfg), AudioConfig.from_hf(tcfg), tcfg["audio_token_id"],
                      VisionConfig.from_hf(tcfg), tcfg["image_token_id"], tcfg["video_token_id"])
    load_state_into(thinker, convert_thinker_state_dict(hf.thinker.state_dict()))
    talker = Talker(TalkerConfig.from_hf(cfg))
    load_state_into(talker, convert_talker_state_dict(hf.talker.state_dict()), "reference")
    c2w = Code2Wav(Code2WavConfig.from_hf(cfg["code2wav_config"]))
    c2w.load_state_dict(hf.code2wav.state_dict(), strict=True)
    return hf, thinker.eval(), talker.eval(), c2w.eval(), SpeechTokens.from_hf(cfg)


def prompt(seed=0):
    g = torch.Generator().manual_seed(seed)
    sys_ = torch.randint(0, 200, (3,), generator=g).tolist()
    user = torch.randint(0, 200, (5,), generator=g).tolist()
    ids = ([240, 245, NL] + sys_ + [241, NL] + [240, 246, NL] + user + [241, NL] + [240, 247, NL])
    return torch.tensor([ids])


def session(models, **kw):
    _, thinker, talker, c2w, tokens = models
    kw = dict(speaker="Ethan", thinker_eos_token_id=IDS["im_end_token_id"], thinker_max_new_tokens=THINKER_TOKENS,
              talker_max_new_tokens=TALKER_TOKENS) | kw
    return SpeechSession(thinker, talker, c2w, tokens, **kw)


def reference(hf, ids, speaker="Ethan", eos=IDS["im_end_token_id"], **media):
    captured = {}
    original = hf.code2wav.chunked_decode

    def hook(codes, *a, **k):
        captured["codes"] = codes.clone()
        return original(codes, *a, **k)

    hf.code2wav.chunked_decode = hook
    try:
        seq, wav = hf.generate(input_ids=ids, return_audio=True, thinker_max_new_tokens=THINKER_TOKENS,
                               thinker_eos_token_id=eos, talker_max_new_tokens=TALKER_TOKENS,
                               talker_do_sample=False, speaker=speaker, **media)
    finally:
        del hf.code2wav.chunked_decode
    return seq[0, ids.shape[1]:].tolist(), captured["codes"][0], wav[0, 0]


@pytest.mark.parametrize("seed,speaker", [(0, "Ethan"), (1, "chelsie")])
def test_matches_reference_generate(models, seed, speaker):
    hf = models[0]
    ids = prompt(seed)
    ref_tokens, ref_codes, ref_wav = reference(hf, ids, speaker)
    s = session(models, speaker=speaker)
    events = list(s.speak(ids))
    tokens = [e.token_id for e in events if isinstance(e, TextDelta)]
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert tokens == ref_tokens
    assert ref_codes.shape[-1] >= 2, "the test should exercise several talker frames"
    assert torch.equal(s.codes, ref_codes)
    pcm = np.concatenate([c.pcm for c in chunks])
    assert pcm.dtype == np.float32 and pcm.shape == tuple(ref_wav.shape)
    assert np.abs(ref_wav.numpy()).max() > 1e-3
    assert np.abs(pcm - ref_wav.numpy()).max() < 1e-4
    # every frame yields its own chunk, in order; the talker starts after the thinker's first two tokens
    assert [c.frame for c in chunks if c.codes.size] == list(range(ref_codes.shape[-1]))
    first_audio = next(i for i, e in enumerate(events) if isinstance(e, AudioChunk))
    assert first_audio == 2 and len(tokens) > 3, "audio must stream while the thinker is still writing"
    for key in ("preprocessing", "thinker_first_token", "talker_first_frame", "mtp_per_frame",
                "code2wav_per_frame", "first_audio_packet"):
        assert s.timings[key] >= 0
    assert s.timings["first_audio_packet"] >= s.timings["thinker_first_token"]


def test_first_audio_chunk_follows_first_talker_frame(models):
    s = session(models)
    it = s.speak(prompt(0))
    for ev in it:
        if isinstance(ev, AudioChunk):
            break
    assert ev.frame == 0 and ev.codes.shape == (Q, 1)
    assert "talker_first_frame" in s.timings and "first_audio_packet" in s.timings
    assert "frames" not in s.timings  # the talker is still running: the chunk was streamed, not produced at the end
    assert ev.pcm.size == models[3].config.num_samples(1)
    it.close()


def test_unknown_voice_lists_known_voices(models):
    with pytest.raises(ValueError, match="unknown speaker 'Nobody'.*chelsie, ethan"):
        session(models, speaker="Nobody")


def test_empty_reply_is_an_error(models):
    with pytest.raises(ValueError, match="empty reply"):
        list(session(models, thinker_max_new_tokens=1).speak(prompt(0)))


def test_run_collects_everything(models):
    res = session(models).run(prompt(0))
    assert res.codes.shape[0] == Q and res.pcm.size == models[3].config.num_samples(res.codes.shape[1])


def test_matches_reference_when_thinker_and_talker_stop_early(models):
    """EOS paths: the thinker stops on its EOS, the talker on codec EOS (made an ordinary code for this test)."""
    hf, _, talker, _, _ = models
    ids = prompt(0)
    base = session(models).run(ids)
    eos_text = base.tokens[2]  # a token the thinker emits mid-reply
    old = talker.config.codec_eos_token_id
    s = session(models, thinker_eos_token_id=eos_text)
    events = list(s.speak(ids))  # learn which codes follow a shorter reply, then stop the talker on one of them
    codes = s.codes
    stop_at = next(t for t in range(2, codes.shape[1]) if int(codes[0, t]) not in codes[0, :t].tolist())
    eos_code = int(codes[0, stop_at])
    try:
        hf.config.talker_config.codec_eos_token_id = eos_code
        talker.config.codec_eos_token_id = eos_code
        ref_tokens, ref_codes, ref_wav = reference(hf, ids, eos=eos_text)
        s = session(models, thinker_eos_token_id=eos_text)
        events = list(s.speak(ids))
    finally:
        hf.config.talker_config.codec_eos_token_id = old
        talker.config.codec_eos_token_id = old
    tokens = [e.token_id for e in events if isinstance(e, TextDelta)]
    assert tokens == ref_tokens and tokens[-1] == eos_text and len(tokens) < THINKER_TOKENS
    assert torch.equal(s.codes, ref_codes) and ref_codes.shape[1] == stop_at
    pcm = np.concatenate([e.pcm for e in events if isinstance(e, AudioChunk)])
    assert pcm.shape == tuple(ref_wav.shape) and np.abs(pcm - ref_wav.numpy()).max() < 1e-4



def media_prompt(models, kind, seed=3):
    """A chat prompt whose user turn holds one audio clip or one image, with the thinker's encoder inputs."""
    _, thinker, _, _, _ = models
    g = torch.Generator().manual_seed(seed)
    v = thinker.lm.config.vocab_size
    if kind == "audio":
        frames = 173
        n = thinker.audio_tower.token_counts(torch.tensor([frames])).item()
        feats = torch.randn(1, thinker.audio_tower.config.num_mel_bins, frames, generator=g)
        span = [v - 1] + [thinker.audio_token_id] * n + [v - 6]
        ref = dict(input_features=feats, feature_attention_mask=torch.ones(1, frames, dtype=torch.long))
        ours = dict(audio_features=feats, audio_lengths=[frames])
    else:
        grid = torch.tensor([[1, 4, 6]])
        pixels = torch.randn(24, 3 * 2 * 2 * 2, generator=g)
        span = [v - 5] + [thinker.image_token_id] * 24 + [v - 6]
        ref = ours = dict(pixel_values=pixels, image_grid_thw=grid)
    user = torch.randint(0, 200, (4,), generator=g).tolist()
    ids = torch.tensor([[240, 245, NL, 5, 6, 241, NL, 240, 246, NL] + span + user + [241, NL, 240, 247, NL]])
    return ids, ref, ours


@pytest.mark.parametrize("kind", ["audio", "image"])
def test_multimodal_prompt_matches_reference_generate(models, kind):
    from omnistream.positions import omni_position_ids

    hf, thinker = models[0], models[1]
    ids, ref_media, our_media = media_prompt(models, kind)
    ref_tokens, ref_codes, ref_wav = reference(hf, ids, attention_mask=torch.ones_like(ids), **ref_media)
    tok = models[2].config.placeholders
    pos, _ = omni_position_ids(ids, None, tok, audio_lengths=our_media.get("audio_lengths"),
                               image_grid_thw=our_media.get("image_grid_thw"), spatial_merge_size=1,
                               position_id_per_seconds=hf.config.thinker_config.position_id_per_seconds,
                               audio_config=thinker.audio_tower.config)
    s = session(models)
    res = s.run(ids, position_ids=pos, **our_media)
    assert res.tokens == ref_tokens
    assert ref_codes.shape[-1] >= 2 and torch.equal(res.codes, ref_codes)
    assert res.pcm.shape == tuple(ref_wav.shape) and np.abs(res.pcm - ref_wav.numpy()).max() < 1e-4


def test_closing_the_stream_releases_its_state(models):
    import gc
    import weakref

    s = session(models)
    it = s.speak(prompt(0))
    for ev in it:
        if isinstance(ev, AudioChunk):
            break
    live = [weakref.ref(x) for x in (s.state.thinker_cache, s.state.talker_cache, s.state.code2wav)]
    it.close()
    gc.collect()
    assert s.state is None and all(r() is None for r in live)
    assert s.codes.shape == (Q, 1)  # what was spoken before the close is kept


def test_cancel_stops_at_the_next_step(models):
    s = session(models)
    events = []
    for ev in s.speak(prompt(0)):
        events.append(ev)
        if isinstance(ev, AudioChunk):
            s.cancel()
    audio = [e for e in events if isinstance(e, AudioChunk)]
    assert len(audio) == 1 and s.state is None and s.codes.shape == (Q, 1)
    full = session(models).run(prompt(0))
    assert full.codes.shape[1] > 1


def test_sampling_is_seeded_and_top_k_one_is_greedy(models):
    from omnistream.sampling import SamplingParams

    greedy = session(models).run(prompt(0))
    top1 = session(models, talker_sampling=SamplingParams(1.0, 1, 1.0, 1.05), mtp_sampling=SamplingParams(1.0, 1),
                   seed=5).run(prompt(0))
    assert torch.equal(top1.codes, greedy.codes)
    hot = dict(talker_sampling=SamplingParams(1.5, 0, 1.0, 1.05), mtp_sampling=SamplingParams(1.5), seed=5)
    a, b = session(models, **hot).run(prompt(0)), session(models, **hot).run(prompt(0))
    c = session(models, **(hot | {"seed": 6})).run(prompt(0))
    assert torch.equal(a.codes, b.codes) and a.tokens == greedy.tokens
    assert not torch.equal(a.codes, c.codes) and not torch.equal(a.codes, greedy.codes)


def test_cloned_voice_is_a_talker_system_turn(models):
    from omnistream.engine.talker_prompt import TalkerPrompt
    from omnistream.voice import VoicePrompt, VoiceCloneError

    _, thinker, talker, c2w, tokens = models
    codes = torch.randint(0, 64, (Q, 6), generator=torch.Generator().manual_seed(1))
    voice = VoicePrompt(codes, description_ids=[17, 18])
    turn = TalkerPrompt(thinker, talker, tokens).voice_turn(voice)
    assert turn.ids.tolist() == [240, 245, 17, 18] + [242] * 6 + [241]
    with torch.no_grad():
        frames = talker.frame_embedding(codes.T)
    assert torch.allclose(turn.embeds[4:10], frames)
    cloned = session(models, voice=voice).run(prompt(0))
    named = session(models).run(prompt(0))
    assert cloned.tokens == named.tokens and cloned.codes.shape[0] == Q and cloned.codes.shape[1] >= 1
    assert not torch.equal(cloned.codes, named.codes[:, :cloned.codes.shape[1]])
    with pytest.raises(VoiceCloneError, match="3 codebooks per frame but the talker predicts 4"):
        session(models, voice=VoicePrompt(codes[:3]))
    with pytest.raises(VoiceCloneError, match="64 entries"):
        session(models, voice=VoicePrompt(codes + 64))


def test_grouped_rendering_is_the_same_audio(models):
    one = session(models).run(prompt(0))
    s = session(models, max_frames_per_chunk=4)
    events = list(s.speak(prompt(0)))
    chunks = [e for e in events if isinstance(e, AudioChunk) and e.codes.shape[1]]
    assert [c.codes.shape[1] for c in chunks][:3] == [1, 2, 4][:len(chunks)]  # first frame alone, then doubling
    assert sum(c.codes.shape[1] for c in chunks) == one.codes.shape[1]
    pcm = np.concatenate([e.pcm for e in events if isinstance(e, AudioChunk)])
    assert torch.equal(s.codes, one.codes) and pcm.shape == one.pcm.shape and np.abs(pcm - one.pcm).max() < 1e-5


class _Pieces:
    """A vocabulary of the tiny Thinker's size where only the given ids are line breaks."""

    def __init__(self, size: int, breaks: set[int]):
        self.vocab_size = size
        self.pieces = ["\n" if i in breaks else f"<{i}>" for i in range(size)]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces[i] for i in ids)

    def encode(self, text):
        return [self.pieces.index(text)]


def test_the_heard_line_is_decoded_as_generate_decodes_it(models):
    from omnistream.engine import generate
    from omnistream.engine.heard import Heard, LineEnds

    _, thinker, *_ = models
    ids, _, media = media_prompt(models, "audio")
    eos = IDS["im_end_token_id"]
    with torch.no_grad():
        embeds, _ = thinker.embed(ids, **media)  # (1, S, H)
    plain = generate(thinker.lm, ids, max_new_tokens=THINKER_TOKENS, stop_tokens=[eos], inputs_embeds=embeds)
    opened, broken = plain.tokens[0, :2].tolist()  # the reply's first two tokens stand for "<think>" and "\n"
    heard = Heard(1.0, 0, LineEnds(_Pieces(thinker.lm.config.vocab_size, {broken}), [eos]), beam=3)
    guided = generate(thinker.lm, ids, max_new_tokens=THINKER_TOKENS, stop_tokens=[eos], inputs_embeds=embeds,
                      guide=heard.guide(thinker, ids, embeds, opened))
    assert guided.tokens[0, :2].tolist() == [opened, broken]
    assert guided.tokens[0].tolist() != plain.tokens[0].tolist()  # the line after them follows the clip's CTC
    s = session(models, reasoning=(opened, eos - 2, {broken}), heard=heard)
    said = []
    with pytest.raises(ValueError, match="think block"):  # the block never closes: all of it is streamed text
        said.extend(e.token_id for e in s.speak(ids, **media) if isinstance(e, TextDelta))
    assert said == guided.tokens[0, :guided.lengths[0]].tolist()
    unguided, said = session(models, reasoning=(opened, eos - 2, {broken})), []
    with pytest.raises(ValueError, match="think block"):
        said.extend(e.token_id for e in unguided.speak(ids, **media) if isinstance(e, TextDelta))
    assert said == plain.tokens[0, :plain.lengths[0]].tolist()
    with pytest.raises(InputError, match="one prompt at a time"):
        generate(thinker.lm, ids.repeat(2, 1), max_new_tokens=2, inputs_embeds=embeds.repeat(2, 1, 1),
                 guide=heard.guide(thinker, ids, embeds, opened))
    assert heard.guide(thinker, ids[:, :5], embeds[:, :5], opened) is None  # no audio in the prompt
    two = torch.cat([ids, ids], dim=1)
    assert heard.guide(thinker, two, torch.cat([embeds, embeds], dim=1), opened) is None  # which clip? none
