"""Inference cost of the weight-space adapters, adapted vs merged, against the frozen model.

Baseline in the same run: the frozen backbone (plain ``nn.Linear`` layers). Each adapter is
timed in its adapted form (extra low-rank path / materialized ``W(s)``; CLIP-SVD also in the
anchor's factorized form) and after ``merge()``, which should cost exactly the baseline.
Image tower, no grad.

    python benchmarks/weight_space_inference.py                          # world model, CPU
    python benchmarks/weight_space_inference.py --model ViT-B-16 --device cuda --batch 64
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from peftclip.adapters import ClipSVD, CoDyRA, LoRA
from peftclip.backbone import load_backbone
from peftclip.classifier import PeftClipClassifier


def _throughput(backbone, images, repeats: int) -> float:
    def run():
        with torch.no_grad():
            backbone.encode_image(images)
        if images.is_cuda:
            torch.cuda.synchronize()

    run()  # warm-up (and CLIP-SVD's cached W(s))
    best = float("inf")
    for _ in range(3):  # best of three rounds: a shared CPU is noisy
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        best = min(best, time.perf_counter() - start)
    return repeats * len(images) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="peftclip-world-tiny")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    def fresh():
        return load_backbone(args.model, args.pretrained, init_seed=0).to(args.device)

    frozen = fresh()
    size = frozen.image_size
    images = torch.randn(args.batch, 3, size, size, device=args.device)
    baseline = _throughput(frozen, images, args.repeats)
    print(f"{args.model}, {args.device}, batch {args.batch}: images/s (ratio to frozen)")
    print(f"  {'frozen (baseline)':42s} {baseline:10.1f}  1.00x")
    builds = {
        "clip_svd (materialized W(s))": ClipSVD,
        "clip_svd (factorized, anchor)": lambda: ClipSVD(factorized=True),
        "lora r 16, six kinds": lambda: LoRA(r=16),
        "codyra r 16, six kinds": lambda: CoDyRA(r=16),
    }
    for label, build in builds.items():
        backbone = fresh()
        adapter = build()
        PeftClipClassifier(backbone, [adapter]).to(args.device).eval()
        for state in ("adapted", "merged"):
            if state == "merged":
                adapter.merge()
            speed = _throughput(backbone, images, args.repeats)
            print(f"  {label + ', ' + state:42s} {speed:10.1f}  {speed / baseline:.2f}x")


if __name__ == "__main__":
    main()
