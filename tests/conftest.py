import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network from a test

import pytest
import torch

from peftclip.backbone import load_backbone

TINY = "peftclip-tiny-vit"


@pytest.fixture(scope="session")
def tiny_backbone():
    return load_backbone(TINY, init_seed=0)


@pytest.fixture(scope="session", autouse=True)
def _user_cache(tmp_path_factory):
    """Caches that default to ~/.cache (CLIP-SVD factors) go to a temporary folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
