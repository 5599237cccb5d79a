import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network from a test

import pytest
import torch

from peftclip.backbone import load_backbone

TINY = "peftclip-tiny-vit"


@pytest.fixture(scope="session")
def _tiny_backbone_and_state():
    backbone = load_backbone(TINY, init_seed=0)
    return backbone, {name: tensor.clone() for name, tensor in backbone.state_dict().items()}


@pytest.fixture
def tiny_backbone(_tiny_backbone_and_state):
    """One frozen tiny CLIP for the session. Tests that attach weight-space adapters (which
    wrap the backbone's layers in place) take a copy: after each test it must be unchanged."""
    backbone, state = _tiny_backbone_and_state
    yield backbone
    after = backbone.state_dict()
    assert after.keys() == state.keys(), "a test changed the shared tiny_backbone's modules"
    changed = [name for name, tensor in state.items() if not torch.equal(after[name], tensor)]
    assert not changed, f"a test changed the shared tiny_backbone's weights: {changed[:3]}"


@pytest.fixture(scope="session", autouse=True)
def _user_cache(tmp_path_factory):
    """Caches that default to ~/.cache (CLIP-SVD factors) and the results database go to
    temporary folders."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
        # Runs record their results (peftclip.results); never into the checkout's runs/.
        patch.setenv("PEFTCLIP_RESULTS_DB", str(tmp_path_factory.mktemp("results") / "r.sqlite"))
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
