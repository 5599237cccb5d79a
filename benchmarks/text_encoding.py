"""Text-tower training step, shared-prefix encoding against the plain path.

One step = the class text features of a prompt learner, forward and backward to its
parameters (the image tower is not run). The plain path runs every class prompt through every
block; the shared path encodes the prompt start all classes share once (docs/performance.md).
Cases: CoOp with 16 random context vectors at 100 and 1000 ImageNet class names, CoCoOp
(``a photo of a``, batch 1) at 100. Each measurement runs in a fresh process so its peak RSS is
its own; the time is the median of ``--repeats`` steps after one warm-up step.

    python benchmarks/text_encoding.py                       # ViT-B-16 text tower, CPU
    python benchmarks/text_encoding.py --device cuda --repeats 10
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import subprocess
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from peftclip.adapters import CoCoOp, CoOp
from peftclip.backbone import load_backbone
from peftclip.classifier import PeftClipClassifier

#: (label, adapter factory, classes, images per step; 0: not image-conditioned)
CASES = (
    ("CoOp 16 ctx", lambda: CoOp(n_ctx=16), 100, 0),
    ("CoOp 16 ctx", lambda: CoOp(n_ctx=16), 1000, 0),
    ("CoCoOp, batch 1", lambda: CoCoOp(), 100, 1),
)


def _measure(model: str, device: str, case: int, share: bool, repeats: int) -> dict:
    """Runs in a child process: the step's median seconds and the process's peak memory."""
    _, factory, classes, batch = CASES[case]
    torch.manual_seed(0)
    backbone = load_backbone(model).to(device)
    classifier = PeftClipClassifier(backbone, [factory()], share_text_prefix=share).to(device)
    classifier.train()
    classnames = list(IMAGENET_CLASSNAMES[:classes])
    image_features = torch.randn(batch, backbone.embed_dim, device=device) if batch else None
    parameters = [p for p in classifier.parameters() if p.requires_grad]

    def step() -> float:
        start = time.perf_counter()
        features = classifier.text_features(classnames, image_features=image_features)
        features.float().square().mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        for parameter in parameters:
            parameter.grad = None
        return time.perf_counter() - start

    built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up (allocations, the adapter's class tensors)
    seconds = statistics.median(step() for _ in range(repeats))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        return {"seconds": seconds, "memory": torch.cuda.max_memory_allocated() / 2**20}
    return {"seconds": seconds, "memory": peak, "step_memory": peak - built}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    context = multiprocessing.get_context("spawn")
    results = {}
    for case in range(len(CASES)):
        for share in (True, False):
            with context.Pool(1) as pool:
                results[case, share] = pool.apply(
                    _measure, (args.model, args.device, case, share, args.repeats)
                )
    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    if args.device == "cuda":
        device, memory = torch.cuda.get_device_name(), "peak CUDA MiB"
    else:
        device, memory = f"CPU ({torch.get_num_threads()} threads)", "peak RSS MiB (step's part)"
    print(
        f"{args.model} text tower, random init, fp32, {device}, torch {torch.__version__}; "
        f"median of {args.repeats} steps (forward + backward)\n"
    )
    print(f"| case | classes | shared s | plain s | speed-up | {memory}: shared | plain |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for case, (label, _, classes, _) in enumerate(CASES):
        shared, plain = results[case, True], results[case, False]

        def memory_cell(result: dict) -> str:
            extra = f" ({result['step_memory']:.0f})" if "step_memory" in result else ""
            return f"{result['memory']:.0f}{extra}"

        print(
            f"| {label} | {classes} | {shared['seconds']:.3f} | {plain['seconds']:.3f} | "
            f"{plain['seconds'] / shared['seconds']:.2f}× | {memory_cell(shared)} | "
            f"{memory_cell(plain)} |"
        )
    print(f"\nload before: {load_before}\nload after:  {load_after}")


if __name__ == "__main__":
    main()
