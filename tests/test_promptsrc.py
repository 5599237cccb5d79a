"""PromptSRC (docs/methods/promptsrc.md): counts, teachers, the three agreement terms, Gaussian
prompt aggregation (weights, trajectory, what is evaluated and saved)."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from peftclip.adapters import IVLP, PromptSRC, get_adapter_class
from peftclip.adapters.promptsrc import (
    PROMPTSRC_TEMPLATES,
    gpa_weights,
    logit_agreement,
    text_teacher,
)
from peftclip.backbone import class_prompts, load_backbone, zero_shot_head
from peftclip.classifier import PeftClipClassifier
from peftclip.lightning.cli import PeftClipCLI
from peftclip.schedules import RunLength
from tests.helpers import step_context
from tests.test_coop import _vit_b_16

CLASSES = ["sea_lion", "dog", "golden retriever"]
TINY = {"text_depth": 2, "vision_depth": 2}


@pytest.mark.slow
@pytest.mark.parametrize(("depth", "expected"), [(9, 46_080), (3, 15_360)])
def test_parameter_counts_on_vit_b_16(depth, expected):
    adapter = PromptSRC(text_depth=depth, vision_depth=depth)
    adapter.attach(_vit_b_16())
    assert sum(p.numel() for p in adapter.parameters()) == expected


def test_only_the_prompts_train_and_no_teacher_is_saved(tiny_backbone):
    adapter = PromptSRC(**TINY)
    classifier = PeftClipClassifier(tiny_backbone, [adapter]).train()
    reference = IVLP(n_text=4, n_vision=4, **TINY)
    reference.attach(tiny_backbone)
    trainable = [name for name, p in adapter.named_parameters() if p.requires_grad]
    assert trainable == [name for name, _ in reference.named_parameters()]
    loss = adapter.extra_loss(
        step_context(classifier, CLASSES, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    )
    loss.backward()
    assert not adapter.teacher_text_features(CLASSES).requires_grad
    assert all(p.grad is not None for p in adapter.parameters())
    assert set(adapter.state_dict()) == {*trainable, "gpa_sum", "gpa_step"}
    assert adapter.gpa_sum.numel() == sum(p.numel() for p in adapter.parameters())
    assert get_adapter_class("promptsrc") is PromptSRC
    assert len(PROMPTSRC_TEMPLATES) == 60
    assert PROMPTSRC_TEMPLATES[0] == "a photo of a {}."
    assert PROMPTSRC_TEMPLATES[-1] == "itap of the {}."


class _ScaledTemplates:
    """The tiny backbone, with the features of the i-th encoded template scaled by scales[i]."""

    def __init__(self, backbone, scales):
        self.backbone, self.model, self.scales = backbone, backbone.model, list(scales)

    def tokenize(self, texts):
        return self.backbone.tokenize(texts)

    def encode_text_tokens(self, tokens):
        return self.scales.pop(0) * self.backbone.encode_text_tokens(tokens)


def test_the_text_teacher_averages_unnormalised_features(tiny_backbone):
    one = text_teacher(tiny_backbone, CLASSES, ["a photo of a {}."])
    # The teacher encodes on the plain path (once per class set, no gradient): compare it there.
    plain = zero_shot_head(tiny_backbone, CLASSES, ["a photo of a {}."], share_prefix=False)
    assert torch.allclose(one, plain)
    templates = ["a photo of a {}.", "itap of the {}."]
    with torch.no_grad():
        raw = [tiny_backbone.encode_text_tokens(tiny_backbone.tokenize(class_prompts(CLASSES, t)))
               for t in templates]  # fmt: skip
    # Norms 1 : 10, so the order of normalising and averaging matters.
    two = text_teacher(_ScaledTemplates(tiny_backbone, [1.0, 10.0]), CLASSES, templates)
    assert torch.allclose(two, F.normalize(raw[0] + 10 * raw[1], dim=-1), atol=1e-6)
    each = [F.normalize(features, dim=-1) for features in raw]
    normalised_first = F.normalize(each[0] + each[1], dim=-1)
    assert (two - normalised_first).abs().max() > 1e-3


def test_the_kl_term_is_the_batch_mean_kl_over_the_class_count():
    torch.manual_seed(2)
    logits, teacher = 5 * torch.randn(6, 11), 5 * torch.randn(6, 11)
    batchmean = F.kl_div(F.log_softmax(logits, -1), F.softmax(teacher, -1), reduction="batchmean")
    assert torch.allclose(logit_agreement(logits, teacher), batchmean / 11, atol=1e-6)
    assert torch.allclose(logit_agreement(logits, teacher, "batchmean"), batchmean, atol=1e-6)


def test_the_loss_matches_a_direct_computation(tiny_backbone):
    adapter = PromptSRC(**TINY, teacher_templates=["a photo of a {}.", "a sketch of the {}."])
    classifier = PeftClipClassifier(tiny_backbone, [adapter]).train()
    with torch.no_grad():
        for parameter in adapter.parameters():  # away from the init, as training would
            parameter.add_(0.05 * torch.randn_like(parameter))
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    context = step_context(classifier, CLASSES, images, labels)
    loss = adapter.extra_loss(context)
    with torch.no_grad():
        text_parts = [
            tiny_backbone.encode_text_tokens(tiny_backbone.tokenize(class_prompts(CLASSES, t)))
            for t in adapter.teacher_templates
        ]
        teacher_text = F.normalize(sum(text_parts) / 2, dim=-1)
        teacher_image = F.normalize(tiny_backbone.encode_image(images), dim=-1)
        text = F.normalize(context.text_features, dim=-1)
        image = F.normalize(context.image_features, dim=-1)
        l1_text = (text - teacher_text).abs().sum() / text.numel()
        l1_image = (image - teacher_image).abs().sum() / image.numel()
        scale = tiny_backbone.logit_scale
        p0 = torch.softmax(scale * teacher_image @ teacher_text.t(), -1)
        log_p = torch.log_softmax(context.logits, -1)
        kl = (p0 * (p0.log() - log_p)).sum() / context.logits.numel()
        expected = 25 * l1_text + 10 * l1_image + kl
    assert l1_text > 1e-3 and l1_image > 1e-3 and kl > 1e-6
    assert torch.allclose(loss, expected, atol=1e-6)


def test_without_vision_prompts_the_student_image_is_the_teacher_and_the_text_starts_at_it(
    tiny_backbone,
):
    adapter = PromptSRC(n_vision=0, text_depth=1, vision_depth=1)
    classifier = PeftClipClassifier(tiny_backbone, [adapter]).train()
    images = torch.randn(2, 3, 32, 32)
    outputs = classifier(images, CLASSES)
    assert torch.equal(outputs["image_features"], tiny_backbone.encode_image(images))
    zero_shot = zero_shot_head(tiny_backbone, CLASSES, ["a photo of a {}."])
    assert torch.allclose(F.normalize(outputs["text_features"], dim=-1), zero_shot, atol=1e-6)


@pytest.mark.parametrize(
    ("epochs", "mean", "std", "expected"),
    [
        (20, 15, 1, {15: 0.3989, 14: 0.2420, 16: 0.2420, 13: 0.0540, 17: 0.0540, 12: 0.0044}),
        (20, 6, 10, {1: 0.0554, 6: 0.0628, 20: 0.0236}),
        (50, 45, 5, {45: 0.0923}),
    ],
)
def test_gpa_weights_match_the_official_values(epochs, mean, std, expected):
    weights = gpa_weights(epochs, mean, std)
    assert abs(float(weights.sum()) - 1) < 1e-12
    for epoch, value in expected.items():
        assert round(float(weights[epoch - 1]), 4) == value
    if (mean, std) == (15, 1):
        assert float(weights[:10].max()) < 1e-4
    if (mean, std) == (6, 10):
        assert round(float(weights[:10].sum()), 3) == 0.602


def test_gpa_averages_a_trajectory_and_loads_the_average_after_the_last_epoch(tiny_backbone):
    adapter = PromptSRC(**TINY)
    adapter.attach(tiny_backbone)
    adapter.set_run_length(RunLength(total_steps=40, max_epochs=20))  # 2 steps per epoch
    with torch.no_grad():
        for step in range(40):
            epoch = step // 2 + 1
            for parameter in adapter.parameters():
                parameter.fill_(epoch)  # θ_e = e
            adapter.after_optimizer_step(step)
            if step < 39:
                assert adapter.ctx[0, 0].item() == epoch  # nothing loaded before the end
    expected = float((torch.arange(1, 21, dtype=torch.float64) * gpa_weights(20, 15, 1)).sum())
    assert round(expected, 3) == 15.0
    assert all(torch.allclose(p, torch.full_like(p, expected)) for p in adapter.parameters())


class _EpochPrompts(L.Callback):
    """The adapter tensors at the end of each epoch but the last (then GPA has loaded)."""

    def __init__(self):
        self.epochs = []

    def on_train_epoch_end(self, trainer, module):
        self.epochs.append({k: v.clone() for k, v in module.adapter_state_dict().items()})


def test_the_averaged_prompts_are_what_is_evaluated_and_saved(tmp_path):
    """GPA with nearly all weight on epoch 1: after three epochs the model and its checkpoint
    hold epoch 1's prompts, not the last epoch's."""
    record = _EpochPrompts()
    cli = PeftClipCLI(args=[
        "--config", "recipes/zeroshot/tiny_random.yaml", "--model.adapters+=promptsrc",
        *(f"--model.adapters.init_args.{k}={v}" for k, v in TINY.items()),
        "--model.adapters.init_args.gpa_mean=1", "--model.adapters.init_args.gpa_std=0.1",
        "--model.optimizer", "SGD", "--model.optimizer.lr", "1.0", "--data.shots", "2",
        "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "1",
        "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(tmp_path),
    ], run=False)  # fmt: skip
    cli.trainer.callbacks.append(record)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 3
    final = cli.model.adapter_state_dict()
    first, second = record.epochs[0], record.epochs[1]
    prompts = [key for key in final if not key.endswith(("gpa_sum", "gpa_step"))]
    assert all(torch.allclose(final[key], first[key], atol=1e-6) for key in prompts)
    assert any((second[key] - first[key]).abs().max() > 1e-4 for key in prompts)  # it trained
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(saved[key], final[key]) for key in prompts)


def test_full_state_gpa_averages_the_frozen_weights_too():
    backbone = load_backbone("peftclip-tiny-vit", init_seed=0)  # its weights get averaged
    original = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    adapter = PromptSRC(**TINY, gpa_scope="full_state")
    adapter.attach(backbone)
    adapter.set_run_length(RunLength(total_steps=20, max_epochs=20))
    with torch.no_grad():
        for step in range(20):
            for parameter in adapter.parameters():
                parameter.fill_(step + 1)
            adapter.after_optimizer_step(step)
    expected = float((torch.arange(1, 21, dtype=torch.float64) * gpa_weights(20, 15, 1)).sum())
    assert all(torch.allclose(p, torch.full_like(p, expected)) for p in adapter.parameters())
    averaged = backbone.model.state_dict()
    # Σ w_e · W = W up to the rounding of each product and sum (fp32 here), not bit for bit.
    assert all(torch.allclose(averaged[k], original[k], rtol=1e-5, atol=1e-6) for k in original)
    assert any(not torch.equal(averaged[k], original[k]) for k in original)
    assert float(adapter.gpa_sum.abs().sum()) == 0  # the fp32 prompt sum is the other scope's
