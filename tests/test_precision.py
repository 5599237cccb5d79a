"""precision_profile anchor_fp16: the CoOp family's fp16 layout.

See docs/methods/index.md#precision-profiles and the reproduction switches of docs/methods/coop.md.
"""

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNormFp32

from peftclip.adapters import IVLP, Adapter, CoCoOp, CoOp, MaPLe, VPTDeep
from peftclip.backbone import BackboneSpec, load_backbone
from peftclip.classifier import PeftClipClassifier
from peftclip.errors import PeftClipError
from peftclip.lightning.cli import PeftClipCLI
from peftclip.lightning.module import PeftClipModule
from peftclip.precision import convert_to_anchor_fp16

TINY = "peftclip-tiny-vit"
CLASSES = ["red", "green", "blue", "a small dog"]
HALF, FULL = torch.float16, torch.float32
#: Adapters of the CoOp family on the 2-block tiny model, and the adapter tensors that the
#: anchors create in CLIP's dtype (fp16); every other adapter parameter must stay fp32.
ADAPTERS = {
    "coop": (lambda: CoOp(n_ctx=4), {"ctx"}),
    "coop_init": (lambda: CoOp(ctx_init="a photo of a"), {"ctx"}),
    "cocoop": (CoCoOp, {"ctx", "meta_net.0.weight", "meta_net.0.bias", "meta_net.2.weight",
                        "meta_net.2.bias"}),
    "maple": (lambda: MaPLe(prompt_depth=2), {"ctx", "proj.weight", "proj.bias"}),
    "ivlp": (lambda: IVLP(text_depth=2, vision_depth=2), {"ctx"}),
    "vpt_deep": (lambda: VPTDeep(vision_depth=2), set()),
}  # fmt: skip


def _expected_backbone_dtype(name: str) -> torch.dtype:
    """OpenAI's convert_weights, written out per parameter name of the split open_clip model."""
    leaf = name.rsplit(".", 1)[-1]
    if name in ("text_projection", "visual.proj", "visual.conv1.weight"):
        return HALF
    if ".attn." in name or ".mlp." in name:  # q/k/v/o and c_fc/c_proj weights and biases
        assert leaf in ("weight", "bias"), name
        return HALF
    fp32 = ("token_embedding.weight", "positional_embedding", "visual.positional_embedding",
            "visual.class_embedding", "logit_scale")  # fmt: skip
    if name in fp32 or ".ln_" in f".{name}":  # ln_1, ln_2, ln_pre, ln_post, ln_final
        return FULL
    raise AssertionError(f"parameter {name} is not covered by the spec's list")


@pytest.fixture(scope="module")
def anchor_backbone():
    """An fp16 backbone of this module's own: the shared ``tiny_backbone`` must stay fp32."""
    backbone = load_backbone(TINY, None)
    convert_to_anchor_fp16(backbone)
    return backbone


def _anchor_classifier(backbone, key: str) -> PeftClipClassifier:
    torch.manual_seed(0)
    classifier = PeftClipClassifier(backbone, [ADAPTERS[key][0]()])
    convert_to_anchor_fp16(classifier.backbone, classifier.adapters)  # again: idempotent
    return classifier.eval()


@pytest.mark.parametrize("key", list(ADAPTERS))
def test_dtypes_after_conversion_follow_the_spec(anchor_backbone, key):
    classifier = _anchor_classifier(anchor_backbone, key)
    backbone = classifier.backbone
    dtypes = {name: p.dtype for name, p in backbone.model.named_parameters()}
    assert {name: _expected_backbone_dtype(name) for name in dtypes} == dtypes
    assert backbone.dtype == HALF and backbone.model.transformer.get_cast_dtype() == HALF
    assert not any(p.requires_grad for p in backbone.parameters())  # still frozen

    expected_half = ADAPTERS[key][1]
    adapter = classifier.adapters[0]
    params = dict(adapter.named_parameters())
    assert expected_half <= params.keys()
    assert {n: p.dtype for n, p in params.items()} == {
        n: HALF if n in expected_half else FULL for n in params
    }
    assert all(p.requires_grad for p in params.values())  # fp16 *parameters*, trained in fp16


def test_layer_norms_compute_in_fp32_and_cast_back(anchor_backbone, monkeypatch):
    classifier = _anchor_classifier(anchor_backbone, "maple")
    model = classifier.backbone.model
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(isinstance(m, LayerNormFp32) for m in norms)
    computed, returned = [], []
    real_layer_norm = F.layer_norm

    def spy(x, *args, **kwargs):
        computed.append(x.dtype)
        return real_layer_norm(x, *args, **kwargs)

    monkeypatch.setattr(F, "layer_norm", spy)
    hooks = [m.register_forward_hook(lambda m, i, out: returned.append(out.dtype)) for m in norms]
    with torch.no_grad():
        classifier(torch.randn(2, 3, 32, 32), CLASSES)
    for hook in hooks:
        hook.remove()
    # Every LayerNorm ran (2 blocks × 2 per tower + ln_pre, ln_post, ln_final), the text
    # blocks' twice (the shared prompt prefix, then the class tails) but the last block's ln_2
    # (its MLP runs on the pooled rows only): in fp32 ...
    assert len(norms) == 11 and len(computed) == 11 + 2 * 2 - 1 and set(computed) == {FULL}
    assert set(returned) == {HALF}  # ... and handed fp16 on to the fp16 layers


@pytest.mark.parametrize("key", list(ADAPTERS))
def test_fp16_outputs_agree_with_the_fp32_model(tiny_backbone, anchor_backbone, key):
    torch.manual_seed(0)
    reference = PeftClipClassifier(tiny_backbone, [ADAPTERS[key][0]()]).eval()
    anchor = _anchor_classifier(anchor_backbone, key)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected, got = reference(images, CLASSES), anchor(images, CLASSES)
    assert got["logits"].dtype == got["image_features"].dtype == HALF
    for name in ("logits", "image_features", "text_features"):
        want, have = expected[name].flatten(1), got[name].float().flatten(1)
        assert not torch.equal(want, have)  # really computed in another precision
        assert F.cosine_similarity(want, have, dim=-1).min() > 0.999, name


def _cli(tmp_path, *extra):
    return PeftClipCLI(
        args=[
            "--config", "recipes/zeroshot/tiny_random.yaml", "--model.adapters+=coop",
            "--model.adapters.init_args.n_ctx=4", "--model.precision_profile", "anchor_fp16",
            "--model.optimizer", "SGD", "--model.optimizer.lr", "0.002",
            "--model.optimizer.momentum", "0.9", "--model.optimizer.weight_decay", "0.0005",
            "--data.shots", "2", "--trainer.fast_dev_run", "true",
            "--trainer.default_root_dir", str(tmp_path), *extra,
        ],
        run=False,
    )  # fmt: skip


def test_sgd_step_updates_the_fp16_ctx_in_place_without_master_copy(tmp_path):
    cli = _cli(tmp_path)
    ctx = cli.model.adapters[0].ctx
    before = ctx.detach().clone()
    grads = []
    ctx.register_post_accumulate_grad_hook(lambda p: grads.append(p.grad.dtype))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)

    assert cli.trainer.state.finished and cli.trainer.precision == "32-true"
    assert cli.model.adapters[0].ctx is ctx and ctx.dtype == HALF
    assert not torch.equal(ctx.detach(), before)  # the one SGD step moved it
    assert grads == [HALF]  # fp16 gradient straight onto the fp16 parameter
    (optimizer,) = cli.trainer.optimizers
    (group,) = optimizer.param_groups
    assert len(group["params"]) == 1 and group["params"][0] is ctx  # no fp32 master copy
    assert optimizer.state[ctx]["momentum_buffer"].dtype == HALF
    assert getattr(cli.trainer.precision_plugin, "scaler", None) is None  # no loss scaling
    assert cli.model.backbone.dtype == HALF

    checkpoint = {}
    cli.model.on_save_checkpoint(checkpoint)
    assert checkpoint["peftclip"]["precision_profile"] == "anchor_fp16"
    assert checkpoint["state_dict"]["classifier.adapters.0.ctx"].dtype == HALF


def test_mixed_precision_trainer_is_refused(tmp_path):
    cli = _cli(tmp_path, "--trainer.precision", "bf16-mixed")
    with pytest.raises(PeftClipError, match=r"needs --trainer\.precision 32-true"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def test_adapters_without_an_anchor_fp16_layout_are_refused():
    class WeightSpace(Adapter):
        name = "weight_space"

    with pytest.raises(PeftClipError, match="weight_space has none"):
        _ = convert_to_anchor_fp16(load_backbone(TINY, None), [WeightSpace()])
    with pytest.raises(PeftClipError, match="unknown precision_profile"):
        PeftClipModule(backbone=BackboneSpec(TINY), precision_profile="fp16")


def test_modern_profile_keeps_everything_fp32():
    module = PeftClipModule(backbone=BackboneSpec(TINY), adapters=[MaPLe(prompt_depth=2)])
    assert module.precision_profile == "modern"
    assert {p.dtype for p in module.parameters()} == {FULL}
    assert not any(isinstance(m, LayerNormFp32) for m in module.modules())
