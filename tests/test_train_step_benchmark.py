"""The reference path of benchmarks/train_step.py computes what peftclip computes: the same class
text features (and so the same loss) from full-length prompts without any of the shortcuts."""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from peftclip.adapters import get_adapter_class
from peftclip.classifier import PeftClipClassifier

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "train_step.py"
CLASSES = ["dog", "sea lion", "golden retriever", "a rather long class name", "cat"]


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("train_step_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "method, kwargs",
    [
        ("zeroshot", None),
        ("coop", {"n_ctx": 16}),
        ("cocoop", {}),
        ("maple", {"prompt_depth": 2}),
        ("lora", {"r": 2}),
    ],
)
def test_the_reference_text_features_equal_peftclips(tiny_backbone, benchmark, method, kwargs):
    torch.manual_seed(0)
    adapters = [] if kwargs is None else [get_adapter_class(method)(**kwargs)]
    backbone = copy.deepcopy(tiny_backbone)  # LoRA wraps the backbone's layers in place
    classifier = PeftClipClassifier(backbone, adapters, templates=benchmark.TEMPLATE).train()
    for adapter in adapters:  # a LoRA update that is not zero, so the adapted weights matter
        for name, parameter in adapter.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.1)
    image_features = torch.randn(2, tiny_backbone.embed_dim)
    with torch.no_grad():
        ours = classifier.text_features(CLASSES, image_features=image_features)
        reference = benchmark.reference_text_features(classifier, CLASSES, image_features)
    # The reference runs all 77 positions; peftclip cuts after the last EOT and shares prefixes.
    assert ours.shape == reference.shape
    # Template heads come normalized (the ensemble mean), prompt learners' features not.
    normalize = torch.nn.functional.normalize
    torch.testing.assert_close(normalize(ours, dim=-1), normalize(reference, dim=-1))


@pytest.mark.parametrize(
    "method, kwargs",
    [("coop", {"n_ctx": 16}), ("cocoop", {}), ("maple", {"prompt_depth": 2}), ("kgcoop", {})],
)
def test_the_reference_step_in_chunks_gives_the_reference_steps_gradients(
    tiny_backbone, benchmark, method, kwargs
):
    # Its time stands for the reference's at 1000 classes: it must do the same step. In float64,
    # so that the upstream gradients, taken from peftclip's (equal-valued) forward, agree too.
    torch.manual_seed(0)
    adapter = get_adapter_class(method)(**kwargs)
    backbone = copy.deepcopy(tiny_backbone).double()
    classifier = PeftClipClassifier(backbone, [adapter], templates=benchmark.TEMPLATE)
    classifier = classifier.train().double()
    size = backbone.image_size
    images = torch.randn(2, 3, size, size, dtype=torch.float64)
    labels = torch.tensor([1, 4])

    def gradients(step) -> dict[str, torch.Tensor]:
        classifier.zero_grad()
        step()
        return {n: p.grad.clone() for n, p in classifier.named_parameters() if p.grad is not None}

    whole = gradients(
        lambda: benchmark._training_loss(
            classifier, CLASSES, images, labels, "reference", None
        ).backward()
    )
    upstream = benchmark._upstream_gradients(classifier, CLASSES, images, labels)
    chunked = gradients(
        lambda: benchmark._reference_step_in_chunks(classifier, CLASSES, images, upstream, 2)
    )
    assert whole.keys() == chunked.keys() and "adapters.0.ctx" in whole
    for name, grad in whole.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(chunked[name], grad, rtol=1e-9, atol=1e-12)
