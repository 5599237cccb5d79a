"""``register_model``: a package adds a config, its tokenizer and its shipped weights."""

import json

import pytest
import torch

import peftclip.backbone.models as models
from peftclip.backbone import load_backbone, register_model, weights_sha256
from peftclip.backbone.loading import get_tokenizer
from peftclip.errors import PeftClipError
from peftclip.export import open_clip_state_dict
from peftclip.world.model import SHIPPED_WEIGHTS
from peftclip.world.tokenizer import WordTokenizer
from tests.conftest import TINY


@pytest.fixture
def fresh_registry(monkeypatch):
    monkeypatch.setattr(models, "_MODELS", dict(models._MODELS))


def _config_file(tmp_path, name):
    config = json.loads(models.registered_model(TINY).config_file.read_text())
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


def test_a_registered_model_builds_with_its_tokenizer_and_shipped_weights(tmp_path, fresh_registry):
    tiny = load_backbone(TINY, init_seed=3)
    weights = tmp_path / "shipped.pt"
    torch.save(open_clip_state_dict(tiny), weights)  # open_clip's own key names
    config = _config_file(tmp_path, "peftclip-test-registered")
    register_model("peftclip-test-registered", config, WordTokenizer, {"mine": weights})
    assert isinstance(get_tokenizer("peftclip-test-registered"), WordTokenizer)
    built = load_backbone("peftclip-test-registered", pretrained="mine")
    assert built.identity.pretrained == str(weights.resolve())
    assert weights_sha256(built.model) == weights_sha256(tiny.model)


def test_the_world_model_is_registered_by_the_world(fresh_registry):
    world = models.registered_model("peftclip-world-tiny")
    assert world.tokenizer_factory is WordTokenizer
    assert world.shipped_weights == {"world": SHIPPED_WEIGHTS}
    assert world.config_file.parent.parent.name == "world"  # owned by peftclip/world/


def test_bad_registrations_are_refused(tmp_path, fresh_registry):
    with pytest.raises(ValueError, match=r"must be named other\.json"):
        register_model("other", _config_file(tmp_path, "peftclip-x"))
    with pytest.raises(ValueError, match="already registered"):
        register_model(TINY, _config_file(tmp_path, TINY), WordTokenizer)
    not_a_config = tmp_path / "peftclip-empty.json"
    not_a_config.write_text("{}")
    with pytest.raises(ValueError, match="not an open_clip model config"):
        register_model("peftclip-empty", not_a_config)


def test_missing_shipped_weights_say_what_to_do(tmp_path, fresh_registry):
    register_model(
        "peftclip-no-weights", _config_file(tmp_path, "peftclip-no-weights"),
        shipped_weights={"gone": tmp_path / "gone.safetensors"},
    )  # fmt: skip
    with pytest.raises(PeftClipError, match=r"shipped weights .* are missing"):
        load_backbone("peftclip-no-weights", pretrained="gone")
