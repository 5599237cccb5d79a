"""Task-agnostic (union) evaluation and the X-TAIL stream (docs/continual.md#x-tail)."""

import pytest
import torch

from peftclip.backbone import BackboneSpec
from peftclip.continual import ContinualRecipe, ContinualRun, Stream, Task, TrainingSettings
from peftclip.continual.driver import sample_shots
from peftclip.continual.streams import XTAIL_ORDER, resolve_stream, stream_from_dict
from peftclip.continual.union import label_offsets, union_counts
from peftclip.errors import PeftClipError


def test_label_offsets_are_the_cumulative_class_counts_before_each_dataset():
    assert label_offsets([100, 47, 10]) == [0, 100, 147]
    assert label_offsets([5]) == [0]


def test_union_counts_a_hand_checked_batch():
    # A union of a 2-class dataset (columns 0–1) and a 3-class one (columns 2–4); a batch of
    # the second: labels 0, 1, 2 are right at columns 2, 3, 4.
    logits = torch.tensor(
        [
            [0.0, 0.0, 9.0, 1.0, 1.0],  # label 0 → column 2: right
            [0.0, 9.0, 1.0, 5.0, 1.0],  # label 1 → column 3, but column 1 wins: wrong
            [0.0, 0.0, 1.0, 1.0, 9.0],  # label 2 → column 4: right
            [0.0, 0.0, 1.0, 9.0, 1.0],  # label 0 → column 2, column 3 wins: wrong
        ]
    )
    labels = torch.tensor([0, 1, 2, 0])
    correct, total = union_counts(logits, labels, offset=2, classes=3)
    assert correct.tolist() == [1, 0, 1] and total.tolist() == [2, 1, 1]
    # Read without the offset (as if it were the first dataset), the second image's column 1
    # would count as right and the others as wrong.
    assert union_counts(logits, labels, offset=0, classes=3)[0].tolist() == [0, 1, 0]


def test_the_xtail_stream():
    stream = resolve_stream("xtail")
    assert [t.dataset for t in stream.tasks] == list(XTAIL_ORDER)
    assert len(stream.tasks) == 10 and stream.shots == 16 and not stream.held_out
    assert "cifar100" not in XTAIL_ORDER and XTAIL_ORDER[6] == "mnist"
    assert (stream.evaluation, stream.sampling) == ("union", "dassl")
    assert stream.to_dict()["evaluation"] == "union"
    world = resolve_stream("world_union")
    assert world.evaluation == "union" and world.tasks == resolve_stream("world").tasks


def test_evaluation_and_sampling_are_stream_settings():
    stream = stream_from_dict(
        {"tasks": ["world_sizes"], "evaluation": "union", "sampling": "dassl", "shots": 2}
    )
    assert (stream.evaluation, stream.sampling, stream.shots) == ("union", "dassl", 2)
    # A task-identity stream's mapping (its results cell) has no new keys: old cells keep theirs.
    assert set(resolve_stream("world").to_dict()) == {"name", "tasks", "held_out"}
    with pytest.raises(PeftClipError, match="evaluation is one of task, union"):
        stream_from_dict({"tasks": ["world_sizes"], "evaluation": "agnostic"})
    with pytest.raises(PeftClipError, match="may have"):
        stream_from_dict({"tasks": ["world_sizes"], "mode": "union"})


def test_dassl_sampling_keeps_k_per_class_and_differs_from_first():
    targets = [i % 3 for i in range(30)]
    chosen = sample_shots(targets, 4, seed=1, sampling="dassl")
    assert sorted(targets[i] for i in chosen) == [0] * 4 + [1] * 4 + [2] * 4
    assert chosen == sorted(chosen) == sample_shots(targets, 4, 1, "dassl")
    assert chosen != sample_shots(targets, 4, 1, "first")
    assert sample_shots(targets, None, 1, "dassl") == list(range(30))


# ------------------------------------------------------------------- the union head on a world
DATASETS = ("world_sizes", "world_counts", "world_colors")


def _run(tmp_path, evaluation, datasets=DATASETS):
    # One template per task, so the task-identity head is the union head's block exactly.
    from peftclip.world.evaluate import TASK_TEMPLATES

    tasks = tuple(Task(name, templates=TASK_TEMPLATES[name]) for name in datasets)
    recipe = ContinualRecipe(
        backbone=BackboneSpec("peftclip-world-tiny", "world"),
        training=TrainingSettings(eval_transform="backbone", eval_batch_size=500),
    )
    stream = Stream(evaluation, tasks, evaluation=evaluation)
    return ContinualRun(recipe, stream, tmp_path / evaluation)


def test_union_accuracy_is_at_most_task_identity_accuracy_and_matches_a_hand_computed_head(
    tmp_path,
):
    union_run = _run(tmp_path, "union")
    union = union_run.evaluate_all()
    task = _run(tmp_path, "task").evaluate_all()
    assert list(union) == list(DATASETS)
    for name in DATASETS:
        assert union[name]["total"] == task[name]["total"]
        assert all(
            u <= t for u, t in zip(union[name]["correct"], task[name]["correct"], strict=True)
        )
    assert sum(sum(union[n]["correct"]) for n in DATASETS) < sum(
        sum(task[n]["correct"]) for n in DATASETS
    )  # the world's datasets share words ("an image of a ..."): some images go astray
    # By hand: each dataset's own head, concatenated; right = arg-max at offset + label.
    classifier = union_run.model.classifier.eval()
    tests = [union_run._test_set(t) for t in union_run.stream.tasks]
    with torch.inference_mode():
        heads = []
        for _, classnames, templates in tests:
            classifier.templates = templates[:1]
            heads.append(classifier.text_features(classnames))
        offset = 0
        for name, (test, classnames, _) in zip(DATASETS, tests, strict=True):
            images, labels = zip(*(test[i] for i in range(len(test))), strict=True)
            features = union_run.model.backbone.encode_image(torch.stack(images))
            logits = union_run.model.backbone.logits(features, torch.cat(heads))
            right = logits.argmax(-1) == torch.tensor(labels) + offset
            assert sum(union[name]["correct"]) == int(right.sum())
            offset += len(classnames)


def test_a_one_dataset_union_is_task_identity_evaluation(tmp_path):
    union = _run(tmp_path, "union", DATASETS[:1]).evaluate_all()
    assert union == _run(tmp_path, "task", DATASETS[:1]).evaluate_all()
