"""CPU benchmark of the omnistream Thinker LM against transformers' Qwen3.5-MoE on the same random weights."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import hf_thinker, ours_like, randomize  # noqa: E402

from omnistream.config import FULL, LINEAR, bench_hybrid  # noqa: E402
from omnistream.engine import generate  # noqa: E402
from omnistream.thinker import ThinkerLM  # noqa: E402


def hardware() -> str:
    """CPU model, core count, threads and library versions, on one line."""
    cpu = platform.processor() or "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"transformers {transformers.__version__}, Python {platform.python_version()}")


def bench(fns: dict, repeats: int, warmup: int) -> tuple[dict, dict]:
    """Warm each callable up, then time `repeats` interleaved rounds; (median, min, max) seconds and last output."""
    outs = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            outs[name] = fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t)
    return {name: (statistics.median(ts), min(ts), max(ts)) for name, ts in times.items()}, outs


def fast_reference(cfg, seed: int, probe: torch.Tensor):
    """The reference with transformers' CPU defaults (sdpa, grouped_mm experts); eager experts if grouped_mm fails."""
    hf = hf_thinker(cfg, seed)
    hf.set_attn_implementation("sdpa")
    experts = "grouped_mm"
    try:
        hf.set_experts_implementation(experts)
        hf(input_ids=probe)
    except Exception as e:  # noqa: BLE001 - any kernel failure means "not available here"
        print(f"note: experts_implementation='grouped_mm' failed ({type(e).__name__}: {e}); using 'eager'")
        experts = "eager"
        hf.set_experts_implementation(experts)
    return hf, f"transformers (sdpa, {experts})"


def hf_generate(hf, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy transformers generate of exactly n new tokens; returns only the new ones (B, n)."""
    out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                      do_sample=False)
    return out[:, ids.shape[1]:]


def prefill(model, ids: torch.Tensor, chunk: int, extra: int = 0) -> torch.Tensor:
    """Prefill a fresh cache with the prompt (ours: chunked, room for `extra` tokens; transformers: one forward)."""
    if isinstance(model, ThinkerLM):
        return model.prefill(ids, model.new_cache(ids.shape[0], ids.shape[1] + extra), chunk_size=chunk)
    return model(input_ids=ids, logits_to_keep=1).logits


def random_ids(cfg, length: int, seed: int) -> torch.Tensor:
    """A (1, length) prompt of random token ids."""
    return torch.randint(0, cfg.vocab_size, (1, length), generator=torch.Generator().manual_seed(seed))


def decode_table(models: dict, cfg, args) -> list[str]:
    """Whole greedy generate plus separately timed prefill, per model; per-token decode = (generate - prefill)/(n-1)."""
    ids, n = random_ids(cfg, args.prompt, args.seed), args.new_tokens
    gen = {name: (lambda m=m: generate(m, ids, max_new_tokens=n, prefill_chunk=args.chunk).tokens)
           if isinstance(m, ThinkerLM) else (lambda m=m: hf_generate(m, ids, n)) for name, m in models.items()}
    pre = {name: (lambda m=m: prefill(m, ids, args.chunk, n)) for name, m in models.items()}
    t_gen, tokens = bench(gen, args.repeats, args.warmup)
    t_pre, _ = bench(pre, args.repeats, args.warmup)
    ours = next(iter(models))
    rows = [f"Decode, batch 1, {args.prompt}-token prompt, {n} new tokens (greedy), median of {args.repeats}", "",
            "| implementation | generate s (min-max) | end-to-end tok/s | prefill ms | decode ms/token | decode tok/s "
            "| same tokens as omnistream |", "|---|---|---|---|---|---|---|"]
    speed = {}
    for name in models:
        (gen_s, lo, hi), pre_s = t_gen[name], t_pre[name][0]
        per_tok = max(gen_s - pre_s, 1e-9) / (n - 1)
        speed[name] = (n / gen_s, 1 / per_tok)
        same = torch.equal(tokens[name], tokens[ours])
        rows.append(f"| {name} | {gen_s:.3f} ({lo:.2f}-{hi:.2f}) | {speed[name][0]:.1f} | {pre_s * 1e3:.1f} "
                    f"| {per_tok * 1e3:.2f} | {speed[name][1]:.1f} | {'yes' if same else 'NO'} |")
    rows.append("")
    mine = [name for name in models if name.startswith("omnistream")]
    for a in mine:
        for b in (name for name in models if name not in mine):
            rows.append(f"- ratio {a} / {b}: end-to-end {speed[a][0] / speed[b][0]:.2f}x, "
                        f"decode-only {speed[a][1] / speed[b][1]:.2f}x")
    return rows


def prefill_table(models: dict, cfg, args) -> list[str]:
    """Prefill throughput: our chunked prefill vs one transformers forward, same prompt."""
    names = list(models)
    rows = [f"Prefill, batch 1, omnistream chunk_size={args.chunk}, median of {args.repeats}", "",
            "| tokens | " + " | ".join(f"{n} tok/s" for n in names) + " | "
            + " | ".join(f"omnistream / {n}" for n in names[1:]) + " |",
            "|---" * (2 * len(names)) + "|"]
    for length in args.prefill_lengths:
        ids = random_ids(cfg, length, args.seed)
        t, _ = bench({name: (lambda m=m: prefill(m, ids, args.chunk)) for name, m in models.items()},
                     args.repeats, args.warmup)
        rate = {name: length / t[name][0] for name in names}
        rows.append(f"| {length} | " + " | ".join(f"{rate[n]:.0f}" for n in names) + " | "
                    + " | ".join(f"{rate[names[0]] / rate[n]:.2f}x" for n in names[1:]) + " |")
    return rows


def long_table(cfg, args) -> list[str]:
    """Our chunked prefill at long contexts: hybrid layout vs all-full-attention (and all-DeltaNet) of the same size."""
    n = cfg.num_hidden_layers
    layouts = {"hybrid 3:1": cfg, "full attention": cfg.replace(layer_types=[FULL] * n)}
    if args.all_deltanet:
        layouts["all DeltaNet"] = cfg.replace(layer_types=[LINEAR] * n)
    lengths = args.long_lengths
    rows = [f"Long prefill (omnistream only), batch 1, chunk_size={args.chunk}, one run per length after a warm-up",
            "", "| tokens | " + " | ".join(f"{name} s | growth" for name in layouts) + " | full / hybrid |",
            "|---" * (2 * len(layouts) + 2) + "|"]
    secs = {}
    for name, c in layouts.items():
        model = ThinkerLM(c.replace(max_position_embeddings=max(c.max_position_embeddings, *lengths)))
        randomize(model, args.seed)
        model.eval()
        prefill(model, random_ids(c, min(lengths), args.seed), args.chunk)
        for length in lengths:
            ids = random_ids(c, length, args.seed)
            secs[name, length] = bench({name: lambda: prefill(model, ids, args.chunk)}, 1, 0)[0][name][0]
            print(f"  long prefill {name} {length}: {secs[name, length]:.2f} s", file=sys.stderr)
        del model
    for i, length in enumerate(lengths):
        cells = []
        for name in layouts:
            growth = f"{secs[name, length] / secs[name, lengths[i - 1]]:.2f}x" if i else "-"
            cells.append(f"{secs[name, length]:.2f} | {growth}")
        ratio = secs["full attention", length] / secs["hybrid 3:1", length]
        rows.append(f"| {length} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    steps = ", ".join(f"{b / a:.0f}x" for a, b in zip(lengths, lengths[1:]))
    rows += ["", f"- growth = time / time at the previous length; the token count grows {steps} (linear cost)."]
    return rows


def weight_floor(model: ThinkerLM, args) -> list[str]:
    """Time one token through every weight matrix a decode step reads (k routed experts per MoE layer)."""
    k = model.config.num_experts_per_tok
    mats = []
    for name, p in model.named_parameters():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            mats += list(p[:k])  # as many routed experts as a token visits
        elif p.dim() == 2 and "embed_tokens" not in name:
            mats.append(p)
    inputs = [torch.ones(1, w.shape[1], dtype=w.dtype) for w in mats]
    t = bench({"floor": lambda: [F.linear(x, w) for x, w in zip(inputs, mats)]}, args.repeats, args.warmup)[0]
    mb = sum(w.numel() * w.element_size() for w in mats) / 1e6
    secs = t["floor"][0]
    return [f"- {args.dtype} weight-streaming floor of one decode step (one GEMV per weight matrix it reads, "
            f"{mb:.0f} MB): {secs * 1e3:.2f} ms = {mb / 1e3 / secs:.1f} GB/s, i.e. at most {1 / secs:.0f} decode tok/s"]


def profile_decode(model: ThinkerLM, cfg, args) -> list[str]:
    """torch.profiler table of our per-token decode, top ops by self CPU time."""
    from torch.profiler import profile

    cache = model.new_cache(1, args.prompt + 2 * args.profile + 1)
    token = model.prefill(random_ids(cfg, args.prompt, args.seed), cache).argmax(-1)
    for _ in range(args.profile):
        token = model.decode(token, cache).argmax(-1)
    with profile() as prof:
        for _ in range(args.profile):
            token = model.decode(token, cache).argmax(-1)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    return [f"omnistream decode profile, {args.profile} steps:", "", "```", table, "```"]


def main() -> None:
    """Parse options, run the three measurements and print markdown tables."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat: a smoke run of under a minute")
    p.add_argument("--prompt", type=int, default=32, help="decode prompt length")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated in the decode benchmark")
    p.add_argument("--prefill-lengths", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--long-lengths", type=int, nargs="*", default=[4096, 16384, 32768],
                   help="hybrid vs full-attention prefill lengths (none to skip)")
    p.add_argument("--all-deltanet", action=argparse.BooleanOptionalAction, default=True,
                   help="add an all-DeltaNet layout to the long-prefill table as a linear-cost control")
    p.add_argument("--chunk", type=int, default=4096, help="omnistream prefill chunk size")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--eager", action=argparse.BooleanOptionalAction, default=True,
                   help="also time transformers with eager attention and eager experts")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS", help="profile this many omnistream decode steps")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="also time omnistream with its torch.compile'd decode step")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="weights and activations of every model in the decode and prefill tables")
    args = p.parse_args()
    if args.quick:  # smaller defaults; options given explicitly still win
        p.set_defaults(new_tokens=16, prefill_lengths=[256], long_lengths=[512, 2048], repeats=1, chunk=1024)
        args = p.parse_args()
    torch.set_num_threads(args.threads)

    cfg = bench_hybrid()
    start = time.perf_counter()
    with torch.inference_mode():
        eager = hf_thinker(cfg, args.seed)
        fast, fast_name = fast_reference(cfg, args.seed, random_ids(cfg, 8, args.seed))
        models = {"omnistream": ours_like(eager), fast_name: fast}
        if args.eager:
            models["transformers (eager, eager)"] = eager
        if args.compile:  # same weights, decode step compiled; warmed up (compiled) by the first bench round
            models = {"omnistream": models["omnistream"],
                      "omnistream (compiled decode)": ours_like(eager).compile_decode(), **models}
        for model in models.values():
            model.to(getattr(torch, args.dtype))
        out = [f"## Thinker LM on CPU ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
               f"{cfg.num_experts} experts top-{cfg.num_experts_per_tok}, {args.dtype})", "",
               f"Hardware: {hardware()}", ""]
        out += decode_table(models, cfg, args) + weight_floor(models["omnistream"], args) + [""]
        uncompiled = {name: m for name, m in models.items() if "compiled" not in name}  # prefill is never compiled
        out += prefill_table(uncompiled, cfg, args) + [""]
        if args.long_lengths:
            out += long_table(cfg, args) + [""]
        if args.profile:
            out += profile_decode(models["omnistream"], cfg, args) + [""]
    out.append(f"Total benchmark time: {time.perf_counter() - start:.0f} s")
    print("\n".join(out))


if __name__ == "__main__":
    main()
