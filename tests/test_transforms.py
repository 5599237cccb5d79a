"""The named transforms of docs/datasets.md#transforms."""

import pytest
import torch
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms.functional import to_tensor

from peftclip.data.transforms import build_transform
from peftclip.errors import PeftClipError
from peftclip.lightning.datamodule import PeftClipDataModule


def test_dassl_test_resizes_the_shorter_side_then_center_crops():
    image = Image.effect_noise((300, 200), 60).convert("RGB")
    resized = image.resize((336, 224), Image.BICUBIC)
    left = (336 - 224) // 2
    expected = to_tensor(resized.crop((left, 0, left + 224, 224)))
    mean = torch.tensor(OPENAI_DATASET_MEAN)[:, None, None]
    std = torch.tensor(OPENAI_DATASET_STD)[:, None, None]
    ours = build_transform("dassl_test")(image)
    assert ours.shape == (3, 224, 224)
    assert (ours - (expected - mean) / std).abs().max() < 0.05  # PIL vs tensor resize rounding


@pytest.mark.parametrize(
    ("name", "scale", "flip"),
    [("dassl_train", (0.08, 1.0), True), ("zscl_train", (0.9, 1.0), False),
     ("openclip_train", (0.9, 1.0), False)],
)  # fmt: skip
def test_train_transforms_have_the_specified_crop_and_flip(name, scale, flip):
    steps = build_transform(name, 224).transforms
    crop = steps[0]
    assert isinstance(crop, T.RandomResizedCrop) and crop.scale == scale
    assert crop.interpolation == T.InterpolationMode.BICUBIC and crop.size == (224, 224)
    assert any(isinstance(step, T.RandomHorizontalFlip) for step in steps) == flip
    grayscale = Image.new("L", (50, 80), 100)
    assert build_transform(name, 32)(grayscale).shape == (3, 32, 32)


def test_unknown_transform_lists_the_choices():
    with pytest.raises(PeftClipError, match=r"unknown transform 'dassl'.*dassl_train"):
        build_transform("dassl")


def test_datamodule_builds_named_transforms_at_the_backbone_size():
    datamodule = PeftClipDataModule(
        "world_shapes", shots=1, train_transform="dassl_train", eval_transform="dassl_test"
    )
    datamodule.set_transforms("backbone-train", "backbone-eval", image_size=48)
    image, _ = datamodule.data.splits["train"][0]
    assert image.shape == (3, 48, 48)
    assert datamodule.data.splits["test"].transform.transforms[0].size == 48
