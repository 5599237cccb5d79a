"""The reference path of benchmarks/train_step.py computes what peftclip computes: the same class
text features (and so the same loss) from full-length prompts without any of the shortcuts."""

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
    classifier = PeftClipClassifier(tiny_backbone, adapters, templates=benchmark.TEMPLATE).train()
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
