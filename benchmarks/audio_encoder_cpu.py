"""AuT encoder on CPU: throughput in x real time and peak memory for long audio (10 min .. 1 h), tiny and mid configs."""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time

import torch

from omnistream.audio.encoder import AudioEncoder
from omnistream.config import AudioConfig, qwen35_omni_audio, tiny_audio

FRAMES_PER_SECOND = 100


def configs() -> dict[str, AudioConfig]:
    """The tiny test encoder, and a mid-size one in each layout (N=3 Qwen3-Omni, N=4 Qwen3.5-Omni)."""
    mid = dict(d_model=256, encoder_layers=4, encoder_attention_heads=4, encoder_ffn_dim=1024,
               downsample_hidden_size=64, output_dim=512)
    return {"tiny (N=3)": tiny_audio(), "mid (N=3)": AudioConfig(**mid, n_window_infer=800),
            "mid (N=4)": qwen35_omni_audio(**mid)}


def run_one(name: str, seconds: int) -> None:
    """Child process: encode `seconds` of audio features once; print seconds taken and peak RSS growth in MB."""
    torch.manual_seed(0)
    model = AudioEncoder(configs()[name]).eval()
    frames = seconds * FRAMES_PER_SECOND
    feats = torch.randn(1, model.config.num_mel_bins, frames)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.inference_mode():
        start = time.perf_counter()
        out = model(feats, [frames])
        took = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{took:.3f} {(peak - base) / 1024:.1f} {out.shape[0]}")


def main() -> None:
    """Run each (config, length) in a fresh process so peak memory is measured cleanly; print a markdown table."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--minutes", type=int, nargs="+", default=[10, 30, 60])
    p.add_argument("--configs", nargs="+", default=list(configs()))
    p.add_argument("--child", nargs=2, metavar=("CONFIG", "SECONDS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        run_one(args.child[0], int(args.child[1]))
        return
    print(f"Hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print("\n| config | audio | tokens | encode s | x real time | peak memory growth MB | MB per audio minute |")
    print("|---|---|---|---|---|---|---|")
    for name in args.configs:
        for minutes in args.minutes:
            out = subprocess.run([sys.executable, __file__, "--child", name, str(minutes * 60)],
                                 capture_output=True, text=True, check=True).stdout.split()
            took, mb, tokens = float(out[0]), float(out[1]), int(out[2])
            print(f"| {name} | {minutes} min | {tokens} | {took:.2f} | {minutes * 60 / took:.0f}x | {mb:.0f} "
                  f"| {mb / minutes:.1f} |")


if __name__ == "__main__":
    main()
