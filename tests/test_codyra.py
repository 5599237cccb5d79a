"""CoDyRA: the proximal step, the rank schedule, pruning, merge-and-reset, the text→image loss."""

import pytest
import torch

from peftclip.adapters import CoDyRA, StepContext
from peftclip.adapters.codyra import codyra_code_threshold, soft_threshold
from peftclip.backbone import load_backbone
from peftclip.classifier import PeftClipClassifier
from peftclip.lightning.cli import PeftClipCLI

CLASSES = ["red square", "green circle", "blue star"]


@pytest.fixture
def backbone():
    return load_backbone("peftclip-tiny-vit", init_seed=0)


def test_proximal_operators_match_the_spec_examples():
    g = torch.tensor([-0.009, -0.011, 0.004, 0.02])
    expected_soft = torch.tensor([-0.004, -0.006, 0.0, 0.015])
    expected_code = torch.tensor([0.0, -0.006, 0.0, 0.015])  # the anchor's 2κ dead zone
    assert torch.allclose(soft_threshold(g, 0.005), expected_soft, atol=1e-7)
    assert torch.allclose(codyra_code_threshold(g, 0.005), expected_code, atol=1e-7)
    assert soft_threshold(g, 0.005)[2] == 0  # exactly zero, not tiny


def test_rank_schedule_for_500_iterations():
    adapter = CoDyRA(iterations=500)
    assert all(adapter.kappa(t) is None for t in range(0, 251))  # dense phase: t <= 250
    kappa_max = 0.005
    assert adapter.kappa(251) == pytest.approx(kappa_max * 1 / 49)  # index 1 set at t = 250
    assert adapter.kappa(254) == pytest.approx(kappa_max * 1 / 49)
    assert adapter.kappa(255) == pytest.approx(kappa_max * 2 / 49)
    assert adapter.kappa(490) == pytest.approx(kappa_max)
    assert adapter.kappa(495) == pytest.approx(kappa_max)  # capped at index 49


def test_proximal_steps_zero_small_gates_and_shrink_the_rest(backbone):
    adapter = CoDyRA(r=8, iterations=4, dense_fraction=0.5, kappa_max=0.5, kappa_steps=2)
    PeftClipClassifier(backbone, [adapter])
    before = {key: site.g.detach().clone() for key, site in adapter.sites.items()}
    for step in range(3):  # t = 0, 1, 2: dense (t <= 2)
        adapter.after_optimizer_step(step)
    assert all(torch.equal(site.g, before[key]) for key, site in adapter.sites.items())
    kappa = adapter.kappa(3)
    assert kappa == pytest.approx(0.5)
    adapter.after_optimizer_step(3)
    for key, site in adapter.sites.items():
        g = before[key]
        small = g.abs() <= kappa
        assert torch.all(site.g[small] == 0)
        assert torch.allclose(site.g[~small], g[~small] - kappa * g[~small].sign(), atol=1e-6)


def test_pruning_removes_exactly_the_zero_gates_and_keeps_outputs(backbone):
    adapter = CoDyRA(r=6)
    classifier = PeftClipClassifier(backbone, [adapter]).eval()
    with torch.no_grad():
        for site in adapter.sites.values():
            site.B.normal_(std=0.05)
            site.g[::2] = 0  # ranks 0, 2, 4 dead
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = classifier(images, CLASSES)["logits"]
        survivors = {key: site.g[site.g != 0].clone() for key, site in adapter.sites.items()}
        adapter.prune()
        after = classifier(images, CLASSES)["logits"]
    assert torch.allclose(after, before, atol=1e-5)
    for key, site in adapter.sites.items():
        assert torch.equal(site.g, survivors[key]) and site.A.shape[0] == site.B.shape[1] == 3
    assert set(adapter.live_ranks().values()) == {3}
    # A pruned checkpoint loads into a freshly built (full-rank) adapter.
    fresh = CoDyRA(r=6)
    PeftClipClassifier(load_backbone("peftclip-tiny-vit", init_seed=0), [fresh])
    fresh.load_state_dict(adapter.state_dict())
    assert fresh.live_ranks() == adapter.live_ranks()


def test_end_task_merges_survivors_and_restarts_at_identity(backbone):
    adapter = CoDyRA(r=4)
    classifier = PeftClipClassifier(backbone, [adapter]).eval()
    with torch.no_grad():
        for site in adapter.sites.values():
            site.B.normal_(std=0.05)
        adapter.iteration.fill_(7)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = classifier(images, CLASSES)["logits"]
        adapter.end_task(0)
        after = classifier(images, CLASSES)["logits"]
    assert torch.allclose(after, before, atol=1e-5)
    assert int(adapter.iteration) == 0 and int(adapter.task) == 1
    assert all(torch.count_nonzero(site.B) == 0 for site in adapter.sites.values())
    assert all(site.g.requires_grad for site in adapter.sites.values())


def _context(logits, labels):
    features = torch.zeros(len(labels), 4)
    return StepContext(
        images=torch.zeros(len(labels), 3, 32, 32), labels=labels, logits=logits,
        image_features=features, text_features=features, classnames=CLASSES[:3],
        frozen_head=lambda templates=None: features,
    )  # fmt: skip


def test_text_to_image_loss_is_the_anchor_reduction(backbone):
    adapter = CoDyRA(r=2)
    PeftClipClassifier(backbone, [adapter]).train()
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2]])
    labels = torch.tensor([0, 0])
    loss = adapter.extra_loss(_context(logits, labels))
    # Class 0 row: both images are positives (un-normalized multi-hot); rows 1, 2 add 0.
    row0 = -torch.log_softmax(logits[:, 0], dim=0).sum()
    assert loss == pytest.approx(float(row0) / 3)
    text_only = CoDyRA(r=2, towers="text")
    PeftClipClassifier(load_backbone("peftclip-tiny-vit", init_seed=0), [text_only]).train()
    assert text_only.extra_loss(_context(logits, labels)) is None


def test_schedule_counter_and_live_ranks_go_into_the_checkpoint(tmp_path):
    cli = PeftClipCLI(args=[
        "fit", "--config", "recipes/zeroshot/tiny_random.yaml", "--model.adapters+=codyra",
        "--model.adapters.init_args.r=4", "--model.adapters.init_args.iterations=4",
        "--model.adapters.init_args.kappa_max=5.0", "--data.shots", "2",
        "--trainer.max_steps", "4", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_checkpointing", "true", "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    adapter = cli.model.adapters[0]
    assert int(adapter.iteration) == 4
    assert sum(adapter.live_ranks().values()) < 4 * len(adapter.sites)  # κ = 5 kills gates
    checkpoint = torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=False)
    summary = checkpoint["peftclip"]["summaries"]["codyra"]
    assert summary["live_rank_mean"] == pytest.approx(
        sum(adapter.live_ranks().values()) / len(adapter.sites)
    )
    assert checkpoint["state_dict"]["classifier.adapters.0.iteration"] == 4


def test_a_checkpoint_after_task_boundaries_restores_every_task_on_a_fresh_clip():
    """Finished tasks live in the frozen weights; the adapter state must bring them back."""
    adapter = CoDyRA(r=4)
    classifier = PeftClipClassifier(load_backbone("peftclip-tiny-vit", init_seed=0), [adapter])
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for task in range(2):  # two finished tasks, some ranks dead
            for site in adapter.sites.values():
                site.B.normal_(std=0.05)
                site.g[0] = 0
            adapter.end_task(task)
        for site in adapter.sites.values():  # the current task, mid-training
            site.B.normal_(std=0.05)
        expected = classifier.eval()(images, CLASSES)["logits"]
    assert all(u.A.shape[0] == 2 * 3 for u in adapter.merged_updates.values())  # live ranks only

    fresh = CoDyRA(r=4)
    restored = PeftClipClassifier(load_backbone("peftclip-tiny-vit", init_seed=0), [fresh]).eval()
    fresh.load_state_dict(adapter.state_dict())
    with torch.no_grad():
        assert torch.allclose(restored(images, CLASSES)["logits"], expected, atol=1e-5)
        fresh.load_state_dict(adapter.state_dict())  # loading again must not merge twice
        assert torch.allclose(restored(images, CLASSES)["logits"], expected, atol=1e-5)
    assert int(fresh.task) == 2


def test_resumed_training_equals_an_uninterrupted_run(tmp_path):
    """The rank schedule's counter and the adapter state survive a stop: 2 + 2 steps == 4."""

    def fit(run_dir, steps, resume=None):
        return PeftClipCLI(args=[
            "fit", "--config", "recipes/zeroshot/tiny_random.yaml", "--model.adapters+=codyra",
            "--model.adapters.init_args.r=4", "--model.adapters.init_args.iterations=4",
            "--model.adapters.init_args.kappa_max=0.5", "--model.optimizer", "AdamW",
            "--model.optimizer.lr", "0.01", "--data.shots", "2", "--data.train_transform", "eval",
            "--trainer.max_steps", str(steps), "--trainer.default_root_dir", str(run_dir),
            "--trainer.enable_checkpointing", "true", "--trainer.enable_progress_bar", "false",
            *(["--ckpt_path", str(resume)] if resume else []),
        ])  # fmt: skip

    straight = fit(tmp_path / "straight", 4).model.adapters[0]
    fit(tmp_path / "stopped", 2)
    checkpoint = next((tmp_path / "stopped").rglob("*.ckpt"))
    resumed = fit(tmp_path / "resumed", 4, resume=checkpoint).model.adapters[0]
    assert int(resumed.iteration) == int(straight.iteration) == 4
    for key, site in straight.sites.items():
        for name in ("A", "B", "g"):
            assert torch.allclose(getattr(resumed.sites[key], name), getattr(site, name), atol=1e-6)
    assert resumed.live_ranks() == straight.live_ranks()
