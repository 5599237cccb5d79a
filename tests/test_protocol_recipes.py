"""The few-shot, domain-generalization and cross-dataset recipes run on a fake data root (smoke):
fit one step, then ``test`` from the checkpoint, with a metric for every evaluated dataset."""

from pathlib import Path

import pytest
import torch
import yaml

from peftclip.cli import main
from peftclip.lightning.cli import PeftClipCLI
from tests.test_adapter_matrix import TINY_SETTINGS
from tests.test_coop_datasets import WNIDS, ZHOU_DATASETS, _classnames_file, _jpeg, _zhou_tree

RECIPES = Path(__file__).parents[1] / "recipes"
PROMPT_LEARNERS = ["coop", "cocoop", "kgcoop", "maple", "ivlp", "promptsrc", "vpt_deep"]
#: The evaluation datasets each protocol's recipes list (docs/protocols/few-shot.md,
#: domain-generalization.md, cross-dataset.md).
TARGETS = {
    "fewshot": [],
    "dg": ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"],
    "xd": [*ZHOU_DATASETS, "fgvc_aircraft"],
}
TINY = ["--model.backbone.model_name", "peftclip-tiny-vit", "--model.backbone.pretrained", "null",
        "--trainer.precision", "32-true", "--data.num_workers", "0", "--data.shots", "1",
        "--data.eval_batch_size", "50", "--trainer.limit_val_batches", "1",
        "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false"]  # fmt: skip


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A fake <DATA> with ImageNet (1000 classes), its four variants and the ten other datasets."""
    root = tmp_path_factory.mktemp("DATA")
    _classnames_file(root / "imagenet" / "classnames.txt")
    for wnid in WNIDS:
        _jpeg(root / "imagenet" / "images" / "train" / wnid / "t.JPEG")
        _jpeg(root / "imagenet" / "images" / "val" / wnid / "v.JPEG")
    _jpeg(root / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / "7" / "x.jpeg")
    _jpeg(root / "imagenet-sketch" / "sketch" / WNIDS[1] / "s.JPEG")
    _jpeg(root / "imagenet-adversarial" / "imagenet-a" / WNIDS[2] / "a.jpg")
    _jpeg(root / "imagenet-rendition" / "imagenet-r" / WNIDS[3] / "r.jpg")
    for name in ZHOU_DATASETS:
        _zhou_tree(root, name)
    aircraft = root / "fgvc_aircraft"
    aircraft.mkdir()
    (aircraft / "variants.txt").write_text("707-320\nA300B4\n")
    for part, image_id in (("train", "1"), ("val", "2"), ("test", "3")):
        (aircraft / f"images_variant_{part}.txt").write_text(f"{image_id} A300B4\n")
        _jpeg(aircraft / "images" / f"{image_id}.jpg")
    return root


def _config(recipe: Path) -> dict:
    return yaml.safe_load(recipe.read_text())


def _training(recipe: Path) -> dict:
    """The recipe without what only ``test`` or the run directory use."""
    config = _config(recipe)
    config["data"].pop("eval_datasets", None)
    config["trainer"].pop("default_root_dir", None)
    return config


def _tiny_args(recipe: Path, data_root: Path, run_dir: Path) -> list[str]:
    """The tiny model on the fake root; depth-limited adapters get depths the 2 blocks allow."""
    method = _config(recipe)["model"]["adapters"][0]["class_path"]
    depths = TINY_SETTINGS.get(method, {})
    return [*TINY, *(f"--model.adapters.init_args.{k}={v}" for k, v in depths.items()),
            "--data.root", str(data_root), "--trainer.default_root_dir", str(run_dir)]  # fmt: skip


def _fit_one_step(recipe: Path, args: list[str], run_dir: Path) -> Path:
    assert main(["fit", "--config", str(recipe), *args, "--trainer.max_steps", "1",
                 "--trainer.limit_train_batches", "1"]) == 0  # fmt: skip
    # ModelCheckpoint(save_last) of the recipe, in the fit's run folder
    (checkpoint,) = run_dir.glob("*-fit-*/checkpoints/last.ckpt")
    return checkpoint


def _test_metrics(recipe: Path, args: list[str], checkpoint: Path) -> dict:
    cli = PeftClipCLI(args=["test", "--config", str(recipe), *args, "--ckpt_path", str(checkpoint)])
    return cli.trainer.callback_metrics


def test_every_prompt_learner_has_a_recipe_per_protocol():
    for method in PROMPT_LEARNERS:
        for protocol in ("base2new", *TARGETS):
            recipe = RECIPES / method / f"{protocol}.yaml"
            assert recipe.is_file(), recipe
            assert _config(recipe)["model"]["adapters"][0]["class_path"] == method
            evaluated = _config(recipe)["data"].get("eval_datasets", [])
            assert sorted(evaluated) == sorted(TARGETS.get(protocol, [])), recipe
        assert _training(RECIPES / method / "dg.yaml") == _training(RECIPES / method / "xd.yaml")


@pytest.mark.parametrize(
    "recipe",
    sorted([*RECIPES.glob("*/fewshot.yaml"), *RECIPES.glob("*/world/fewshot.yaml")]),
    ids=lambda path: str(path.parent.relative_to(RECIPES)),
)
def test_fewshot_recipe_fits_then_tests_from_its_checkpoint(data_root, tmp_path, recipe):
    args = _tiny_args(recipe, data_root, tmp_path)
    checkpoint = _fit_one_step(recipe, args, tmp_path)
    assert "test/top1" in _test_metrics(recipe, args, checkpoint)


@pytest.mark.parametrize(
    "method",
    sorted({path.parent.name for name in ("dg", "xd") for path in RECIPES.glob(f"*/{name}.yaml")}),
)
def test_imagenet_recipes_fit_then_test_every_target(data_root, tmp_path, method):
    """dg.yaml and xd.yaml of a method train on ImageNet; where they train alike
    (docs/protocols/cross-dataset.md: the same training), one fit serves both tests."""
    fitted: dict[str, Path] = {}  # training config -> checkpoint
    for recipe in (RECIPES / method / f"{name}.yaml" for name in ("dg", "xd")):
        if not recipe.is_file():
            continue
        run_dir = tmp_path / recipe.stem
        args = _tiny_args(recipe, data_root, run_dir)
        training = yaml.safe_dump(_training(recipe), sort_keys=True)
        if training not in fitted:
            fitted[training] = _fit_one_step(recipe, args, run_dir)
        metrics = _test_metrics(recipe, args, fitted[training])
        assert "test/top1" in metrics
        assert all(f"test/{name}/top1" in metrics for name in TARGETS[recipe.stem]), recipe


def test_masked_1000_way_imagenet_a_scores_inside_its_200_classes(data_root, tmp_path):
    """ZSCL's scoring: ImageNet's 1000-class head, predictions restricted to the 200 classes."""
    masked = "{dataset: imagenet_a, options: {head: masked1000}}"
    cli = PeftClipCLI(args=[
        "test", "--config", "recipes/zeroshot/tiny_random.yaml", *TINY[:4],
        "--data.dataset", "imagenet", "--data.root", str(data_root),
        "--data.eval_datasets", f"[imagenet_a, {masked}]", "--data.num_workers", "0",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    metrics = cli.trainer.callback_metrics
    # Same class names and templates for the 200 classes: the masked head must agree exactly.
    assert metrics["test/imagenet_a:masked1000/top1"] == metrics["test/imagenet_a/top1"]
    module = cli.model
    test_set = module.test_sets[2]
    assert len(test_set.classnames) == 1000 and test_set.class_mask == [WNIDS.index(WNIDS[2])]
    module._point_at(test_set)
    with torch.no_grad():
        logits = module.eval()(torch.randn(8, 3, 32, 32))["logits"]
        unmasked = module.classifier(torch.randn(8, 3, 32, 32), module.classnames)["logits"]
    assert set(logits.argmax(-1).tolist()) <= set(test_set.class_mask)
    assert torch.isinf(logits).sum() == 8 * 999
    assert not set(unmasked.argmax(-1).tolist()) <= set(test_set.class_mask)  # mask matters
