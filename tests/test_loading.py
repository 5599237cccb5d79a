"""load_backbone: weights from local files, and one clear error per kind of bad input."""

import pytest
import torch
from safetensors.torch import save_file

from peftclip.backbone import load_backbone
from peftclip.errors import PeftClipError
from tests.conftest import TINY


def test_unknown_model_name_lists_close_matches():
    with pytest.raises(PeftClipError, match=r"unknown model name 'ViT-B-61'.*ViT-B-16"):
        load_backbone("ViT-B-61")


def test_missing_local_checkpoint_is_named(tmp_path):
    missing = tmp_path / "ViT-B-16.pt"
    with pytest.raises(PeftClipError, match=r"does not exist.*check the path"):
        load_backbone(TINY, pretrained=str(missing))


def test_unknown_tag_lists_known_tags():
    with pytest.raises(PeftClipError, match=r"neither a pretrained tag.*openai"):
        load_backbone("ViT-B-16-quickgelu", pretrained="opneai")


def test_openai_tag_on_a_gelu_config_is_refused_before_any_download():
    with pytest.raises(PeftClipError, match=r"QuickGELU.*ViT-B-16-quickgelu"):
        load_backbone("ViT-B-16", pretrained="openai")


def test_openai_torchscript_file_on_a_gelu_config_is_refused(tmp_path):
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))  # OpenAI ships TorchScript archives
    with pytest.raises(PeftClipError, match="QuickGELU"):
        load_backbone("ViT-B-32", pretrained=str(path))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_checkpoint_loads_exactly(tmp_path, suffix):
    source = load_backbone(TINY, init_seed=5)
    state = {k: v.contiguous() for k, v in _unsplit_state_dict(source).items()}
    path = tmp_path / f"tiny{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    loaded = load_backbone(TINY, pretrained=str(path), init_seed=0)
    assert loaded.identity.weights_sha256 == source.identity.weights_sha256
    assert loaded.identity.pretrained == str(path.resolve())


def test_checkpoint_of_another_architecture_names_the_mismatch(tmp_path):
    other = load_backbone("ViT-B-32", init_seed=0)
    path = tmp_path / "vit-b-32.pt"
    torch.save(_unsplit_state_dict(other), path)
    with pytest.raises(PeftClipError, match=r"does not match the architecture.*wrong shapes"):
        load_backbone(TINY, pretrained=str(path))


def test_unreadable_checkpoint_is_reported(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(PeftClipError, match="could not read checkpoint"):
        load_backbone(TINY, pretrained=str(path))


def _unsplit_state_dict(backbone) -> dict:
    """The open_clip-format state dict of a backbone (fused in_proj, as checkpoints store it)."""
    import open_clip

    with torch.random.fork_rng():
        model = open_clip.create_model(backbone.identity.model_name)
    state = model.state_dict()
    ours = backbone.model.state_dict()
    for key in state:
        if ".attn.in_proj_" in key:
            kind = key.rsplit("_", 1)[1]  # weight | bias
            prefix = key.split(".attn.")[0] + ".attn."
            state[key] = torch.cat([ours[f"{prefix}{part}.{kind}"] for part in "qkv"])
        elif ".attn.out_proj." in key:
            state[key] = ours[key.replace(".attn.out_proj.", ".attn.o.")]
        else:
            state[key] = ours[key]
    return state


def test_torchscript_archive_loads_like_openai_weights(tmp_path):
    import open_clip

    with torch.random.fork_rng():
        torch.manual_seed(3)
        scripted = open_clip.create_model(TINY, jit=True)  # the format OpenAI distributes
    path = tmp_path / "tiny-openai.pt"
    scripted.save(str(path))
    loaded = load_backbone(TINY, pretrained=str(path))
    expected = load_backbone(TINY, init_seed=3)
    assert loaded.identity.weights_sha256 == expected.identity.weights_sha256


def test_gelu_tag_on_a_quickgelu_config_is_refused_too():
    with pytest.raises(PeftClipError, match=r"trained with nn.GELU.*drop force_quick_gelu"):
        load_backbone("ViT-B-16", pretrained="laion2b_s34b_b88k", force_quick_gelu=True)


def test_random_init_warning_only_when_no_weights_follow(caplog):
    with caplog.at_level("WARNING"):
        load_backbone(TINY)
    assert "Model initialized randomly" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_backbone("peftclip-world-tiny", pretrained="world")
    assert "Model initialized randomly" not in caplog.text
