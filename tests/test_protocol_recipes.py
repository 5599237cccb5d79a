"""The domain-generalization and cross-dataset recipes run on a fake data root (smoke)."""

import pytest

from peftclip.cli import main
from peftclip.data.coop_datasets import ZHOU_LAYOUTS
from peftclip.lightning.cli import PeftClipCLI
from tests.test_coop_datasets import WNIDS, _classnames_file, _jpeg, _zhou_tree

TINY = ["--model.backbone.model_name", "peftclip-tiny-vit", "--model.backbone.pretrained", "null",
        "--trainer.precision", "32-true", "--data.num_workers", "0", "--data.shots", "1",
        "--trainer.enable_progress_bar", "false"]  # fmt: skip


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
    for name in ZHOU_LAYOUTS:
        _zhou_tree(root, name)
    aircraft = root / "fgvc_aircraft"
    aircraft.mkdir()
    (aircraft / "variants.txt").write_text("707-320\nA300B4\n")
    for part, image_id in (("train", "1"), ("val", "2"), ("test", "3")):
        (aircraft / f"images_variant_{part}.txt").write_text(f"{image_id} A300B4\n")
        _jpeg(aircraft / "images" / f"{image_id}.jpg")
    return root


@pytest.mark.parametrize(
    ("recipe", "targets"),
    [
        ("recipes/coop/dg.yaml", ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]),
        ("recipes/coop/xd.yaml", [*sorted(ZHOU_LAYOUTS), "fgvc_aircraft"]),
    ],
)
def test_fit_then_test_on_every_target(data_root, tmp_path, recipe, targets):
    common = [*TINY, "--data.root", str(data_root), "--trainer.default_root_dir", str(tmp_path)]
    assert main(["fit", "--config", recipe, *common, "--trainer.max_steps", "1",
                 "--trainer.limit_train_batches", "1"]) == 0  # fmt: skip
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    cli = PeftClipCLI(args=["test", "--config", recipe, *common, "--ckpt_path", str(checkpoint)])
    metrics = cli.trainer.callback_metrics
    assert "test/top1" in metrics
    assert all(f"test/{name}/top1" in metrics for name in targets)
