"""ZSCL: weight ensemble, L2 anchor, cached teacher captions, the zero-shot teacher, resume
(docs/continual.md#zscl)."""

from pathlib import Path

import pytest
import torch

from peftclip.backbone import BackboneSpec, load_backbone
from peftclip.continual import (
    ContinualModel,
    ContinualRecipe,
    ContinualRun,
    Stream,
    Task,
    TrainingSettings,
    build_strategy,
)
from peftclip.continual.strategies import Step, TaskData
from peftclip.continual.zscl import ZSCL, caption_tokens, l2_to_anchor, read_captions
from peftclip.errors import PeftClipError
from peftclip.world.reference import reference_captions

WORLD_REFERENCE = {"reference_dataset": "world", "reference_captions": "world"}


class _Scalar:
    """A stand-in model: one trainable scalar θ, set by the test to any trajectory."""

    def __init__(self) -> None:
        self.theta = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def trainable(self):
        return {"theta": self.theta}


def _ensemble_of_trajectory(iterations: int, every: int) -> float:
    """The task-end weight after θ = 1-based step count at every step (θ_start = 0)."""
    model, strategy = _Scalar(), ZSCL(average_every=every)
    strategy.begin_task(model, TaskData(0, ["a"], "{}", seed=0))
    for iteration in range(iterations):
        with torch.no_grad():
            model.theta.fill_(iteration + 1)  # the optimizer step of this iteration
        strategy.after_step(model, iteration)
    strategy.end_task(model, TaskData(0, ["a"], "{}", seed=0))
    return model.theta.item()


def test_weight_ensemble_is_the_mean_of_the_12_weights_of_zscls_1000_plus_1_iterations():
    # ZSCL's range(1000 + 1): folds after iterations 0, 100, …, 1000, the last at lr 0, so it
    # repeats the weights after the 1000th step: 12 equal terms with θ_start.
    terms = [0, *range(1, 1000, 100), 1000]
    assert len(terms) == 12
    assert _ensemble_of_trajectory(1000, 100) == pytest.approx(sum(terms) / 12, abs=1e-9)
    # 11 or 13 terms would be far off: the count is exact.
    assert abs(sum(terms[:-1]) / 11 - sum(terms) / 12) > 10
    # Not a multiple of the period: no extra fold (range(1051) folds after 0, 100, …, 1000).
    terms = [0, *range(1, 1002, 100)]
    assert _ensemble_of_trajectory(1050, 100) == pytest.approx(sum(terms) / 12, abs=1e-9)
    # A period longer than the task: the mean of the start and the first step's weights.
    assert _ensemble_of_trajectory(40, 100) == pytest.approx(0.5, abs=1e-12)
    assert _ensemble_of_trajectory(40, 0) == 40  # no ensemble: the last iterate


@pytest.fixture
def world_model():
    return ContinualModel(load_backbone("peftclip-world-tiny", "world"))


def _zscl(model, **options):
    strategy = ZSCL(**{**WORLD_REFERENCE, **options})
    strategy.captions = reference_captions()  # what load_reference reads (without the images)
    strategy.begin_stream(model)
    return strategy


def test_l2_term_is_zero_with_zero_gradient_at_task_start_and_2_delta_after(world_model):
    strategy = _zscl(world_model)
    strategy.begin_task(world_model, TaskData(0, ["a"], "{}", seed=0))
    loss = l2_to_anchor(world_model, strategy.anchor)
    loss.backward()
    assert loss.item() == 0
    assert all(torch.all(p.grad == 0) for p in world_model.trainable().values())
    world_model.zero_grad()
    proj = world_model.backbone.model.visual.proj
    delta = 0.01 * torch.randn_like(proj)
    with torch.no_grad():
        proj.add_(delta)
    loss = l2_to_anchor(world_model, strategy.anchor)
    loss.backward()
    assert loss.item() == pytest.approx(delta.pow(2).sum().item(), rel=1e-4)
    assert torch.allclose(proj.grad, 2 * delta, atol=1e-7)
    assert "logit_scale" not in strategy.anchor  # frozen: its difference is 0 anyway


def test_cached_teacher_caption_embeddings_equal_recomputation(world_model):
    strategy = _zscl(world_model, l2_weight=0.0)
    strategy.begin_task(world_model, TaskData(0, ["a"], "{}", seed=0))
    with torch.no_grad():  # a moved student: the KD terms are not at their minimum
        world_model.backbone.model.visual.proj.mul_(1.1)
    images = torch.randn(6, 3, 48, 48)
    cached = strategy.loss(Step(world_model, images, None, None, images))
    tokens = caption_tokens(world_model.backbone.tokenizer, strategy.captions)
    recomputed_text = strategy.teacher.encode_tokens(tokens)  # what the anchor does every step
    assert torch.equal(recomputed_text, strategy.teacher_text)
    strategy.teacher_text = recomputed_text
    recomputed = strategy.loss(Step(world_model, images, None, None, images))
    assert abs(cached.item() - recomputed.item()) <= 1e-6
    assert strategy.teacher_text.shape[0] == len(strategy.captions) > 500


def test_kd_terms_leave_the_student_text_tower_alone_and_vanish_at_the_first_step(world_model):
    strategy = _zscl(world_model, l2_weight=0.0)
    strategy.begin_task(world_model, TaskData(0, ["a"], "{}", seed=0))
    images = torch.randn(6, 3, 48, 48)
    strategy.loss(Step(world_model, images, None, None, images)).backward()
    visual = [p.grad.abs().max() for p in world_model.backbone.model.visual.parameters()]
    assert max(visual) <= 1e-6  # student == zero-shot teacher
    text = world_model.backbone.model.transformer.parameters()
    assert all(p.grad is None for p in text)


def test_captions_from_a_tab_separated_file_under_the_data_root(tmp_path):
    folder = tmp_path / "conceptual_captions"
    folder.mkdir()
    rows = ["title\tfilepath", "a dog on a beach\tval/0.jpg", " \tval/1.jpg", "two red cars\tx"]
    (folder / "Validation_GCC-1.1.0-Validation_output.csv").write_text("\n".join(rows) + "\n")
    path = folder / "Validation_GCC-1.1.0-Validation_output.csv"
    assert read_captions(path) == ["a dog on a beach", "two red cars"]
    with pytest.raises(PeftClipError, match="no column 'caption'"):
        read_captions(path, column="caption")
    strategy = ZSCL(reference_dataset="world")  # the default caption path, under data_root
    assert len(strategy.load_reference(str(tmp_path))) == 2048
    assert strategy.captions == ["a dog on a beach", "two red cars"]
    with pytest.raises(PeftClipError, match="does not exist"):
        ZSCL(reference_dataset="world").load_reference(str(tmp_path / "elsewhere"))


def test_anchor_truncation_drops_the_eot_of_a_long_caption():
    tokenizer = load_backbone("peftclip-tiny-vit", init_seed=0).tokenizer
    captions = ["a photo of a dog", " ".join(["dog"] * 100)]
    kept, anchor = (caption_tokens(tokenizer, captions, mode) for mode in ("keep_eot", "anchor"))
    eot = tokenizer.eot_token_id
    assert torch.equal(kept[0], anchor[0])
    assert kept[1, -1] == eot and eot not in anchor[1].tolist()


# ------------------------------------------------------------------------- the run, resumed
def _recipe():
    settings = TrainingSettings(
        iterations=4, batch_size=8, lr=1e-4, warmup=1, train_transform="eval",
        eval_transform="backbone", checkpoint_every=2,
    )  # fmt: skip
    return ContinualRecipe(
        backbone=BackboneSpec("peftclip-world-tiny", "world"),
        strategy="zscl",
        strategy_options={**WORLD_REFERENCE, "average_every": 2},
        training=settings,
        seed=5,
    )


def _stream():
    return Stream("tiny", (Task("world_sizes"), Task("world_counts")), (Task("world_shapes"),))


def _boundary_model(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "boundary.pt", weights_only=False)["model"]


def test_a_zscl_run_killed_in_task_2_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch):
    run = ContinualRun(_recipe(), _stream(), tmp_path / "a")
    zero_shot = {k: v.clone() for k, v in run.model.state().items()}
    uninterrupted = run.run()
    teacher = run.strategy.teacher.backbone.state_dict()
    assert all(torch.equal(teacher[k], v) for k, v in zero_shot.items())  # never moved
    assert not any(p.requires_grad for p in run.strategy.teacher.parameters())

    killed = ContinualRun(_recipe(), _stream(), tmp_path / "b")
    rows = []
    killed.on_row = lambda row, result: rows.append(row)
    original = ZSCL.after_step

    def crash(self, model, iteration):  # in task 2, after its checkpoint at step 2
        original(self, model, iteration)
        if len(rows) == 2 and iteration == 2:
            raise RuntimeError("killed")

    monkeypatch.setattr(ZSCL, "after_step", crash)
    with pytest.raises(RuntimeError, match="killed"):
        killed.run()
    assert (tmp_path / "b" / "task.pt").is_file()
    monkeypatch.setattr(ZSCL, "after_step", original)
    resumed = ContinualRun(_recipe(), _stream(), tmp_path / "b").run()
    assert resumed.rows == uninterrupted.rows
    final_a, final_b = _boundary_model(tmp_path / "a"), _boundary_model(tmp_path / "b")
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert any(not torch.equal(final_a[k], zero_shot[k]) for k in final_a)  # it trained


def test_zscl_options_are_checked():
    assert build_strategy("zscl").options()["average_every"] == 100
    with pytest.raises(PeftClipError, match="caption_truncate"):
        build_strategy("zscl", {"caption_truncate": "none"})
