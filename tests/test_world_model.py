"""The world CLIP: tokenizer, open_clip config, pretraining (smoke + exact resume), datasets."""

import json
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from peftclip.backbone import load_backbone
from peftclip.cli import main
from peftclip.data import build_dataset
from peftclip.world import vocabulary
from peftclip.world.pretrain import PretrainConfig, multi_positive_loss, pretrain
from peftclip.world.tokenizer import UNK, WORDS, WordTokenizer

WORLD = "peftclip-world-tiny"
SMOKE = PretrainConfig(steps=4, batch_size=16, warmup=2)


def test_tokenizer_follows_the_clip_conventions():
    tokenizer = WordTokenizer(context_length=24)
    tokens = tokenizer(["A photo of a red circle.", "a zebra"])
    assert tokens.shape == (2, 24)
    assert tokens[0, 0] == tokenizer.sot_token_id and tokens.argmax(-1).tolist() == [8, 3]
    assert tokenizer.eot_token_id == tokens.max() == tokenizer.vocab_size - 1
    assert tokens[1, 2] == UNK and tokens[0, 9:].eq(0).all()
    assert set(vocabulary()) <= set(WORDS) and len(set(WORDS)) == len(WORDS)
    assert open_clip.get_model_config(WORLD)["text_cfg"]["vocab_size"] == tokenizer.vocab_size


def test_world_config_is_an_open_clip_clip_with_the_split_backbone_equal_to_it():
    backbone = load_backbone(WORLD, init_seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        reference = open_clip.create_model(WORLD).eval()
    assert isinstance(reference, open_clip.CLIP)
    tokens = backbone.tokenize(["an image of two red circles", "a photo of a star."])
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(
            backbone.encode_text_tokens(tokens), reference.encode_text(tokens), atol=1e-5
        )
        assert torch.allclose(
            backbone.encode_image(images), reference.encode_image(images), atol=1e-5
        )


def test_multi_positive_loss_targets_every_true_pair():
    truth = torch.tensor([[True, True], [False, True]])  # caption 0 fits both images
    logits = torch.tensor([[5.0, -5.0], [5.0, 5.0]])  # image 1 likes both captions
    image_targets = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    text_targets = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    expected = (
        torch.nn.functional.cross_entropy(logits, image_targets)
        + torch.nn.functional.cross_entropy(logits.t(), text_targets)
    ) / 2
    assert torch.allclose(multi_positive_loss(logits, truth), expected)


def test_pretrain_smoke_command_writes_loadable_weights(tmp_path, capsys):
    output = tmp_path / "world.safetensors"
    assert main(["world", "pretrain", "--smoke", "--output", str(output)]) == 0
    card = json.loads(output.with_suffix(".json").read_text())
    assert card["config"]["steps"] == 4 and "seconds" in card
    assert not output.with_suffix(".resume.pt").exists()
    backbone = load_backbone(WORLD, pretrained=str(output))
    assert backbone.identity.pretrained == str(output.resolve())


def test_pretraining_resumed_after_a_kill_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    import peftclip.world.pretrain as module

    straight = pretrain(SMOKE, tmp_path / "straight.safetensors", progress=False)
    interrupted = tmp_path / "resumed.safetensors"
    original, calls = module.multi_positive_loss, []

    def dying_loss(*args):  # the process is killed during step 3 (after the step-2 checkpoint)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(module, "multi_positive_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        pretrain(SMOKE, interrupted, checkpoint_every=2, progress=False)
    monkeypatch.setattr(module, "multi_positive_loss", original)
    assert interrupted.with_suffix(".resume.pt").exists()
    pretrain(SMOKE, interrupted, checkpoint_every=2, progress=False)
    first, second = load_file(str(straight)), load_file(str(interrupted))
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_world_datasets_are_balanced_deterministic_and_shifted():
    data = build_dataset("world_shapes")
    assert data.classnames[0] == "circle" and len(data.classnames) == 10
    counts = torch.bincount(data.splits["test"].labels)
    assert counts.tolist() == [25] * 10
    again = build_dataset("world_shapes")
    assert torch.equal(data.splits["train"].images, again.splits["train"].images)
    sketch = build_dataset("world_objects_sketch")
    assert set(sketch.splits) == {"test"} and len(sketch.classnames) == 80
    plain = build_dataset("world_objects", splits=("test",))
    assert torch.equal(plain.splits["test"].labels, sketch.splits["test"].labels)
    assert not torch.equal(plain.splits["test"].images, sketch.splits["test"].images)


def test_shipped_checkpoint_reproduces_its_model_card():
    from peftclip.world.evaluate import CAPTION_TEMPLATE, zero_shot_accuracy

    card_file = Path(__file__).parents[1] / "peftclip/world/weights/peftclip-world-tiny.json"
    card = json.loads(card_file.read_text())
    backbone = load_backbone(WORLD, pretrained="world")
    measured = zero_shot_accuracy(backbone, "world_shapes", CAPTION_TEMPLATE)
    assert measured == pytest.approx(card["zero_shot_top1"]["shapes_10way"], abs=0.5)
    assert backbone.logit_scale.item() == pytest.approx(card["logit_scale"], rel=1e-4)


def test_forgetting_probe_trains_every_weight_and_reports_before_and_after():
    from peftclip.world.evaluate import full_fine_tuning_forgetting

    backbone = load_backbone(WORLD, pretrained="world")
    weight = backbone.model.visual.conv1.weight.clone()
    result = full_fine_tuning_forgetting(
        backbone, train_task="world_sizes", held_out_tasks=("world_colors",), steps=2, batch_size=4
    )
    assert set(result) == {"world_sizes", "world_colors"}
    assert all(0 <= value <= 100 for pair in result.values() for value in pair)
    assert not torch.equal(weight, backbone.model.visual.conv1.weight)
    assert not any(p.requires_grad for p in backbone.parameters())
