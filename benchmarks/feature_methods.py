"""Per-cell fit + evaluation time of GDA and Tip-Adapter on cached features (CPU).

A synthetic 100-class feature set of CLIP's size (d = 512): 16 shots × 10 views of training
features, a few-shot val sample of 4 per class and a 50-per-class test split, as a feature cache
would serve them. One cell = ``fit_from_data`` (the estimator or the cache and its search) plus
scoring the test split. Prints the machine's load (``uptime``) and the times, best of
``--repeats``.

    python benchmarks/feature_methods.py [--classes 100] [--shots 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import subprocess
import time

import torch
import torch.nn.functional as F

from peftclip.adapters import GDA, HeadInput, SelectionSet, TipAdapter, TrainingFeatures


def synthetic_cell(classes: int, shots: int, views: int, dim: int = 512):
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, dim, generator=generator)

    def split(per_class: int, passes: int = 1):
        labels = torch.arange(classes).repeat_interleave(per_class)
        noise = torch.randn(passes, len(labels), dim, generator=generator)
        return centres[labels] + 2.0 * noise, labels

    train, labels = split(shots, views)
    val, val_labels = split(4)
    test, test_labels = split(50)
    text = F.normalize(centres + torch.randn(classes, dim, generator=generator), dim=-1)
    selection = SelectionSet("fewshot_val", val[0], val_labels, torch.tensor(100.0), text)
    names = [f"class {i}" for i in range(classes)]
    data = TrainingFeatures(train, labels, names, lambda templates=None: text, lambda _: selection)
    return data, HeadInput(test[0], text, torch.tensor(100.0), names), test_labels


def cell_seconds(make, data, test_inputs, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        adapter = make()
        adapter.fit_from_data(data)
        with torch.no_grad():
            if hasattr(adapter, "weight"):
                adapter.head(test_inputs)
            else:
                adapter.extra_logits(test_inputs)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    data, test_inputs, _ = synthetic_cell(args.classes, args.shots, args.views)
    print(
        f"{args.classes} classes, {args.shots} shots × {args.views} views, d = 512, "
        f"test {len(test_inputs.image_features)} images"
    )
    methods = {
        "gda (fewshot estimator, 7 alphas)": lambda: GDA(views=args.views),
        "tip_adapter (200 × 20 grid)": lambda: TipAdapter(views=args.views),
    }
    for name, make in methods.items():
        seconds = cell_seconds(make, data, test_inputs, args.repeats)
        print(f"{name:<36} {seconds * 1000:8.1f} ms per cell (fit + search + test)")


if __name__ == "__main__":
    main()
