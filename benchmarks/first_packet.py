"""Speech-out latency: omnistream's streaming SpeechSession vs transformers' Qwen3-Omni generate(return_audio=True)."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from omnistream.audio.code2wav import Code2Wav, Code2WavConfig
from omnistream.config import AudioConfig, TextConfig, qwen3_omni_30b_a3b, tiny_omni
from omnistream.engine.session import SAMPLE_RATE, AudioChunk, SpeechSession, SpeechTokens
from omnistream.talker import Talker, TalkerConfig, convert_talker_state_dict
from omnistream.thinker import Thinker
from omnistream.weights import _empty, convert_thinker_state_dict, load_state_into

RELEASE_CODEC = dict(codec_pad_id=2148, codec_bos_id=2149, codec_eos_token_id=2150, codec_nothink_id=2155,
                     codec_think_bos_id=2156, codec_think_eos_id=2157,
                     speaker_id={"chelsie": 2301, "ethan": 2302, "aiden": 2303})
TINY_CODEC = dict(codec_pad_id=1070, codec_bos_id=1071, codec_eos_token_id=1072, codec_nothink_id=1073,
                  codec_think_bos_id=1074, codec_think_eos_id=1075, speaker_id={"ethan": 1080, "chelsie": 1081})
STAGES = ("preprocessing", "thinker_first_token", "talker_prefill", "talker_first_frame", "mtp_per_frame",
          "code2wav_per_frame", "first_audio_packet")
COUNTS = ("frames", "stalls")  # session.timings entries that count rather than time
ROPE = dict(rope_type="default", rope_theta=1e6)


def shape(vocab: int, hidden: int, inter: int, layers: int, heads: int, kv: int, head_dim: int, **kw) -> dict:
    """A decoder's sizes under transformers' field names."""
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim, **kw)


def moe(experts: int, top: int, inter: int, shared: int, mrope: list[int]) -> dict:
    """A talker backbone's MoE sizes and rotary (MRoPE split)."""
    return dict(num_experts=experts, num_experts_per_tok=top, moe_intermediate_size=inter, norm_topk_prob=True,
                shared_expert_intermediate_size=shared, rope_parameters=dict(ROPE, mrope_section=mrope))


PRESETS = {  # thinker text, talker text, code predictor, code2wav, codec ids, accept_hidden_layer, newline id
    "tiny": (tiny_omni(), shape(1088, 32, 40, 2, 4, 2, 8, **moe(4, 2, 16, 24, [2, 1, 1])),
             shape(64, 32, 48, 2, 4, 2, 8),
             dict(codebook_size=64, num_quantizers=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, intermediate_size=48, decoder_dim=32), TINY_CODEC, 2, 10),
    "mid": (tiny_omni(vocab_size=32000, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                      num_key_value_heads=2, head_dim=64, num_experts=16, num_experts_per_tok=4,
                      moe_intermediate_size=256, intermediate_size=1024, mrope_section=[12, 10, 10]),
            shape(3072, 256, 512, 4, 4, 2, 64, **moe(16, 4, 128, 256, [12, 10, 10])),
            shape(2048, 256, 768, 3, 4, 2, 64),
            dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=768, decoder_dim=256), RELEASE_CODEC, 3, 198),
    # Qwen3-Omni-30B-A3B (../shared/REFERENCE_NOTES.md §2.8-2.10, §3); code2wav: the release = the class defaults
    "30b": (qwen3_omni_30b_a3b(), shape(3072, 1024, 2048, 20, 16, 2, 128, **moe(128, 6, 384, 768, [24, 20, 20])),
            shape(2048, 1024, 3072, 5, 16, 8, 128), {}, RELEASE_CODEC, 24, 198),
}


def hf_config(size: str):
    """The transformers Qwen3OmniMoeConfig of a preset (1-layer audio/vision towers: the prompt is text only)."""
    from transformers.models.qwen3_omni_moe import configuration_qwen3_omni_moe as oc

    text, talker, cp, c2w, codec, accept, _ = PRESETS[size]
    v, h = text.vocab_size, text.hidden_size
    if size == "30b":
        tokens = SpeechTokens()
        mm = dict(vision_start_token_id=151652, audio_token_id=151675, image_token_id=151655, video_token_id=151656,
                  audio_start_token_id=151669)
    else:
        tokens = SpeechTokens(*range(v - 16, v - 8))
        mm = dict(zip(("vision_start_token_id", "audio_token_id", "image_token_id", "video_token_id",
                       "audio_start_token_id"), range(v - 5, v)))
    audio = dict(num_mel_bins=20, d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                 output_dim=h, n_window=50, n_window_infer=100, downsample_hidden_size=16)
    vision = dict(depth=1, hidden_size=32, num_heads=2, intermediate_size=32, out_hidden_size=h, spatial_merge_size=1,
                  deepstack_visual_indexes=[0], patch_size=2, temporal_patch_size=2)
    q = c2w.get("num_quantizers", 16)
    common = dict(rms_norm_eps=1e-6, max_position_embeddings=65536)
    talker_cfg = dict(text_config=dict(talker, **common),
                      code_predictor_config=dict(cp, num_code_groups=q, rope_parameters=ROPE, **common),
                      num_code_groups=q, thinker_hidden_size=h, accept_hidden_layer=accept, spatial_merge_size=2,
                      position_id_per_seconds=13, **codec, **mm)
    thinker = dict(text_config=text.to_hf(), audio_config=audio, vision_config=vision, **mm)
    return oc.Qwen3OmniMoeConfig(thinker_config=thinker, talker_config=talker_cfg, code2wav_config=c2w,
                                 enable_audio_output=True, **vars(tokens)), tokens


def randomize(module: torch.nn.Module, seed: int, gain: float) -> None:
    """Seeded noise: vectors +-0.1 around their init, weights N(0, gain^2/fan_in) (half the gain in code2wav: clips)."""
    g = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=g, device=p.device)
            fan_in = p.shape[-1] if p.dim() == 2 or "experts" in name else p[0].numel()
            std = gain / fan_in ** 0.5 / (2 if name.startswith("code2wav.") else 1)
            p.copy_(p + noise * 0.1 if p.dim() == 1 else noise * std)


def build_reference(cfg, args):
    """transformers' model with its default attention and experts implementations, randomized."""
    from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as om

    torch.manual_seed(args.seed)
    with torch.device(args.device):
        hf = om.Qwen3OmniMoeForConditionalGeneration._from_config(cfg, dtype=getattr(torch, args.dtype))
    randomize(hf, args.seed, args.gain)
    with torch.no_grad():  # LayerScale / ConvNeXt gamma near 1 so every code2wav path counts
        for name, p in hf.code2wav.named_parameters():
            if name.endswith(("layer_scale.scale", "gamma")):
                p.add_(1.0)
    return hf.eval()


def build_ours(hf, args) -> tuple[Thinker, Talker, Code2Wav]:
    """omnistream Thinker / Talker / Code2Wav holding the reference's weights."""
    dtype, cfg = getattr(torch, args.dtype), hf.config.to_dict()
    t = cfg["thinker_config"]
    thinker = _empty(lambda: Thinker(TextConfig.from_hf(t), AudioConfig.from_hf(t), t["audio_token_id"],
                                     image_token_id=t["image_token_id"], video_token_id=t["video_token_id"]),
                     dtype, args.device)
    load_state_into(thinker, convert_thinker_state_dict(hf.thinker.state_dict(), towers=("audio_tower",)))
    talker = _empty(lambda: Talker(TalkerConfig.from_hf(cfg)), dtype, args.device)
    load_state_into(talker, convert_talker_state_dict(hf.talker.state_dict()), "reference")
    c2w = _empty(lambda: Code2Wav(Code2WavConfig.from_hf(cfg["code2wav_config"])), dtype, args.device)
    load_state_into(c2w, hf.code2wav.state_dict(), "reference code2wav")
    return thinker.eval(), talker.eval(), c2w.eval()


def prompt(tokens: SpeechTokens, newline: int, vocab: int, seed: int) -> torch.Tensor:
    """A 45-token chat prompt: system and user turns of random words, then '<|im_start|>assistant\\n'."""
    g = torch.Generator().manual_seed(seed)
    words = lambda n: torch.randint(0, min(vocab - 32, 1000), (n,), generator=g).tolist()  # noqa: E731
    return torch.tensor([[tokens.im_start_token_id, tokens.system_token_id, newline, *words(8),
                          tokens.im_end_token_id, newline, tokens.im_start_token_id, tokens.user_token_id, newline,
                          *words(24), tokens.im_end_token_id, newline, tokens.im_start_token_id,
                          tokens.assistant_token_id, newline]])


def sync(device: str) -> None:
    """Wait for queued GPU work, so wall clocks include it."""
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, args) -> list:
    """`warmup` untimed calls, then `repeats` results of fn()."""
    for _ in range(args.warmup):
        fn()
    return [fn() for _ in range(args.repeats)]


def reference_runs(hf, ids, tokens, args):
    """Timed generate() runs: metric dicts, and the last run's thinker tokens, codes (Q, T) and waveform."""
    captured, original = {}, hf.code2wav.chunked_decode

    def hook(codes, *a, **k):
        captured["codes"] = codes[0].clone()
        return original(codes, *a, **k)

    def run():
        t0 = time.perf_counter()
        seq, wav = hf.generate(input_ids=ids, return_audio=True, thinker_max_new_tokens=args.thinker_tokens,
                               thinker_eos_token_id=tokens.im_end_token_id, talker_max_new_tokens=args.talker_frames,
                               talker_do_sample=False, speaker="Ethan")
        sync(args.device)
        total = time.perf_counter() - t0
        captured.update(tokens=seq[0, ids.shape[1]:].tolist(), wav=wav[0, 0].float().cpu().numpy())
        return {"first audio": total, "total": total, "audio": wav.shape[-1] / SAMPLE_RATE,
                "frames": captured["codes"].shape[-1], "tokens": len(captured["tokens"])}

    hf.code2wav.chunked_decode = hook
    try:
        runs = timed(run, args)
    finally:
        del hf.code2wav.chunked_decode
    return runs, captured["tokens"], captured["codes"].cpu(), captured["wav"]


def our_runs(session: SpeechSession, ids, args):
    """Timed speak() runs: metric dicts (with the session's stage timings), and the last run's tokens, codes, pcm."""
    out = {}

    def run():
        t0, first, pcm, text = time.perf_counter(), None, [], []
        for ev in session.speak(ids):
            if isinstance(ev, AudioChunk):
                first = time.perf_counter() - t0 if first is None else first
                pcm.append(ev.pcm)
            else:
                text.append(ev.token_id)
        sync(args.device)
        total = time.perf_counter() - t0
        out.update(tokens=text, pcm=np.concatenate(pcm))
        return {**session.timings, "first audio": first, "total": total, "audio": out["pcm"].size / SAMPLE_RATE,
                "frames": session.codes.shape[1], "tokens": len(text)}

    return timed(run, args), out["tokens"], session.codes.cpu(), out["pcm"]


def stats(runs: list[dict], key: str) -> tuple[float, float, float] | None:
    """(median, min, max) of one metric over runs (None where absent)."""
    vals = [r[key] for r in runs if r.get(key) is not None]
    return (statistics.median(vals), min(vals), max(vals)) if vals else None


def table(ref: list[dict], ours: list[dict], markdown: bool) -> list[str]:
    """Rows: latency, totals, audio, RTF, counts, each session stage; columns: transformers, omnistream, ratio."""
    for runs in (ref, ours):
        for r in runs:
            r["RTF"] = r["total"] / r["audio"] if r["audio"] else None
    extra = sorted(k for k in ours[0] if k not in (*STAGES, "first audio", "total", "audio", "tokens", "RTF",
                                                   "thinker_total", "frames"))
    rows = [("time to first audio, ms (min-max)", "first audio", "range"), ("total, ms (min-max)", "total", "range"),
            ("audio produced", "audio", "s"), ("RTF (total / audio)", "RTF", "x"), ("thinker tokens", "tokens", "n"),
            ("codec frames", "frames", "n"), ("stage: thinker_total", "thinker_total", "ms")]
    rows += [(f"stage: {k}", k, "n" if k in COUNTS else "ms") for k in (*STAGES, *extra)]
    fmt = {"range": lambda v: f"{v[0] * 1e3:.1f} ({v[1] * 1e3:.0f}-{v[2] * 1e3:.0f})",
           "ms": lambda v: f"{v[0] * 1e3:.1f} ms", "s": lambda v: f"{v[0]:.2f} s", "x": lambda v: f"{v[0]:.3f}",
           "n": lambda v: f"{v[0]:.0f}"}
    cells = [("metric (median of runs)", "transformers", "omnistream", "ratio (transformers / omnistream)")]
    for label, key, unit in rows:
        a, b = stats(ref, key), stats(ours, key)
        ratio = f"{a[0] / b[0]:.2f}x" if a and b and b[0] and unit in ("range", "ms", "x") else "n/a"
        cells.append((label, *(fmt[unit](v) if v else "n/a" for v in (a, b)), ratio))
    if markdown:
        return ["| " + " | ".join(c) + " |" for c in cells[:1] + [("---",) * 4] + cells[1:]]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    return ["  ".join(c[i].ljust(widths[i]) for i in range(4)) for c in cells]


def hardware(args) -> str:
    """CPU (or GPU) model, cores, torch threads, library versions and dtype, on one line."""
    cpu = platform.processor() or "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    gpu = f"{torch.cuda.get_device_name()}, " if args.device == "cuda" else ""
    return (f"{gpu}{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"transformers {transformers.__version__}, Python {platform.python_version()}, {args.dtype}; "
            f"load average {os.getloadavg()[0]:.2f} at the end")


def main() -> None:
    """Build both models on the same weights, time each, check the codes agree, print the table."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", choices=["tiny", "mid", "30b"], default="tiny")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--thinker-tokens", type=int, default=24, help="thinker_max_new_tokens")
    p.add_argument("--talker-frames", type=int, default=64, help="talker_max_new_tokens (frames = this - 1 at most)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gain", type=float, default=1.0, help="random weights ~ N(0, gain^2 / fan_in)")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--frames-per-chunk", type=int, default=1,
                   help="ours: Code2Wav renders the first frame alone, then 2, 4, ... up to this many at once")
    args = p.parse_args()
    if args.size == "30b" and (args.device != "cuda" or args.dtype != "bfloat16"):
        p.error("--size 30b (68 GB of random bf16 weights) needs --device cuda --dtype bfloat16")
    torch.set_num_threads(args.threads)

    cfg, tokens = hf_config(args.size)
    ids = prompt(tokens, PRESETS[args.size][-1], cfg.thinker_config.text_config.vocab_size, args.seed).to(args.device)
    hf = build_reference(cfg, args)
    impl = (f"attention {hf.config._attn_implementation!r}, experts "
            f"{hf.thinker.config.text_config._experts_implementation!r} (talker "
            f"{hf.talker.config.text_config._experts_implementation!r})")
    ref, ref_tokens, ref_codes, ref_wav = reference_runs(hf, ids, tokens, args)
    hf.to("cpu")  # only one copy of the weights on the accelerator at a time
    if args.device == "cuda":
        torch.cuda.empty_cache()
    thinker, talker, c2w = build_ours(hf, args)
    del hf
    session = SpeechSession(thinker, talker, c2w, tokens, speaker="Ethan", thinker_eos_token_id=tokens.im_end_token_id,
                            thinker_max_new_tokens=args.thinker_tokens, talker_max_new_tokens=args.talker_frames,
                            max_frames_per_chunk=args.frames_per_chunk)
    ours, our_tokens, our_codes, pcm = our_runs(session, ids, args)

    tc = talker.config
    print(f"## Speech out, size {args.size}: thinker {thinker.lm.config.num_hidden_layers} layers hidden "
          f"{thinker.lm.config.hidden_size} ({thinker.lm.config.num_experts} experts top-"
          f"{thinker.lm.config.num_experts_per_tok}), talker {tc.text.num_hidden_layers} layers hidden "
          f"{tc.text.hidden_size} ({tc.text.num_experts} experts top-{tc.text.num_experts_per_tok} + shared), "
          f"code predictor {tc.code_predictor.num_hidden_layers} layers, {tc.num_code_groups} codebooks, code2wav "
          f"{c2w.config.num_hidden_layers} layers hidden {c2w.config.hidden_size} decoder_dim {c2w.config.decoder_dim}")
    print(f"\nHardware: {hardware(args)}")
    print(f"Prompt {ids.shape[1]} tokens; thinker_max_new_tokens {args.thinker_tokens}, talker_max_new_tokens "
          f"{args.talker_frames}; greedy; {args.warmup} warm-up, median of {args.repeats}; weights N(0, "
          f"{args.gain}^2/fan_in)\ntransformers: {impl}; omnistream: SpeechSession, eager modules")
    same = our_codes.shape == ref_codes.shape and torch.equal(our_codes, ref_codes)
    delta = float(np.abs(pcm - ref_wav).max()) if pcm.shape == ref_wav.shape else float("nan")
    print(f"Equivalence: thinker tokens {'equal' if our_tokens == ref_tokens else 'DIFFER'}; codes "
          f"{'equal' if same else 'DIFFER'} (ours {tuple(our_codes.shape)}, transformers {tuple(ref_codes.shape)}); "
          f"waveform max |delta| {delta:.2e} (peak |x| {np.abs(ref_wav).max():.2f})")
    if not same:
        print("WARNING: codes differ; under sdpa / grouped_mm tiny float differences can flip a greedy argmax, "
              "after which both continue on different paths (timings still compare equal amounts of work only "
              "if the frame counts match)")
    if ref_codes.shape[-1] < args.talker_frames - 1:
        print(f"note: the talker stopped on codec EOS after {ref_codes.shape[-1]} frames")
    print("")
    print("\n".join(table(ref, ours, args.markdown)))


if __name__ == "__main__":
    main()
