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
