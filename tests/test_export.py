"""Export: merged weights reload in open_clip with the same outputs; LoRA in peft's format."""

import json

import open_clip
import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import load_file

from peftclip.adapters import ClipSVD, CoDyRA, CoOp, LoRA
from peftclip.backbone import load_backbone
from peftclip.classifier import PeftClipClassifier
from peftclip.cli import main
from peftclip.errors import PeftClipError
from peftclip.export import merge_weight_space_adapters, save_open_clip, save_peft

TINY = "peftclip-tiny-vit"
PROMPTS = ["a photo of a red square.", "a blue circle"]


def _perturbed(adapter):
    backbone = load_backbone(TINY, init_seed=0)
    PeftClipClassifier(backbone, [adapter])
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return backbone


def _features(model_or_backbone, images, tokens):
    with torch.no_grad():
        if isinstance(model_or_backbone, open_clip.CLIP):
            return model_or_backbone.encode_image(images), model_or_backbone.encode_text(tokens)
        backbone = model_or_backbone
        return backbone.encode_image(images), backbone.encode_text_tokens(tokens)


@pytest.mark.parametrize("build", [ClipSVD, lambda: LoRA(r=4), lambda: CoDyRA(r=4)])
def test_exported_weights_reload_in_open_clip_with_the_same_outputs(tmp_path, build):
    adapter = build()
    backbone = _perturbed(adapter)
    images, tokens = torch.randn(2, 3, 32, 32), backbone.tokenize(PROMPTS)
    adapted = _features(backbone, images, tokens)
    merge_weight_space_adapters([adapter])
    path = save_open_clip(backbone, tmp_path / "merged.safetensors")
    reloaded = open_clip.create_model(TINY, pretrained=str(path)).eval()
    exported = _features(reloaded, images, tokens)
    frozen = _features(open_clip.create_model(TINY).eval(), images, tokens)
    for ours, theirs, original in zip(adapted, exported, frozen, strict=True):
        assert torch.allclose(theirs, ours, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(theirs, original, atol=1e-3)  # the adaptation is in the file


def test_export_refuses_prompt_adapters_and_unmerged_layers(tmp_path):
    with pytest.raises(PeftClipError, match="coop add prompts"):
        merge_weight_space_adapters([CoOp(), LoRA()])
    adapter = LoRA(r=2)
    backbone = _perturbed(adapter)
    with pytest.raises(PeftClipError, match="still adapted"):
        save_open_clip(backbone, tmp_path / "x.safetensors")


def test_lora_in_peft_format_loads_onto_a_fresh_backbone(tmp_path):
    adapter = LoRA(r=4, alpha=2, scaling="alpha/sqrt(r)", layers=["q", "v", "c_fc"])
    backbone = _perturbed(adapter)
    images, tokens = torch.randn(2, 3, 32, 32), backbone.tokenize(PROMPTS)
    adapted = _features(backbone, images, tokens)
    folder = save_peft([adapter], tmp_path / "peft")
    assert json.loads((folder / "adapter_config.json").read_text())["use_rslora"] is True

    fresh = load_backbone(TINY, init_seed=0)
    inject_adapter_in_model(LoraConfig.from_pretrained(str(folder)), fresh.model)
    set_peft_model_state_dict(fresh.model, load_file(str(folder / "adapter_model.safetensors")))
    for ours, theirs in zip(adapted, _features(fresh, images, tokens), strict=True):
        assert torch.allclose(theirs, ours, rtol=1e-5, atol=1e-6)


def test_export_command_after_fit(tmp_path, capsys):
    recipe = ["--config", "recipes/zeroshot/tiny_random.yaml", "--model.adapters+=clip_svd"]
    assert main(["fit", *recipe, "--model.optimizer", "AdamW", "--model.optimizer.lr", "0.01",
                 "--data.shots", "2", "--trainer.max_steps", "2",
                 "--trainer.enable_checkpointing", "true", "--trainer.enable_progress_bar",
                 "false", "--trainer.default_root_dir", str(tmp_path)]) == 0  # fmt: skip
    checkpoint = next(tmp_path.rglob("*.ckpt"))
    output = tmp_path / "merged.safetensors"
    code = main(["export", *recipe, "--ckpt_path", str(checkpoint), "--output", str(output)])
    assert code == 0 and "open_clip.create_model" in capsys.readouterr().out
    trained = torch.load(checkpoint, weights_only=False)["state_dict"]
    exported = load_file(str(output))
    assert "transformer.resblocks.0.attn.in_proj_weight" in exported
    s = trained["classifier.adapters.0.sites.text0_q.s"]
    frozen = load_backbone(TINY, init_seed=0).model.transformer.resblocks[0].attn.q.weight
    # The exported q rows carry the trained singular values, not the frozen ones.
    q = exported["transformer.resblocks.0.attn.in_proj_weight"][: frozen.shape[0]]
    assert torch.allclose(torch.linalg.svdvals(q), s.sort(descending=True).values, atol=1e-4)
    assert not torch.allclose(q, frozen, atol=1e-4)
