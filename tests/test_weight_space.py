"""Weight-space adapters (CLIP-SVD, LoRA, CoDyRA): identity at init, merge, counts, composition."""

import pytest
import torch
from torch import nn

from peftclip.adapters import ClipSVD, CoDyRA, CoOp, LoRA, MaPLe
from peftclip.adapters.clip_svd import default_cache_dir
from peftclip.adapters.targets import find_targets
from peftclip.backbone import load_backbone
from peftclip.classifier import PeftClipClassifier
from peftclip.errors import PeftClipError

CLASSES = ["red square", "green circle", "blue star"]
BUILDERS = {
    "clip_svd": lambda: ClipSVD(),
    "lora": lambda: LoRA(r=4, alpha=8, dropout=0.25),
    "lora_rs": lambda: LoRA(r=2, alpha=1, scaling="alpha/sqrt(r)", layers=["q", "k", "v"]),
    "codyra": lambda: CoDyRA(r=4),
}


@pytest.fixture
def backbone():
    """A fresh tiny CLIP per test: weight-space adapters replace its layers in place."""
    return load_backbone("peftclip-tiny-vit", init_seed=0)


def _logits(classifier, images):
    with torch.no_grad():
        return classifier.eval()(images, CLASSES)["logits"]


def _perturb(adapter):
    """Moves every trainable tensor away from its identity value (as training would)."""
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))


@pytest.mark.parametrize("name", BUILDERS)
def test_identity_at_init(backbone, name):
    images = torch.randn(3, 3, 32, 32)
    frozen = _logits(PeftClipClassifier(load_backbone("peftclip-tiny-vit", init_seed=0)), images)
    adapted = PeftClipClassifier(backbone, [BUILDERS[name]()])
    assert torch.allclose(_logits(adapted, images), frozen, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", BUILDERS)
def test_merged_equals_unmerged_and_unmerge_restores(backbone, name):
    images = torch.randn(3, 3, 32, 32)
    adapter = BUILDERS[name]()
    classifier = PeftClipClassifier(backbone, [adapter])
    _perturb(adapter)
    adapted = _logits(classifier, images)
    adapter.merge()
    linears = [target.module for target in adapter.targets]
    assert all(type(layer) is nn.Linear for layer in linears)  # plain layers: no overhead
    assert torch.allclose(_logits(classifier, images), adapted, rtol=1e-5, atol=1e-5)
    adapter.unmerge()
    assert all(type(target.module) is not nn.Linear for target in adapter.targets)
    assert torch.allclose(_logits(classifier, images), adapted, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", BUILDERS)
def test_only_adapter_tensors_train_and_checkpoints_hold_only_them(backbone, name):
    adapter = BUILDERS[name]()
    classifier = PeftClipClassifier(backbone, [adapter]).train()
    images = torch.randn(2, 3, 32, 32)
    logits = classifier(images, CLASSES)["logits"]
    nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    trainable = {id(p) for p in adapter.parameters()}
    for parameter in classifier.parameters():
        assert parameter.requires_grad == (id(parameter) in trainable)
    state = adapter.state_dict()
    frozen_numel = sum(p.numel() for p in backbone.parameters() if not p.requires_grad)
    assert sum(v.numel() for v in state.values() if v.is_floating_point()) < frozen_numel / 2
    assert all(".base" not in key and "U" not in key.split(".") for key in state)


def test_svd_reconstructs_every_target_and_factorized_path_agrees(backbone):
    originals = {t.key: t.module.weight.detach().clone() for t in find_targets(backbone)}
    adapter = ClipSVD()
    PeftClipClassifier(backbone, [adapter])
    assert len(adapter.sites) == len(originals) == 2 * 2 * 6
    for key, layer in adapter.sites.items():
        x = torch.randn(5, layer.in_features)
        weight = originals[key]
        assert (layer.weight - weight).abs().max() <= 1e-5 * weight.abs().max()
        layer.factorized = True
        factorized = layer(x)
        layer.factorized = False
        assert torch.allclose(layer(x), factorized, rtol=1e-5, atol=1e-5)


def _count_svd_calls(monkeypatch) -> list[torch.device]:
    """Records the device of every ``torch.linalg.svd`` input (one entry per decomposition)."""
    devices, svd = [], torch.linalg.svd

    def counting_svd(matrix, *args, **kwargs):
        devices.append(matrix.device)
        return svd(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", counting_svd)
    return devices


def _svd_build(cache_dir, seed=0, **options) -> ClipSVD:
    adapter = ClipSVD(cache_dir=str(cache_dir), **options)
    adapter.attach(load_backbone("peftclip-tiny-vit", init_seed=seed))
    return adapter


def _factors(adapter):
    return {key: (site.U, site.s, site.Vh) for key, site in adapter.sites.items()}


def _same_factors(first, second):
    return first.keys() == second.keys() and all(
        all(torch.equal(a, b) for a, b in zip(first[key], second[key], strict=True))
        for key in first
    )


def test_second_svd_build_loads_bitwise_equal_factors_from_the_cache(tmp_path, monkeypatch):
    calls = _count_svd_calls(monkeypatch)
    computed = _factors(_svd_build(tmp_path))
    assert len(calls) == 24 and len(list(tmp_path.glob("*.safetensors"))) == 24
    loaded = _factors(_svd_build(tmp_path))
    assert len(calls) == 24  # no decomposition the second time
    assert _same_factors(loaded, computed)
    uncached = _factors(_svd_build(tmp_path, cache=False))
    assert len(calls) == 48 and _same_factors(uncached, computed)


def test_svd_cache_entries_follow_dtype_targets_and_weights(tmp_path, monkeypatch):
    calls = _count_svd_calls(monkeypatch)
    _svd_build(tmp_path, layers=["q"])
    assert len(calls) == 4  # q of 2 blocks × 2 towers
    _svd_build(tmp_path, layers=["k"])
    assert len(calls) == 8  # other targets: their own entries
    _svd_build(tmp_path, layers=["q"], towers="text")
    assert len(calls) == 8  # a subset of cached targets: nothing to decompose
    _svd_build(tmp_path, layers=["q"], svd_dtype="float32")
    assert len(calls) == 12
    _svd_build(tmp_path, seed=1, layers=["q"])
    assert len(calls) == 16
    assert len(list(tmp_path.glob("*.safetensors"))) == 16


def test_a_corrupt_or_foreign_svd_cache_file_is_recomputed_with_a_warning(tmp_path, monkeypatch):
    computed = _factors(_svd_build(tmp_path, layers=["q", "k"], towers="text"))
    files = sorted(tmp_path.glob("*.safetensors"))
    files[0].write_bytes(b"not a safetensors file")
    files[2].write_bytes(files[1].read_bytes())  # a valid file of another layer, same shape
    calls = _count_svd_calls(monkeypatch)
    with pytest.warns(UserWarning, match="does not match its layer") as caught:
        rebuilt = _factors(_svd_build(tmp_path, layers=["q", "k"], towers="text"))
    assert len(caught) == 2 and len(calls) == 2
    assert _same_factors(rebuilt, computed)
    _svd_build(tmp_path, layers=["q", "k"], towers="text")  # the files were rewritten
    assert len(calls) == 2


def test_svd_runs_where_the_weights_are_even_when_a_gpu_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    calls = _count_svd_calls(monkeypatch)
    _svd_build(tmp_path, cache=False, layers=["q"])
    assert calls and all(device == torch.device("cpu") for device in calls)


def test_svd_cache_defaults_to_the_user_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "peftclip" / "svd"
    ClipSVD(layers=["q"]).attach(load_backbone("peftclip-tiny-vit", init_seed=0))
    assert len(list(default_cache_dir().glob("*.safetensors"))) == 4
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "peftclip" / "svd"


def test_lora_scale_modes_and_out_projection_targeting(backbone):
    adapter = LoRA(r=4, alpha=2, scaling="alpha/sqrt(r)", layers=["o"])
    classifier = PeftClipClassifier(backbone, [adapter])
    layer = adapter.targets[0].module
    assert layer.scaling["default"] == pytest.approx(2 / 4**0.5)
    images = torch.randn(2, 3, 32, 32)
    before = _logits(classifier, images)
    _perturb(adapter)
    # o-only LoRA must change the outputs (peft's MultiheadAttention path makes it a no-op).
    assert not torch.allclose(_logits(classifier, images), before, atol=1e-4)
    assert LoRA(r=4, alpha=2).scaling == "alpha/r"


def test_lora_dropout_runs_only_in_training(backbone):
    adapter = LoRA(r=4, alpha=4, dropout=0.5)
    classifier = PeftClipClassifier(backbone, [adapter])
    _perturb(adapter)
    images = torch.randn(2, 3, 32, 32)
    classifier.train()
    assert all(site.dropout.training for site in adapter.sites.values())
    with torch.no_grad():
        first, second = (classifier(images, CLASSES)["logits"] for _ in range(2))
    assert not torch.allclose(first, second)
    assert torch.equal(_logits(classifier, images), _logits(classifier, images))


def test_two_weight_space_adapters_on_one_layer_fail_at_build_time(backbone):
    with pytest.raises(PeftClipError, match="already adapted by clip_svd"):
        PeftClipClassifier(backbone, [ClipSVD(layers=["q"]), LoRA(layers=["q", "v"])])


def test_disjoint_weight_space_adapters_compose(backbone):
    svd, lora = ClipSVD(towers="vision"), LoRA(r=2, towers="text")
    PeftClipClassifier(backbone, [svd, lora])
    assert {t.tower for t in svd.targets} == {"vision"}
    assert {t.tower for t in lora.targets} == {"text"}


@pytest.mark.parametrize(
    ("prompt", "weights"),
    [(lambda: CoOp(n_ctx=4), lambda: LoRA(r=2)), (lambda: MaPLe(prompt_depth=2), ClipSVD)],
)
def test_prompt_plus_weight_space_trains_both_and_nothing_else(backbone, prompt, weights):
    prompt_adapter, weight_adapter = prompt(), weights()
    classifier = PeftClipClassifier(backbone, [prompt_adapter, weight_adapter]).train()
    logits = classifier(torch.randn(2, 3, 32, 32), CLASSES)["logits"]
    nn.functional.cross_entropy(logits, torch.tensor([1, 2])).backward()
    for adapter in (prompt_adapter, weight_adapter):
        # (LoRA's A gets a zero gradient at init, B = 0; every tensor still takes part.)
        assert all(p.grad is not None for p in adapter.parameters())
        assert sum(p.grad.abs().sum() for p in adapter.parameters()) > 0
    adapter_ids = {id(p) for a in (prompt_adapter, weight_adapter) for p in a.parameters()}
    assert all(id(p) in adapter_ids for p in classifier.parameters() if p.requires_grad)


def test_text_features_follow_adapted_text_weights(backbone):
    """A text-tower adapter must never be served the frozen model's cached text features."""
    adapter = LoRA(r=2, towers="text")
    classifier = PeftClipClassifier(backbone, [adapter]).eval()
    with torch.no_grad():
        before = classifier.text_features(CLASSES)
        _perturb(adapter)
        after = classifier.text_features(CLASSES)
    assert not torch.allclose(before, after, atol=1e-4)


def test_targets_select_towers_blocks_and_kinds(backbone):
    targets = find_targets(backbone, "text", ["c_fc", "q"], [-1])
    assert [t.key for t in targets] == ["text1_q", "text1_c_fc"]
    assert targets[1].path == "transformer.resblocks.1.mlp.c_fc"
    with pytest.raises(PeftClipError, match="block 5 does not exist"):
        find_targets(backbone, "vision", ["q"], [5])
    with pytest.raises(PeftClipError, match="unknown layer kinds"):
        find_targets(backbone, "both", ["qkv"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: ClipSVD(cache=False), 92_160),  # the stand-in SVD must not be cached
        (lambda: LoRA(r=2, alpha=1, scaling="alpha/sqrt(r)", layers=["q", "k", "v"]), 184_320),
        (lambda: LoRA(r=16, alpha=16), 4_423_680),
        (lambda: CoDyRA(r=16), 4_425_984),
    ],
)
def test_trainable_counts_on_vit_b_16(build, expected, monkeypatch):
    """The counts of docs/methods/index.md. The SVD itself is replaced by a shape-exact
    stand-in: 144 decompositions take minutes on a shared 2-core CPU, and its values are tested
    above."""

    def shape_only_svd(weight, full_matrices=True):
        k = min(weight.shape)
        return weight[:, :k], weight.new_ones(k), weight[:k, :]

    monkeypatch.setattr(torch.linalg, "svd", shape_only_svd)
    adapter = build()
    PeftClipClassifier(load_backbone("ViT-B-16", init_seed=0), [adapter])
    assert sum(p.numel() for p in adapter.parameters() if p.requires_grad) == expected
    assert len(adapter.targets) == 144 if expected != 184_320 else 72


def test_svd_weight_is_built_once_per_step_with_the_per_call_loss_and_gradients(
    backbone, monkeypatch
):
    """Chunked, prefix-shared text encoding calls each text layer several times per step; the
    classifier's forward builds ``W(s)`` once and the loss and gradients are those of building it
    per call (the path before the step scope), to fp32 rounding."""
    from peftclip.adapters.clip_svd import SingularValueLinear

    torch.manual_seed(0)
    adapter = ClipSVD(cache=False)
    classifier = PeftClipClassifier(backbone, [adapter], text_chunk_size=2).train()
    _perturb(adapter)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    weights_seen: dict[int, list[torch.Tensor]] = {}
    plain_forward = SingularValueLinear.forward

    def recording_forward(layer, x):
        weights_seen.setdefault(id(layer), []).append(layer.weight)
        return plain_forward(layer, x)

    monkeypatch.setattr(SingularValueLinear, "forward", recording_forward)

    def step(forward):
        weights_seen.clear()
        loss = nn.functional.cross_entropy(forward(images, CLASSES)["logits"], labels)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in adapter.named_parameters()}
        adapter.zero_grad(set_to_none=True)
        distinct = {key: len({id(w) for w in seen}) for key, seen in weights_seen.items()}
        calls = {key: len(seen) for key, seen in weights_seen.items()}
        return loss.detach(), grads, distinct, calls

    per_call = step(classifier._forward)  # no step scope: W(s) built on every call
    once = step(classifier)
    assert max(per_call[3].values()) >= 3  # text layers: prefix + two chunks of class tails
    assert per_call[2] == per_call[3]  # ... each call built its own W(s)
    assert set(once[2].values()) == {1} and once[3] == per_call[3]
    assert torch.equal(once[0], per_call[0])
    assert once[1].keys() == per_call[1].keys() and len(once[1]) == len(adapter.sites)
    for name, grad in per_call[1].items():
        torch.testing.assert_close(once[1][name], grad, rtol=1e-5, atol=1e-7)
    assert all(layer._step_weight is None for layer in adapter.sites.values())
    with torch.no_grad():
        adapter.sites[next(iter(adapter.sites))].s.mul_(1.5)  # a new step after an update
    assert not torch.equal(step(classifier)[0], once[0])
