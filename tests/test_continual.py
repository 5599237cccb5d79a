"""Continual learning: metrics, streams, strategies, resume and the command (docs/continual.md)."""

import json
import sqlite3
from pathlib import Path

import pytest
import torch
import yaml

from peftclip.adapters import CoDyRA
from peftclip.backbone import BackboneSpec, load_backbone
from peftclip.cli import main
from peftclip.continual import (
    ContinualModel,
    ContinualRecipe,
    ContinualRun,
    LwF,
    Stream,
    Task,
    TrainingSettings,
    VRLwF,
    build_strategy,
    continual_metrics,
    random_vocabulary,
    resolve_stream,
)
from peftclip.continual.command import load_recipe
from peftclip.continual.distillation import Distillation
from peftclip.continual.driver import first_shots
from peftclip.continual.strategies import Step, TaskData, WiseFT
from peftclip.continual.streams import MTIL_ORDER_1
from peftclip.errors import PeftClipError

WORLD = {"model_name": "peftclip-world-tiny", "pretrained": "world"}


# ------------------------------------------------------------------------------------ metrics
def test_metrics_match_a_hand_computed_matrix():
    matrix = [[10, 20, 30], [40, 50, 60], [70, 80, 90]]
    metrics = continual_metrics(matrix)
    # Transfer: column 2 over row 1 → 20; column 3 over rows 1–2 → 45; mean 32.5.
    assert metrics.transfer_per_dataset == [20, 45]
    assert metrics.transfer == pytest.approx(32.5)
    assert metrics.avg_per_dataset == [40, 50, 60]
    assert metrics.avg == pytest.approx(50)
    assert metrics.last == pytest.approx(80)
    assert metrics.bwt == pytest.approx(((70 - 10) + (80 - 50)) / 2)


def test_constant_rows_give_avg_equal_last_and_transfer_the_mean_of_columns_2_to_T():
    row = [24.3, 88.4, 68.2, 44.6]
    metrics = continual_metrics([row] * 4)
    assert metrics.avg == pytest.approx(metrics.last)
    assert metrics.transfer == pytest.approx(sum(row[1:]) / 3)


def test_metrics_follow_the_learning_order_of_the_columns():
    matrix = [[10, 20, 30], [40, 50, 60], [70, 80, 90]]
    swapped = [[row[1], row[0], row[2]] for row in matrix]  # another learning order
    assert continual_metrics(swapped).transfer != continual_metrics(matrix).transfer
    with pytest.raises(ValueError, match="T×T"):
        continual_metrics([[1, 2]])


# ------------------------------------------------------------------------------------ streams
def test_builtin_streams():
    order1, order2 = resolve_stream("mtil_order1"), resolve_stream("mtil_order2")
    assert len(order1.tasks) == len(order2.tasks) == 11
    assert order2.tasks[0].dataset == "stanford_cars" and order2.tasks[-1].dataset == "cifar100"
    assert {t.dataset for t in order1.tasks} == {t.dataset for t in order2.tasks}
    fast = {t.dataset for t in order1.tasks if t.overrides.get("lr") == 5e-5}
    assert fast == {"fgvc_aircraft", "mnist"}
    assert resolve_stream("mtil_5shot").shots == 5 and order1.shots is None
    assert len(MTIL_ORDER_1) == 11
    world = resolve_stream("world")
    learned = {t.dataset for t in world.tasks}
    assert world.held_out and not learned & {t.dataset for t in world.held_out}


def test_streams_from_yaml(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "shots: 4\ntasks:\n  - world_sizes\n  - {dataset: world_counts, overrides: {lr: 0.1}}\n"
        "held_out: [world_colors]\n"
    )
    stream = resolve_stream(str(path))
    assert stream.name == "mine" and stream.shots == 4
    assert stream.tasks[1].overrides == {"lr": 0.1}
    assert [t.dataset for t in stream.evaluated] == ["world_sizes", "world_counts", "world_colors"]
    with pytest.raises(PeftClipError, match="unknown stream"):
        resolve_stream("mtil_order3")


def test_first_shots_keeps_exactly_k_per_class_deterministically():
    targets = [i % 3 for i in range(30)]
    chosen = first_shots(targets, 4, seed=1)
    assert sorted(targets[i] for i in chosen) == [0] * 4 + [1] * 4 + [2] * 4
    assert chosen == first_shots(targets, 4, seed=1) != first_shots(targets, 4, seed=2)
    assert first_shots(targets, None, seed=1) == list(range(30))


# --------------------------------------------------------------------------------- strategies
@pytest.fixture(scope="module")
def clip_tokenizer():
    return load_backbone("peftclip-tiny-vit", init_seed=0).tokenizer


def test_vocabulary_shape_special_tokens_and_seed(clip_tokenizer):
    tokens = random_vocabulary(clip_tokenizer, seed=3)
    assert tokens.shape == (1000, 77)
    assert torch.all(tokens[:, 0] == 49406) and torch.all(tokens[:, 11] == 49407)
    assert torch.all(tokens[:, 12:] == 0) and torch.all(tokens.argmax(-1) == 11)
    assert torch.all(tokens[:, 1:11] < 49406)  # special ids excluded by default
    assert torch.equal(tokens, random_vocabulary(clip_tokenizer, seed=3))
    assert not torch.equal(tokens, random_vocabulary(clip_tokenizer, seed=4))


@pytest.fixture
def world_model():
    return ContinualModel(load_backbone("peftclip-world-tiny", "world"))


def _task(classes=("small shape", "large shape")):
    return TaskData(0, list(classes), "an image of a {}", seed=0)


def _kd_gradient(strategy, model, images):
    model.zero_grad()
    strategy.loss(Step(model, images, None, None, images)).backward()
    grads = [
        p.grad.abs().max() for p in model.backbone.model.visual.parameters() if p.grad is not None
    ]
    return max(grads)


def test_kd_gradient_is_zero_while_student_equals_teacher_and_not_after(world_model):
    strategy = VRLwF(vocabulary_size=64)
    strategy.begin_task(world_model, _task())
    images = torch.randn(6, 3, 48, 48)
    # Zero up to float rounding (the teacher's cached texts and the student's heads may take
    # the plain and the shared-prefix text path), two orders below a moved student's.
    assert _kd_gradient(strategy, world_model, images) <= 1e-6
    with torch.no_grad():
        world_model.backbone.model.visual.proj.add_(
            0.05 * torch.randn_like(world_model.backbone.model.visual.proj)
        )
    assert _kd_gradient(strategy, world_model, images) > 1e-5
    teacher = strategy.teacher.backbone.model.visual.proj
    assert not teacher.requires_grad and teacher.grad is None


def test_lwf_and_vr_lwf_differ_only_in_the_reference_texts(world_model):
    task, images = _task(), torch.randn(4, 3, 48, 48)
    lwf, vr = LwF(), VRLwF(vocabulary_size=32)
    assert type(lwf).loss is type(vr).loss is Distillation.loss
    assert lwf.options() | {"reference_texts": "vocabulary"} == {
        k: v for k, v in vr.options().items() if not k.startswith("vocabulary_")
    }
    same_as_lwf = Distillation(reference_texts="class_prompts")
    for strategy in (lwf, same_as_lwf, vr):
        strategy.begin_task(world_model, task)
    with torch.no_grad():  # a moved student: the terms are not at their minimum
        world_model.backbone.model.visual.proj.mul_(1.1)
    losses = [s.loss(Step(world_model, images, None, None, images)) for s in (lwf, same_as_lwf, vr)]
    assert torch.equal(losses[0], losses[1]) and not torch.equal(losses[0], losses[2])
    assert lwf.teacher_text.shape[0] == 2 and vr.teacher_text.shape[0] == 32


@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_wise_ft_alpha_one_is_a_no_op_and_zero_restores(world_model, alpha):
    strategy = WiseFT(alpha=alpha)
    start = {k: v.detach().clone() for k, v in world_model.trainable().items()}
    strategy.begin_task(world_model, _task())
    with torch.no_grad():
        for parameter in world_model.trainable().values():
            parameter.add_(torch.randn_like(parameter))
    trained = {k: v.detach().clone() for k, v in world_model.trainable().items()}
    strategy.end_task(world_model, _task())
    expected = trained if alpha == 1 else start
    assert all(torch.equal(v, expected[k]) for k, v in world_model.trainable().items())
    assert "logit_scale" not in " ".join(world_model.trainable())


def test_codyra_merge_and_reset_keeps_outputs_and_the_deployed_parameter_count():
    model = ContinualModel(load_backbone("peftclip-world-tiny", "world"), [CoDyRA(r=4)]).eval()
    images, classes = torch.randn(3, 3, 48, 48), ["small shape", "large shape"]
    build_strategy("codyra").begin_stream(model)
    counts = (model.deployed_count(), model.trainable_count())
    for task in range(2):
        with torch.no_grad():  # a trained task: non-zero updates, some ranks pruned
            for site in model.adapters[0].sites.values():
                site.B.normal_(std=0.05)
                site.g[0] = 0
        model.classifier.train()
        before = model.classifier(images, classes)["logits"]
        model.classifier.end_task(task)
        after = model.classifier(images, classes)["logits"]
        assert torch.allclose(before, after, atol=1e-4)
        assert (model.deployed_count(), model.trainable_count()) == counts
    with pytest.raises(PeftClipError, match="codyra adapter"):
        build_strategy("codyra").begin_stream(
            ContinualModel(load_backbone("peftclip-world-tiny", "world"))
        )


# ------------------------------------------------------------------------- the run, resumed
def _tiny_stream():
    return Stream("tiny", (Task("world_sizes"), Task("world_counts"), Task("world_backgrounds")))


def _recipe():
    settings = TrainingSettings(
        iterations=4, batch_size=8, lr=1e-4, warmup=1, train_transform="eval",
        eval_transform="backbone", checkpoint_every=2,
    )  # fmt: skip
    return ContinualRecipe(
        backbone=BackboneSpec("peftclip-tiny-vit", init_seed=0),  # the fastest model
        strategy="vr_lwf",
        strategy_options={"vocabulary_size": 16},
        training=settings,
        seed=5,
    )


def test_a_run_killed_in_task_3_resumes_to_the_uninterrupted_matrix(tmp_path, monkeypatch):
    uninterrupted = ContinualRun(_recipe(), _tiny_stream(), tmp_path / "a").run()
    killed = ContinualRun(_recipe(), _tiny_stream(), tmp_path / "b")
    rows = []
    killed.on_row = lambda row, result: rows.append(row)
    original = VRLwF.after_step

    def crash(self, model, iteration):  # in task 3 (rows 0, 1, 2 done), after its checkpoint
        original(self, model, iteration)
        if len(rows) == 3 and iteration == 2:
            raise RuntimeError("killed")

    monkeypatch.setattr(VRLwF, "after_step", crash)
    with pytest.raises(RuntimeError, match="killed"):
        killed.run()
    assert rows == [0, 1, 2] and (tmp_path / "b" / "task.pt").is_file()
    monkeypatch.setattr(VRLwF, "after_step", original)
    resumed = ContinualRun(_recipe(), _tiny_stream(), tmp_path / "b").run()
    assert resumed.rows == uninterrupted.rows
    assert resumed.rows[0] != resumed.rows[-1]  # it trained
    assert not (tmp_path / "b" / "task.pt").exists()


def test_the_command_records_every_row(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        json.dumps(
            {
                "backbone": WORLD,
                "strategy": "finetune",
                "stream": {"name": "two", "tasks": ["world_sizes", "world_counts"]},
                "training": {"iterations": 2, "batch_size": 8, "train_transform": "eval",
                             "eval_transform": "backbone"},
            }
        )
    )  # fmt: skip
    db = tmp_path / "r.sqlite"
    args = ["run", "continual", "--config", str(recipe), "--db", str(db), "--root", str(tmp_path)]
    assert main([*args, "--training.lr", "1e-4"]) == 0
    out = capsys.readouterr().out
    assert "Transfer" in out and "Last" in out
    with sqlite3.connect(db) as connection:
        splits = connection.execute("SELECT split, evaluation FROM records").fetchall()
        status = connection.execute("SELECT status FROM cells").fetchall()
    assert sorted(splits) == sorted(
        (f"after_task_{row}", name) for row in range(3) for name in ("world_sizes", "world_counts")
    )
    assert status == [("ok",)]


# -------------------------------------------------------------------------------------- recipes
RECIPES = sorted((Path(__file__).parents[1] / "recipes" / "continual").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_continual_recipe_parses_and_states_its_command(recipe):
    text = recipe.read_text()
    header = text.split("\nbackbone:")[0]
    assert all(f"# {key}:" in header for key in ("Paper", "Command", "Expected"))
    assert f"--config recipes/continual/{recipe.name}" in header
    config, stream = load_recipe(yaml.safe_load(text), str(recipe))
    assert config.strategy == recipe.name.split("_mtil")[0].split("_world")[0].split("_xtail")[0]
    resolved = resolve_stream(stream)
    assert resolved.name == recipe.stem.removeprefix(f"{config.strategy}_")
    builtin = resolve_stream(resolved.name)  # a stream written out keeps the built-in's tasks
    assert [(t.dataset, t.shots, t.templates) for t in resolved.tasks] == [
        (t.dataset, t.shots, t.templates) for t in builtin.tasks
    ]
    assert (resolved.held_out, resolved.evaluation) == (builtin.held_out, builtin.evaluation)


@pytest.mark.parametrize("recipe", [r for r in RECIPES if "_world" in r.name], ids=lambda p: p.name)
def test_world_recipes_smoke_run(recipe, tmp_path, capsys):
    stream = tmp_path / "tiny.yaml"
    stream.write_text("tasks: [world_sizes, world_counts]\n")
    tiny = ["--backbone.model_name", "peftclip-tiny-vit", "--backbone.pretrained", "null",
            "--training.iterations", "1", "--training.batch_size", "4"]  # fmt: skip
    args = ["run", "continual", "--config", str(recipe), "--stream", str(stream), *tiny,
            "--root", str(tmp_path), "--db", str(tmp_path / "r.sqlite")]  # fmt: skip
    assert main(args) == 0
    assert "Transfer" in capsys.readouterr().out
