"""Every recipe is smoke-run because it exists: a recipe joins by being added under recipes/.

``fewshot``, ``dg`` and ``xd`` recipes are fitted and tested from their checkpoints in
tests/test_protocol_recipes.py; ``base2new`` and ``zeroshot`` recipes run here, each on a fake
tree of its own dataset (tests/fake_datasets.py) with the tiny random-init model. The quickstart
runs verbatim in CI (.ci/run).
"""

from pathlib import Path

import pytest
import yaml

from peftclip.cli import main
from peftclip.data import dataset_definition
from tests.fake_datasets import fake_tree
from tests.test_adapter_matrix import TINY_SETTINGS

RECIPES = Path(__file__).parents[1] / "recipes"
SMOKED_BY_TEST_PROTOCOL_RECIPES = {"fewshot", "dg", "xd"}
#: ``peftclip run continual`` recipes (recipes/continual/) are smoke-run in tests/test_continual.py.
SMOKED_BY_TEST_CONTINUAL = {"continual"}
TINY_MODEL = ["--model.backbone.model_name", "peftclip-tiny-vit", "--model.backbone.pretrained",
              "null", "--trainer.precision", "32-true", "--data.num_workers", "0",
              "--trainer.enable_progress_bar", "false"]  # fmt: skip


def _kind(recipe: Path) -> str:
    if recipe == RECIPES / "quickstart.yaml":
        return "quickstart"
    if recipe.parent.name in ("zeroshot", "continual"):
        return recipe.parent.name
    return recipe.stem


def _recipes(kind: str) -> list[Path]:
    return [recipe for recipe in sorted(RECIPES.rglob("*.yaml")) if _kind(recipe) == kind]


def _name(recipe: Path) -> str:
    return str(recipe.relative_to(RECIPES))


def _tree(recipe: Path, tmp_path: Path):
    config = yaml.safe_load(recipe.read_text())
    return fake_tree(dataset_definition(config["data"]["dataset"]), tmp_path)


def _data_args(recipe: Path, tmp_path: Path) -> list[str]:
    config = yaml.safe_load(recipe.read_text())
    tree = _tree(recipe, tmp_path)
    adapters = config["model"].get("adapters") or []
    method = adapters[0]["class_path"] if adapters else None
    settings = TINY_SETTINGS.get(method, {})
    return [*(["--data.root", str(tree.root)] if tree.root else []),
            *(f"--model.adapters.init_args.{k}={v}" for k, v in settings.items()),
            "--trainer.default_root_dir", str(tmp_path / "run")]  # fmt: skip


def test_every_recipe_has_a_smoke_run():
    known = {"base2new", "zeroshot", "quickstart", *SMOKED_BY_TEST_PROTOCOL_RECIPES,
             *SMOKED_BY_TEST_CONTINUAL}  # fmt: skip
    unknown = [_name(r) for r in sorted(RECIPES.rglob("*.yaml")) if _kind(r) not in known]
    assert not unknown, f"no smoke run for {unknown}: name it after its protocol or add one here"


@pytest.mark.parametrize("recipe", _recipes("base2new"), ids=_name)
def test_base2new_recipe_smoke_runs(tmp_path, recipe, capsys):
    code = main(["base2new", "--config", str(recipe), *TINY_MODEL, *_data_args(recipe, tmp_path),
                 "--data.shots", "1", "--trainer.fast_dev_run", "true"])  # fmt: skip
    assert code == 0
    assert "base-to-new on" in capsys.readouterr().out


@pytest.mark.parametrize("recipe", _recipes("zeroshot"), ids=_name)
def test_zeroshot_recipe_smoke_runs(tmp_path, recipe):
    (tmp_path / "probe").mkdir()
    stage = "test" if "test" in _tree(recipe, tmp_path / "probe").sizes else "validate"
    code = main([stage, "--config", str(recipe), *TINY_MODEL, *_data_args(recipe, tmp_path),
                 f"--trainer.limit_{stage.replace('validate', 'val')}_batches", "1"])  # fmt: skip
    assert code == 0
