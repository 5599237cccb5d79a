"""CUDA paths (skipped without a GPU): split attention on the GPU and mixed-precision training."""

import open_clip
import pytest
import torch

from peftclip.backbone import load_backbone
from tests.test_cli import _fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_split_backbone_equals_open_clip_on_cuda():
    backbone = load_backbone("ViT-B-16", init_seed=0).cuda()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        reference = open_clip.create_model("ViT-B-16").eval().cuda()
    images = torch.randn(4, 3, 224, 224, device="cuda")
    tokens = open_clip.get_tokenizer("ViT-B-16")(["a photo of a dog.", "a red car"]).cuda()
    with torch.no_grad():
        assert (backbone.encode_image(images) - reference.encode_image(images)).abs().max() <= 1e-4
        ours, theirs = backbone.encode_text_tokens(tokens), reference.encode_text(tokens)
        assert (ours - theirs).abs().max() <= 1e-4
        for dtype in (torch.float16, torch.bfloat16):
            with torch.autocast("cuda", dtype=dtype):
                mixed = backbone.encode_image(images).float()
            cosine = torch.nn.functional.cosine_similarity(mixed, reference.encode_image(images))
            assert cosine.min() > 0.99


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "32-true"])
def test_training_step_on_cuda(tmp_path, precision):
    cli = _fit(tmp_path, "--trainer.precision", precision, "--trainer.accelerator", "gpu")
    trainable = [p for p in cli.model.parameters() if p.requires_grad]
    assert cli.trainer.strategy.root_device.type == "cuda"
    assert all(p.dtype == torch.float32 for p in trainable)
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
