"""CPU benchmark of one training step (forward + backward) of the demo Thinker LM, ours against transformers.

The model is the LM of the demo Thinker (`train.thinker_stages.demo_thinker_configs`: 6 layers, Gated DeltaNet 2 : 1
gated attention, 8 experts top-2 plus a shared expert, hidden 256) with a 2048 vocabulary; both implementations hold
the same random weights. Shapes are those the recipe trains on: the drill's batches of 64 short chats, the text and
S2 stages' batches. Each step is cross-entropy over every position, then backward; the table gives the median step
time, tokens per second, and how far apart the two implementations' losses and gradients are.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import hf_thinker, ours_like  # noqa: E402
from thinker_cpu import bench, hardware  # noqa: E402

from omnistream.thinker import ThinkerLM  # noqa: E402
from omnistream.train.thinker_stages import demo_thinker_configs  # noqa: E402


def step(model, ids: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss of next-token prediction over `ids` (B, S), backward; (loss, gradients by parameter name)."""
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids)[0] if isinstance(model, ThinkerLM) else model(input_ids=ids).logits
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def gap(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> float:
    """Largest gradient difference over parameters present in both, relative to the largest gradient."""
    from omnistream.weights import convert_state_dict

    mapped = convert_state_dict(theirs)
    common = [n for n in ours if n in mapped]
    if not common:
        raise RuntimeError("no parameter names in common between the two models' gradients")
    scale = max(ours[n].abs().max().item() for n in common)
    return max((ours[n] - mapped[n]).abs().max().item() for n in common) / scale


def main() -> None:
    """Parse options, time the step for each shape and print a markdown table."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shapes", nargs="+", default=["64x43", "16x40", "8x256", "2x2048"], metavar="BxS")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    cfg = demo_thinker_configs(2048)[0]
    start = time.perf_counter()
    eager = hf_thinker(cfg, args.seed).train()
    fast = hf_thinker(cfg, args.seed).train()
    fast.set_attn_implementation("sdpa")
    fast.set_experts_implementation("grouped_mm")
    models = {"omnistream": ours_like(eager).train(), "transformers (sdpa, grouped_mm)": fast,
              "transformers (eager, eager)": eager}
    out = [f"## Thinker LM training step on CPU (demo LM: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
           f"{cfg.num_experts} experts top-{cfg.num_experts_per_tok}, fp32)", "", f"Hardware: {hardware()}", "",
           "| batch x length | " + " | ".join(f"{n} ms (tok/s)" for n in models) +
           " | omnistream / transformers (sdpa, grouped_mm) | loss gap | gradient gap |",
           "|---|" + "---|" * (len(models) + 3)]
    for shape in args.shapes:
        b, s = (int(x) for x in shape.split("x"))
        ids = torch.randint(0, cfg.vocab_size, (b, s), generator=torch.Generator().manual_seed(args.seed))
        times, outs = bench({n: (lambda m=m: step(m, ids)) for n, m in models.items()}, args.repeats, warmup=1)
        (ours_loss, ours_grads), (hf_loss, hf_grads) = outs["omnistream"], outs["transformers (eager, eager)"]
        cells = [f"{times[n][0] * 1e3:.0f} ({b * s / times[n][0]:.0f})" for n in models]
        ratio = times["transformers (sdpa, grouped_mm)"][0] / times["omnistream"][0]
        out.append(f"| {b} x {s} | " + " | ".join(cells) + f" | {ratio:.2f}x | {abs(ours_loss - hf_loss):.1e} | "
                   f"{gap(ours_grads, hf_grads):.1e} |")
        print(out[-1], flush=True)
    out += ["", f"Medians of {args.repeats} interleaved repeats after a warm-up; gaps are against the eager "
            "reference (loss: absolute; gradients: largest difference over the largest gradient).",
            f"Total benchmark time: {time.perf_counter() - start:.0f} s"]
    print("\n".join(out))


if __name__ == "__main__":
    main()
