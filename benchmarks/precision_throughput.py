"""Image-tower throughput of the split-attention backbone, fp32 vs bf16-mixed (+16-mixed on GPU).

Baseline in the same run: open_clip's stock model (fused ``batch_first`` nn.MultiheadAttention),
which under CPU bf16 autocast is several times *slower* than fp32. ViT-B-16 at random init.
Two modes: ``inference`` (no grad) and ``train`` (backward to the input, as when prompts or
adapters sit inside a frozen tower; the weights themselves get no gradient).

    python benchmarks/precision_throughput.py                 # CPU
    python benchmarks/precision_throughput.py --device cuda   # GPU (adds 16-mixed)
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip
import torch

from peftclip.backbone import load_backbone


def _throughput(encode, images, device: str, dtype, repeats: int, train: bool) -> float:
    def run():
        inputs = images.clone().requires_grad_(train)
        with torch.set_grad_enabled(train), torch.autocast(device, dtype, enabled=bool(dtype)):
            features = encode(inputs)
        if train:
            features.float().sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up (allocations, kernel selection)
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return repeats * len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    split = load_backbone(args.model).to(args.device)
    with torch.random.fork_rng():
        stock = open_clip.create_model(args.model).eval().to(args.device)
    stock.requires_grad_(False)
    images = torch.randn(args.batch, 3, 224, 224, device=args.device)
    precisions = {"32-true": None, "bf16-mixed": torch.bfloat16}
    if args.device == "cuda":
        precisions["16-mixed"] = torch.float16
    encoders = {"open_clip MHA": stock.encode_image, "peftclip split": split.encode_image}

    rows = []
    for mode in ("inference", "train"):
        for label, dtype in precisions.items():
            for name, encode in encoders.items():
                value = _throughput(
                    encode, images, args.device, dtype, args.repeats, mode == "train"
                )
                rows.append((mode, name, label, value))

    if args.device == "cuda":
        device = torch.cuda.get_device_name()
    else:
        device = f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.model} random init, batch {args.batch}, {device}, torch {torch.__version__}\n")
    print("| mode | attention | precision | images/s | vs open_clip fp32, same mode |")
    print("|---|---|---|---:|---:|")
    for mode, name, label, value in rows:
        baseline = next(row[3] for row in rows if row[0] == mode)
        print(f"| {mode} | {name} | {label} | {value:.1f} | {value / baseline:.2f}× |")


if __name__ == "__main__":
    main()
