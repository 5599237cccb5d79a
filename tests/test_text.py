"""Templates, class prompts, the template ensemble and the text-feature cache."""

import open_clip
import pytest
import torch
import torch.nn.functional as F

from peftclip.backbone import TextFeatureCache, class_prompts, template_head, zero_shot_head
from peftclip.data import resolve_templates, template_sets
from peftclip.data.templates import IMAGENET_80_TEMPLATES
from peftclip.errors import PeftClipError

CLASSES = ["golden_retriever", "tabby cat", "airplane", "dog", "sea_lion"]


def test_named_template_sets():
    assert len(resolve_templates("imagenet80")) == 80
    assert IMAGENET_80_TEMPLATES[0] == "a bad photo of a {}."
    assert resolve_templates("imagenet_select")[0] == "itap of a {}."
    assert resolve_templates("coop:dtd") == ["{} texture."]
    assert resolve_templates("a photo of a {}.") == ["a photo of a {}."]
    assert len([name for name in template_sets() if name.startswith("coop:")]) == 15


@pytest.mark.parametrize("bad", ["a photo", "a {} of {}", []])
def test_bad_templates_fail_clearly(bad):
    with pytest.raises(PeftClipError):
        resolve_templates(bad)


@pytest.mark.parametrize("unresolved", ["imagenet80", "a photo of a {}.", ["a photo"], []])
def test_the_backbone_takes_only_resolved_templates(tiny_backbone, unresolved):
    for head in (template_head, zero_shot_head):
        with pytest.raises(PeftClipError, match="templates"):
            head(tiny_backbone, CLASSES, unresolved)


def test_class_prompts_replace_underscores():
    assert class_prompts(["sea_lion"], "a photo of a {}.") == ["a photo of a sea lion."]


def test_single_template_head_equals_open_clip(tiny_backbone):
    head = zero_shot_head(tiny_backbone, CLASSES, ["a photo of a {}."])
    reference = tiny_backbone.model  # split, but the tokenizer path is open_clip's
    tokens = open_clip.get_tokenizer("peftclip-tiny-vit")(
        class_prompts(CLASSES, "a photo of a {}.")
    )
    with torch.no_grad():
        expected = F.normalize(tiny_backbone.encode_text_tokens(tokens), dim=-1)
    assert torch.allclose(head, expected, atol=1e-6)
    assert reference.logit_scale.requires_grad is False


def test_ensemble_is_mean_of_normalized_features(tiny_backbone):
    templates = ["a photo of a {}.", "art of the {}.", "{} texture."]
    singles = [zero_shot_head(tiny_backbone, CLASSES, [t]) for t in templates]
    expected = F.normalize(sum(singles) / 3, dim=-1)
    assert torch.allclose(zero_shot_head(tiny_backbone, CLASSES, templates), expected, atol=1e-6)


def test_chunked_encoding_equals_one_call(tiny_backbone):
    select = resolve_templates("imagenet_select")
    one = zero_shot_head(tiny_backbone, CLASSES, select, chunk_size=1000)
    chunked = zero_shot_head(tiny_backbone, CLASSES, select, chunk_size=2)
    assert torch.allclose(one, chunked, atol=1e-6)


def test_cache_hits_in_memory_and_on_disk(tiny_backbone, tmp_path, monkeypatch):
    cache = TextFeatureCache(tmp_path)
    first = zero_shot_head(tiny_backbone, CLASSES, ["a photo of a {}."], cache=cache)
    assert len(list(tmp_path.glob("*.pt"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("the text encoder ran despite a cache hit")

    monkeypatch.setattr(tiny_backbone, "encode_text_tokens", fail)
    assert torch.equal(
        zero_shot_head(tiny_backbone, CLASSES, ["a photo of a {}."], cache=cache), first
    )
    from_disk = zero_shot_head(
        tiny_backbone, CLASSES, ["a photo of a {}."], cache=TextFeatureCache(tmp_path)
    )
    assert torch.equal(from_disk, first)
    other_key = TextFeatureCache.key(tiny_backbone, ["a photo of a {}."], CLASSES[:-1])
    assert other_key != TextFeatureCache.key(tiny_backbone, ["a photo of a {}."], CLASSES)
