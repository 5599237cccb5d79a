"""Training step of the weight-space adapters: W(s) once per step against once per call.

One step = logits of a batch of images against every class prompt (the text tower is adapted,
so all classes are encoded with gradients), cross-entropy, backward. Baseline in the same run:
the per-call path (``PeftClipClassifier._forward`` outside the step scope, i.e. CLIP-SVD's
``U diag(s) Vᵀ`` built on every call of a layer, as before). The text tower calls each layer
once for the shared prompt prefix and once per chunk of ``--chunk`` class tails. Also the
frozen bound: the same step with nothing trainable but the towers' inputs (forward, and
backward to the inputs only). Median of ``--repeats`` steps after a warm-up; load stated.

    python benchmarks/weight_space_step.py                             # world model, CPU
    python benchmarks/weight_space_step.py --model ViT-B-16 --batch 32 --classes 100
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from peftclip.adapters import ClipSVD, LoRA
from peftclip.backbone import load_backbone, template_head
from peftclip.classifier import PeftClipClassifier


def _median_step(forward, trainable, images, classnames, labels, repeats: int) -> float:
    def step() -> float:
        start = time.perf_counter()
        logits = forward(images, classnames)["logits"]
        torch.nn.functional.cross_entropy(logits, labels).backward()
        if images.is_cuda:
            torch.cuda.synchronize()
        for tensor in trainable:
            tensor.grad = None
        return time.perf_counter() - start

    step()  # warm-up
    return statistics.median(step() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="peftclip-world-tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--chunk", type=int, nargs="+", default=[256, 25])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    classnames = list(IMAGENET_CLASSNAMES[: args.classes])
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"{args.model}, {args.device}, batch {args.batch}, {args.classes} classes, "
        f"{torch.get_num_threads()} threads, load {load}: median step s"
    )

    def build(adapters, chunk):
        torch.manual_seed(0)
        backbone = load_backbone(args.model, init_seed=0).to(args.device)
        return PeftClipClassifier(backbone, adapters, text_chunk_size=chunk).to(args.device)

    torch.manual_seed(0)
    frozen = build([], args.chunk[0]).train()
    size = frozen.backbone.image_size
    images = torch.randn(args.batch, 3, size, size, device=args.device)
    labels = torch.randint(0, args.classes, (args.batch,), device=args.device)
    # The bound: frozen towers, forward and backward to their inputs (token embeddings,
    # images), every class encoded each step like an adapted text tower.
    inputs = [frozen.backbone.model.token_embedding.weight, images.requires_grad_(True)]
    for tensor in inputs:
        tensor.requires_grad_(True)

    def frozen_step(images, classnames):  # every class encoded each step, as when adapted
        backbone = frozen.backbone
        text = template_head(backbone, classnames, frozen.templates, args.chunk[0], True)
        logits = backbone.logits(backbone.encode_image(images), text, frozen.logit_scale)
        return {"logits": logits}

    bound = _median_step(frozen_step, inputs, images, classnames, labels, args.repeats)
    images.requires_grad_(False)
    print(f"  {'frozen towers, backward to inputs (bound)':52s} {bound:7.3f}")
    builds = {"clip_svd": lambda: ClipSVD(cache=False), "lora r 16": lambda: LoRA(r=16)}
    for chunk in args.chunk:
        for label, adapter in builds.items():
            classifier = build([adapter()], chunk).train()
            trainable = [p for p in classifier.parameters() if p.requires_grad]
            per_call = _median_step(
                classifier._forward, trainable, images, classnames, labels, args.repeats
            )
            once = _median_step(classifier, trainable, images, classnames, labels, args.repeats)
            name = f"{label}, text chunk {chunk}"
            print(
                f"  {name + ', per call':52s} {per_call:7.3f}  {per_call / bound:5.2f}x bound\n"
                f"  {name + ', once per step':52s} {once:7.3f}  {once / bound:5.2f}x bound  "
                f"{per_call / once:5.2f}x faster"
            )


if __name__ == "__main__":
    main()
