"""Training step and evaluation of peftclip against the reference path and the image-tower bound.

For each method at its papers' batch size (CoOp 16 ctx batch 8, CoCoOp batch 1, MaPLe batch 4,
KgCoOp batch 8, CLIP-SVD and LoRA batch 32) and each class count, one training step (forward,
loss, backward to the trainable tensors; no optimizer update) is timed in four ways, each in a
fresh process so that its peak memory is its own:

* ``peftclip``: the classifier as a fit runs it (cut after the last EOT, shared-prefix text
  encoding), the image tower run on the images;
* ``cached``: the same with image features from the image-feature cache (frozen, unprompted
  image towers only: CoOp, CoCoOp, KgCoOp), what a run reads once its table is on disk;
* ``chunked``: ``peftclip`` with ``text_grad_chunk_size`` (CoOp, CoCoOp, MaPLe, KgCoOp), for
  the memory column;
* ``reference``: what the official implementations compute, written here on the same weights:
  every class prompt full length (77 tokens), no prefix sharing, no cut after the last EOT, the
  image tower every step, CoCoOp one image at a time;
* ``bound``: the image tower alone on the same images, a bare batched forward — forward and
  backward (to the prompts or adapted weights) for methods whose image tower needs gradients
  (MaPLe, CLIP-SVD, LoRA).

Evaluation (zero-shot CLIP and CoOp) is timed per test batch against the bare image forward;
the reference rebuilds the class text features for every test batch, as the official code does.

Times are medians of ``--steps`` steps after one warm-up step; ratios are within one run.

    python benchmarks/train_step.py                                   # ViT-B-16, 100 and 1000
    python benchmarks/train_step.py --classes 100 --steps 2 --methods coop maple
    python benchmarks/train_step.py --arch ViT-S-16 --classes 100 300 --max-batch 8
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
import torch.nn.functional as F
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from peftclip.adapters import StepContext, get_adapter_class
from peftclip.backbone import FrozenClip, load_backbone
from peftclip.classifier import PeftClipClassifier

TEMPLATE = "a photo of a {}."

#: method → (adapter arguments, batch size, whose image tower needs gradients)
METHODS = {
    "coop": ({"n_ctx": 16}, 8, False),
    "cocoop": ({}, 1, False),
    "maple": ({}, 4, True),
    "kgcoop": ({}, 8, False),
    "clip_svd": ({}, 32, True),
    # CLIP-LoRA's setting (recipes/lora): r 2, α 1, α/√r, q/k/v of both towers, dropout 0.25.
    "lora": (
        {
            "r": 2,
            "alpha": 1.0,
            "dropout": 0.25,
            "scaling": "alpha/sqrt(r)",
            "layers": ["q", "k", "v"],
        },
        32,
        True,
    ),
}
#: Methods whose image tower is frozen and unprompted (their features can be cached).
CACHEABLE = ("coop", "cocoop", "kgcoop")
#: Methods that build their class prompts (text_grad_chunk_size applies).
CHUNKABLE = ("coop", "cocoop", "maple", "kgcoop")
#: Methods evaluated: zero-shot CLIP and a prompt learner.
EVALUATED = ("zeroshot", "coop")


# ------------------------------------------------------------------------- the reference path
def reference_encode_text(
    backbone: FrozenClip, embeddings: torch.Tensor, pool_index: torch.Tensor, deep_prompts=None
) -> torch.Tensor:
    """The official text encoders: all ``context_length`` positions through every block, deep
    prompts replacing positions ``1 … n`` at the input of their block."""
    model = backbone.model
    x = embeddings.to(model.transformer.get_cast_dtype()) + model.positional_embedding
    deep_prompts = list(deep_prompts or [])
    for index, block in enumerate(model.transformer.resblocks):
        prompt = deep_prompts[index] if index < len(deep_prompts) else None
        if prompt is not None:
            prompt = prompt.to(x.dtype).unsqueeze(0).expand(len(x), -1, -1)
            x = torch.cat([x[:, :1], prompt, x[:, 1 + prompt.shape[1] :]], dim=1)
        x = block(x, attn_mask=model.attn_mask)
    return backbone.pool_text(x, pool_index)


def reference_text_features(classifier: PeftClipClassifier, classnames, image_features):
    """Class text features as the official code computes them (per image for CoCoOp)."""
    inputs = _reference_text_input(classifier, classnames, image_features)
    return _reference_encode(classifier.backbone, *inputs)


def _reference_text_input(classifier: PeftClipClassifier, classnames, image_features):
    """``(embeddings, pool_index, deep prompts)`` of the official prompts; CoCoOp's embeddings
    are per image ``(batch, classes, L, width)``."""
    backbone = classifier.backbone
    adapter = classifier._owner("text_input")
    if adapter is None:  # template prompts (zero-shot, CLIP-SVD, LoRA)
        tokens = backbone.tokenize([TEMPLATE.format(name) for name in classnames])
        return backbone.token_embeddings(tokens), backbone.pool_index(tokens), None
    text_input = adapter.text_input(backbone, classnames, image_features)
    return text_input.embeddings, text_input.pool_index, classifier.prompts().text_deep


def _reference_encode(backbone: FrozenClip, embeddings, pool_index, deep_prompts):
    if embeddings.dim() == 4:  # CoCoOp: the official loop over the images
        return torch.stack(
            [reference_encode_text(backbone, per_image, pool_index) for per_image in embeddings]
        )
    return reference_encode_text(backbone, embeddings, pool_index, deep_prompts)


def _upstream_gradients(classifier, classnames, images, labels):
    """What the loss sends back to the image and the text features, computed with peftclip's
    (equal-valued) forward before a chunked reference step's timer starts."""
    with torch.no_grad():
        outputs = classifier(images, classnames)
    image_features = outputs["image_features"].detach().requires_grad_()
    text_features = outputs["text_features"].detach().requires_grad_()
    logits = classifier.backbone.logits(image_features, text_features, classifier.logit_scale)
    loss = _loss(classifier, classnames, images, labels, logits, image_features, text_features)
    return torch.autograd.grad(loss, [image_features, text_features])


def _reference_step_in_chunks(classifier, classnames, images, upstream, chunk: int) -> None:
    """The reference step's forward and backward, ``chunk`` classes of the text tower at a time
    (the same operations: every prompt is its own sequence), so that 1000 full-length classes
    fit this machine's memory; ``upstream`` from :func:`_upstream_gradients`."""
    image_grad, text_grad = upstream
    backbone = classifier.backbone
    prompts = classifier.prompts()
    image_features = backbone.encode_image(images, prompts.vision_input, prompts.vision_deep)
    embeddings, pool_index, deep = _reference_text_input(classifier, classnames, image_features)
    for start in range(0, len(classnames), chunk):
        part = slice(start, start + chunk)  # the class dimension, per image for CoCoOp too
        features = _reference_encode(backbone, embeddings[..., part, :, :], pool_index[part], deep)
        # The prompts' graph (context, Meta-Net) serves every chunk.
        features.backward(text_grad[..., part, :], retain_graph=True)
    if image_features.requires_grad:
        image_features.backward(image_grad)


# --------------------------------------------------------------------------------- one process
WEIGHT_SPACE = ("clip_svd", "lora")


def _build(arch: str, method: str, mode: str, chunk: int | None) -> PeftClipClassifier:
    torch.manual_seed(0)
    backbone = load_backbone(arch)
    bare = method == "zeroshot" or (mode == "bound" and method in WEIGHT_SPACE)
    kwargs = dict(METHODS.get(method, ({},))[0])
    if method == "maple":  # the paper's 9 prompted blocks, or all of a smaller tower
        kwargs["prompt_depth"] = min(9, backbone.text_depth, backbone.vision_depth)
    adapters = [] if bare else [get_adapter_class(method)(**kwargs)]
    return PeftClipClassifier(
        backbone,
        adapters,
        templates=TEMPLATE,
        text_grad_chunk_size=chunk if mode == "chunked" else None,
    )


def _training_loss(classifier, classnames, images, labels, mode, cached) -> torch.Tensor:
    """Cross-entropy plus the adapters' extra losses, as the training step computes them."""
    backbone = classifier.backbone
    if mode == "reference":
        prompts = classifier.prompts()
        image_features = backbone.encode_image(images, prompts.vision_input, prompts.vision_deep)
        text_features = reference_text_features(classifier, classnames, image_features)
        logits = backbone.logits(image_features, text_features, classifier.logit_scale)
    else:
        outputs = classifier(None if mode == "cached" else images, classnames, cached)
        logits, image_features = outputs["logits"], outputs["image_features"]
        text_features = outputs["text_features"]
    images = None if mode == "cached" else images
    return _loss(classifier, classnames, images, labels, logits, image_features, text_features)


def _loss(classifier, classnames, images, labels, logits, image_features, text_features):
    """Cross-entropy plus the adapters' extra losses (KgCoOp's knowledge term)."""
    context = StepContext(
        images=images,
        labels=labels,
        logits=logits,
        image_features=image_features,
        text_features=text_features,
        classnames=classnames,
        frozen_head=lambda templates=None: classifier.frozen_head(classnames),
    )
    loss = F.cross_entropy(logits, labels)
    for adapter in classifier.adapters:
        extra = adapter.extra_loss(context)
        loss = loss if extra is None else loss + extra
    return loss


def _bound(classifier: PeftClipClassifier, images: torch.Tensor, needs_grad: bool) -> None:
    """The frozen image tower alone: a bare forward, or forward and backward to the prompts
    (MaPLe's shapes, as leaves) or to the input (weight-space methods)."""
    backbone = classifier.backbone
    if not needs_grad:
        with torch.no_grad():
            backbone.encode_image(images)
        return
    prompts = classifier.prompts()
    if prompts.vision_input is None:
        backbone.encode_image(images.requires_grad_()).sum().backward()
        return
    leaf = prompts.vision_input.detach().requires_grad_()
    deep = [p.detach().requires_grad_() if p is not None else None for p in prompts.vision_deep]
    backbone.encode_image(images, leaf, deep).sum().backward()


def _measure(
    arch: str, method: str, classes: int, mode: str, steps: int, chunk: int, batch: int
) -> dict:
    """Runs in a child process: median seconds of a step and the process's peak memory.

    ``reference_chunks`` is the reference step with ``chunk`` classes of the text tower at a
    time: its time is the reference's, its memory is not.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    classifier = _build(arch, method, mode, chunk).to(device)
    backbone = classifier.backbone
    needs_grad = METHODS.get(method, ({}, 0, False))[2]
    generator = torch.Generator().manual_seed(1)
    size = backbone.image_size
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(classes, (batch,), generator=generator).to(device)
    classnames = list(IMAGENET_CLASSNAMES[:classes])
    cached = None
    if mode == "cached":  # the table's rows; reading them is an index
        with torch.no_grad():
            cached = backbone.encode_image(images)
    parameters = [p for p in classifier.parameters() if p.requires_grad]

    def step() -> float:
        if mode == "reference_chunks":  # untimed: what the loss sends back to the features
            upstream = _upstream_gradients(classifier.train(), classnames, images, labels)
        start = time.perf_counter()
        if mode == "reference_chunks":
            _reference_step_in_chunks(classifier, classnames, images, upstream, chunk)
        elif mode.startswith("eval"):
            classifier.eval()
            with torch.no_grad():
                if mode == "eval_bound":
                    backbone.encode_image(images)
                elif mode == "eval_reference":  # text features per test batch, full length
                    features = backbone.encode_image(images)
                    text = reference_text_features(classifier, classnames, features)
                    backbone.logits(features, text)
                else:
                    classifier(images, classnames)
        elif mode == "bound":
            _bound(classifier.train(), images, needs_grad)
        else:
            classifier.train()
            _training_loss(classifier, classnames, images, labels, mode, cached).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        for parameter in parameters:
            parameter.grad = None
        images.grad = None
        return time.perf_counter() - start

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first = step()  # warm-up: allocations, class tensors, the evaluation head, frozen heads
    seconds = statistics.median(step() for _ in range(steps))
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "first": first, "peak": peak}


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="ViT-B-16", help="open_clip model, random init")
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument(
        "--max-batch", type=int, default=None, help="cap every method's batch size (say so)"
    )
    parser.add_argument("--chunk", type=int, default=50, help="text_grad_chunk_size, chunked")
    parser.add_argument(
        "--reference-chunk",
        type=int,
        default=200,
        help="above this many classes the reference's text tower runs this many classes at a "
        "time (same operations; its memory grows with 77 × classes): its time, not its memory",
    )
    parser.add_argument("--eval-batch", type=int, default=32)
    parser.add_argument("--no-eval", action="store_true")
    args = parser.parse_args()
    batches = {name: min(batch, args.max_batch or batch) for name, (_, batch, _) in METHODS.items()}

    context = multiprocessing.get_context("spawn")

    def run(method: str, classes: int, mode: str, batch: int) -> dict:
        chunk = args.reference_chunk if mode == "reference_chunks" else args.chunk
        with context.Pool(1) as pool:  # a fresh process: its peak memory is this mode's own
            arguments = (args.arch, method, classes, mode, args.steps, chunk, batch)
            result = pool.apply(_measure, arguments)
        print(f"  {method} {classes} {mode}: {result}", flush=True)
        return result

    load_before = _uptime()
    rows, eval_rows = [], []
    for classes in args.classes:
        for method in args.methods:
            modes = ["peftclip", "bound"]
            modes.append("reference" if classes <= args.reference_chunk else "reference_chunks")
            if method in CACHEABLE:
                modes.append("cached")
            if method in CHUNKABLE and args.chunk < classes:
                modes.append("chunked")
            result = {mode: run(method, classes, mode, batches[method]) for mode in modes}
            rows.append((method, classes, result))
        for method in () if args.no_eval else EVALUATED:
            modes = ("eval", "eval_reference", "eval_bound")
            result = {mode: run(method, classes, mode, args.eval_batch) for mode in modes}
            eval_rows.append((method, classes, result))
    load_after = _uptime()
    _print_tables(args, batches, rows, eval_rows, load_before, load_after)


def _print_tables(args, batches, rows, eval_rows, load_before: str, load_after: str) -> None:
    gpu = torch.cuda.is_available()
    where = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    memory = "peak CUDA MiB" if gpu else "peak RSS MiB"
    print(
        f"\n{args.arch}, random init, fp32, {where}, torch {torch.__version__}; median of "
        f"{args.steps} steps after a warm-up; {memory}; chunked: text_grad_chunk_size "
        f"{args.chunk}; reference above {args.reference_chunk} classes: its text tower "
        f"{args.reference_chunk} classes at a time (marked *; the same operations, its memory "
        "not measured)\n"
    )
    print(
        "| method | batch | classes | peftclip s | reference s | × faster | image-tower bound s | "
        "step / bound | cached-features s | cached × faster | memory: peftclip | chunked | "
        "reference |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def cell(result: dict, mode: str, key: str, fmt: str) -> str:
        return format(result[mode][key], fmt) if mode in result else "–"

    for method, classes, result in rows:
        ours, bound = result["peftclip"]["seconds"], result["bound"]["seconds"]
        in_chunks = "reference_chunks" in result
        reference = result.get("reference_chunks" if in_chunks else "reference", {}).get("seconds")
        cached = result.get("cached", {}).get("seconds")

        def faster(seconds: float | None, reference: float | None = reference) -> str:
            return f"{reference / seconds:.1f}×" if reference and seconds else "–"

        bound_kind = " (fwd+bwd)" if METHODS[method][2] else ""
        cells = [
            method,
            str(batches[method]),
            str(classes),
            f"{ours:.2f}",
            f"{reference:.2f}{'*' if in_chunks else ''}" if reference else "–",
            faster(ours),
            f"{bound:.2f}{bound_kind}",
            f"{ours / bound:.2f}",
            cell(result, "cached", "seconds", ".2f"),
            faster(cached),
            *(cell(result, mode, "peak", ".0f") for mode in ("peftclip", "chunked", "reference")),
        ]
        print(f"| {' | '.join(cells)} |")
    if eval_rows:
        print(
            f"\nEvaluation, {args.eval_batch} images per test batch: seconds per batch once the "
            "head is built (peftclip builds it once per class set; its first batch, with the "
            "head, in brackets), the reference rebuilding it per batch.\n"
        )
        print("| method | classes | peftclip s | reference s | bound s | throughput / bound |")
        print("|---|---:|---:|---:|---:|---:|")
        for method, classes, result in eval_rows:
            ours, bound = result["eval"], result["eval_bound"]["seconds"]
            print(
                f"| {method} | {classes} | {ours['seconds']:.2f} ({ours['first']:.2f}) | "
                f"{result['eval_reference']['seconds']:.2f} | {bound:.2f} | "
                f"{100 * bound / ours['seconds']:.0f} % |"
            )
    print(f"\nload before: {load_before}\nload after:  {load_after}")


if __name__ == "__main__":
    main()
