"""Image and video prompts: placeholders, patches, TM-RoPE positions vs transformers, and `generate --image`."""

import json

import pytest
import torch

from omnistream import cli
from omnistream.audio.encoder import num_audio_tokens
from omnistream.audio.features import log_mel
from omnistream.audio.io import load_audio
from omnistream.config import AudioConfig, VisionConfig, tiny_omni
from omnistream.processor import AUDIO_PAD, IMAGE_PAD, VIDEO_PAD, Processor, Tokenizer, TokenizerError, chat_template
from omnistream.vision.encoder import num_vision_tokens
from omnistream.vision.preprocess import preprocess_image
from omnistream.weights import load_omni_thinker
from reference import hf_thinker
from tokenizer_fixture import build_tokenizer
from vision_fixtures import draw_image, write_video

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", IMAGE_PAD, VIDEO_PAD]
SMALL = (16, 64)  # min / max pixels: a few dozen patches a frame with the tiny 2-pixel patches


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Qwen3-Omni thinker (audio + vision) saved by transformers, with a tokenizer holding its media ids."""
    path = tmp_path_factory.mktemp("omni_vision")
    build_tokenizer(path, 320)
    config = json.loads((path / "tokenizer_config.json").read_text())
    for i, token in enumerate(VISION_TOKENS):  # appended after the trained vocabulary, as added tokens
        config["added_tokens_decoder"][str(320 + i)] = {"content": token, "special": True}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer(path)
    ids = {"audio_token_id": tok.token_to_id(AUDIO_PAD), "audio_start_token_id": tok.token_to_id("<|audio_start|>"),
           "image_token_id": tok.token_to_id(IMAGE_PAD), "video_token_id": tok.token_to_id(VIDEO_PAD),
           "vision_start_token_id": tok.token_to_id("<|vision_start|>")}
    hf = hf_thinker(tiny_omni(vocab_size=328), seed=17, token_ids=ids)
    hf.save_pretrained(path)
    image = path / "picture.png"
    draw_image(20, 12, seed=3).save(image)
    video = write_video(path / "clip.mp4", seconds=2.0, fps=10, width=32, height=24, audio=True)
    return path, hf, tok, image, video


def processor(hf, tok, **kw):
    c = hf.config.to_dict()
    return Processor(tok, AudioConfig.from_hf(c), vision_config=VisionConfig.from_hf(c), image_pixels=SMALL,
                     video_pixels=SMALL, position_id_per_seconds=c["position_id_per_seconds"], **kw)


def user(*parts, text="What is this?"):
    return [{"role": "user", "content": list(parts) + [{"type": "text", "text": text}]}]


def reference_positions(hf, prompt):
    ids = prompt.input_ids
    spg = torch.tensor(prompt.video_second_per_grid) if prompt.video_second_per_grid else None
    seqlens = torch.tensor(prompt.audio_lengths) if prompt.audio_lengths else None
    pos, _ = hf.get_rope_index(ids, prompt.image_grid_thw, prompt.video_grid_thw, torch.ones_like(ids),
                               prompt.use_audio_in_video, seqlens, spg)
    return pos


def test_template_renders_media_parts():
    media = []
    text = chat_template(user({"type": "image", "image": "a.png"}, {"type": "video", "video": "b.mp4"},
                              {"type": "video", "video": "c.mp4", "use_audio_in_video": True}), media=media)
    assert ("<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>"
            "<|vision_start|><|audio_start|><|video_pad|><|audio_end|><|vision_end|>What is this?") in text
    assert [(m.kind, m.source, m.use_audio_in_video) for m in media] == [
        ("image", "a.png", False), ("video", "b.mp4", False), ("video", "c.mp4", True)]


def test_image_placeholders_pixels_and_positions(checkpoint):
    _, hf, tok, image, _ = checkpoint
    c = VisionConfig.from_hf(hf.config.to_dict())
    prompt = processor(hf, tok)(user({"type": "image", "image": str(image)}))
    pixels, grid = preprocess_image(str(image), c.patch_size, c.temporal_patch_size, c.spatial_merge_size, *SMALL)
    assert torch.equal(prompt.pixel_values, pixels) and torch.equal(prompt.image_grid_thw, grid)
    n = int(num_vision_tokens(grid, c.spatial_merge_size)[0])
    assert n > 4 and (prompt.input_ids == tok.token_to_id(IMAGE_PAD)).sum().item() == n
    assert torch.equal(prompt.position_ids, reference_positions(hf, prompt))


def test_video_placeholders_and_positions(checkpoint):
    _, hf, tok, image, video = checkpoint
    prompt = processor(hf, tok)(user({"type": "image", "image": str(image)}, {"type": "video", "video": str(video)}))
    t, h, w = prompt.video_grid_thw[0].tolist()
    assert t == 2 and prompt.video_second_per_grid == [1.0]  # 2 s at 2 fps: 4 frames, 2 temporal patches
    assert (prompt.input_ids == tok.token_to_id(VIDEO_PAD)).sum().item() == t * h * w
    assert prompt.pixel_values_videos.shape[0] == t * h * w
    assert torch.equal(prompt.position_ids, reference_positions(hf, prompt))


def test_audio_in_video_interleaves_by_time(checkpoint):
    _, hf, tok, _, video = checkpoint
    proc = processor(hf, tok)
    prompt = proc(user({"type": "video", "video": str(video), "use_audio_in_video": True}))
    wave = load_audio(str(video))
    feats, _ = log_mel([wave], n_mels=proc.audio_config.num_mel_bins)
    assert torch.equal(prompt.audio_features, feats)
    n_audio = num_audio_tokens(prompt.audio_lengths[0], proc.audio_config)
    t, h, w = prompt.video_grid_thw[0].tolist()
    ids = prompt.input_ids[0].tolist()
    vpad, apad = tok.token_to_id(VIDEO_PAD), tok.token_to_id(AUDIO_PAD)
    assert ids.count(vpad) == t * h * w and ids.count(apad) == n_audio
    start = ids.index(tok.token_to_id("<|audio_start|>"))
    assert ids[start - 1] == tok.token_to_id("<|vision_start|>")
    body = ids[start + 1: start + 1 + t * h * w + n_audio]
    # patch 0 (key 0), audio 0..k-1, patch 1 at key k = 1 s * position_id_per_seconds (ties: video first), the rest
    k = int(proc.position_id_per_seconds)
    assert body[:h * w] == [vpad] * (h * w) and body[h * w: h * w + k] == [apad] * k
    assert body[h * w + k: 2 * h * w + k] == [vpad] * (h * w)
    assert ids[start + 1 + len(body)] == tok.token_to_id("<|audio_end|>")
    assert torch.equal(prompt.position_ids, reference_positions(hf, prompt))


def test_limits_and_missing_encoders(checkpoint):
    _, hf, tok, image, _ = checkpoint
    messages = user({"type": "image", "image": str(image)})
    n = processor(hf, tok)(messages).input_ids.shape[1]
    with pytest.raises(TokenizerError, match=f"prompt is {n} tokens .* limit of {n - 1} tokens"):
        processor(hf, tok, max_tokens=n - 1)(messages)
    with pytest.raises(TokenizerError, match="no vision encoder"):
        Processor(tok)(messages)


def test_generate_with_image_matches_transformers(checkpoint, capsys):
    path, hf, tok, image, _ = checkpoint
    thinker = load_omni_thinker(path)
    if thinker.visual is None:
        pytest.skip("needs weights.load_omni_thinker vision support")
    prompt = Processor(tok, thinker.audio_tower.config, vision_config=thinker.visual.config)(
        user({"type": "image", "image": str(image)}, text="Hi"))
    with torch.no_grad():
        out = hf.generate(input_ids=prompt.input_ids, pixel_values=prompt.pixel_values,
                          image_grid_thw=prompt.image_grid_thw, attention_mask=torch.ones_like(prompt.input_ids),
                          max_new_tokens=10, min_new_tokens=10, do_sample=False)[0, prompt.input_ids.shape[1]:].tolist()
    stops = [i for i, t in enumerate(out) if t in tok.eos_ids]
    want = tok.decode(out[: stops[0] + 1] if stops else out)
    assert want.strip()
    assert prompt.input_ids.shape[1] > 700  # 56 x 56 pixels at the release minimum: 784 image tokens
    assert cli.main(["generate", "--checkpoint", str(path), "--image", str(image), "--prompt", "Hi",
                     "--max-new-tokens", "10"]) == 0
    assert capsys.readouterr().out == want + "\n"


def test_qwen35_layout_writes_a_timestamp_before_each_temporal_patch(checkpoint):
    path, hf, tok, image, video = checkpoint
    proc = processor(hf, tok, layout="qwen3.5-omni")
    prompt = proc(user({"type": "image", "image": str(image)}, {"type": "video", "video": str(video)}))
    ids = prompt.input_ids[0].tolist()
    t = int(prompt.video_grid_thw[0, 0])
    per_patch = int(num_vision_tokens(prompt.video_grid_thw, 1)[0]) // t
    text = tok.decode(ids, skip_special_tokens=False)
    stamps = [f"<{k + 0.25:.1f} seconds>" for k in range(t)]  # 2 fps: a patch of frames at k and k + 0.5 s
    assert t == 2 and all(s in text for s in stamps)
    patch_text = "<|vision_start|>" + "<|video_pad|>" * per_patch + "<|vision_end|>"
    assert text.count(patch_text) == t  # every temporal patch stands alone behind its timestamp
    assert ids.count(tok.token_to_id(VIDEO_PAD)) == t * per_patch
    pos = prompt.position_ids[0, 0].tolist()
    assert all(b >= a for a, b in zip(pos, pos[1:]))  # the temporal row never goes back
    thinker = load_omni_thinker(path)
    with torch.no_grad():
        logits, _ = thinker(prompt.input_ids, pixel_values=prompt.pixel_values, image_grid_thw=prompt.image_grid_thw,
                            pixel_values_videos=prompt.pixel_values_videos, video_grid_thw=prompt.video_grid_thw,
                            position_ids=prompt.position_ids)
    assert torch.isfinite(logits).all() and logits.shape[1] == len(ids)
    with pytest.raises(TokenizerError, match="not supported in the qwen3.5-omni layout"):
        proc(user({"type": "video", "video": str(video), "use_audio_in_video": True}))
    with pytest.raises(TokenizerError, match="unknown prompt layout"):
        processor(hf, tok, layout="qwen4")
