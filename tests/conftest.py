import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network from a test

import pytest
import torch

from peftclip.backbone import load_backbone

TINY = "peftclip-tiny-vit"


@pytest.fixture(scope="session")
def tiny_backbone():
    return load_backbone(TINY, init_seed=0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
