"""Official CoOp / CoCoOp / MaPLe (Dassl) and CLIP-SVD checkpoints in and out of peftclip.

The official files are built here in the authors' exact layouts, with the official key names
written out by hand (not taken from peftclip's name table), on the shipped world CLIP (text width
128 ≠ vision width 192, so a transposed tensor cannot pass a shape check).
"""

import re

import pytest
import torch
import yaml

from peftclip.backbone import load_backbone
from peftclip.data import build_dataset
from peftclip.errors import PeftClipError
from peftclip.lightning.cli import PeftClipCLI
from peftclip.official_checkpoints import (
    export_official,
    import_checkpoint,
    read_official,
)

WORLD = ("peftclip-world-tiny", "world")
CLASSES = 8  # world_colors
SETTINGS = {
    "coop": {"n_ctx": 2, "ctx_init": ""},
    "coop_csc": {"n_ctx": 2, "ctx_init": "", "csc": True, "n_classes": CLASSES},
    "cocoop": {"n_ctx": 2, "ctx_init": ""},
    "maple": {"n_ctx": 2, "prompt_depth": 3, "ctx_init": "a photo of a"},
    "clip_svd": {},
}
SVD_KINDS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "proj": "o", "c_fc": "c_fc"}
SVD_KINDS["c_proj"] = "c_proj"


def _adapter(case: str) -> str:
    return "coop" if case == "coop_csc" else case


def _recipe(tmp_path, case, **settings):
    adapter = {"class_path": _adapter(case), "init_args": {**SETTINGS[case], **settings}}
    recipe = {
        "model": {
            "backbone": {"model_name": WORLD[0], "pretrained": WORLD[1]},
            "adapters": [adapter],
        },
        "data": {"dataset": "world_colors", "batch_size": 50, "num_workers": 0},
        "trainer": {
            "precision": "32-true",
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path / "runs"),
        },
    }
    path = tmp_path / f"{case}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _cli(recipe):
    return PeftClipCLI(args=["--config", str(recipe)], run=False)


# ------------------------------------------------------------------------- official layouts
def _prompt_buffers(width, n_ctx, context=24):
    return {
        "token_prefix": torch.randn(CLASSES, 1, width),
        "token_suffix": torch.randn(CLASSES, context - 1 - n_ctx, width),
    }


def _coop_learner(case, frozen):
    """A CoOp / CoCoOp ``prompt_learner.state_dict()`` (parameters first, then buffers)."""
    text, embed, n_ctx = frozen.text_width, frozen.embed_dim, 2
    ctx_shape = (CLASSES, n_ctx, text) if case == "coop_csc" else (n_ctx, text)
    state = {"ctx": 0.5 * torch.randn(ctx_shape)}  # trained contexts are far from init
    if case == "cocoop":
        hidden = embed // 16
        state |= {
            "meta_net.linear1.weight": 0.1 * torch.randn(hidden, embed),
            "meta_net.linear1.bias": 0.1 * torch.randn(hidden),
            "meta_net.linear2.weight": 0.1 * torch.randn(text, hidden),
            "meta_net.linear2.bias": 0.1 * torch.randn(text),
        }
    return state | _prompt_buffers(text, n_ctx)


def _maple_model(frozen, depth=3):
    """MaPLe's whole ``CustomCLIP.state_dict()``: the prompt learner plus the frozen CLIP."""
    text, vision, n_ctx, model = frozen.text_width, frozen.vision_width, 2, frozen.model
    learner = {
        "ctx": 0.5 * torch.randn(n_ctx, text),
        "proj.weight": (0.05 * torch.randn(vision, text)).half(),  # the anchor calls proj.half()
        "proj.bias": (0.05 * torch.randn(vision)).half(),
    }
    for j in range(depth - 1):
        learner |= {
            f"compound_prompts_text.{j}": 0.5 * torch.randn(n_ctx, text),
            f"compound_prompt_projections.{j}.weight": 0.05 * torch.randn(vision, text),
            f"compound_prompt_projections.{j}.bias": 0.05 * torch.randn(vision),
        }
    learner |= _prompt_buffers(text, n_ctx)
    return {f"prompt_learner.{key}": value for key, value in learner.items()} | {
        "image_encoder.conv1.weight": model.visual.conv1.weight.detach().half(),
        "image_encoder.class_embedding": model.visual.class_embedding.detach().half(),
        "text_encoder.positional_embedding": model.positional_embedding.detach().half(),
        "logit_scale": model.logit_scale.detach().clone(),
    }


def _svd_weights(frozen):
    """CLIP-SVD's whole re-expressed CLIP ``state_dict()``: vector_S (1, k) beside the frozen
    factors (fc_V, fc_U; written for one layer here, every layer in a real file) and weights."""
    model, weights = frozen.model, {}
    towers = (("visual.transformer", model.visual.transformer), ("transformer", model.transformer))
    for prefix, tower in towers:
        for i, block in enumerate(tower.resblocks):
            for name, kind in SVD_KINDS.items():
                parent = block.attn if kind in "qkvo" else block.mlp
                sigma = torch.linalg.svdvals(getattr(parent, kind).weight.detach())
                group = "attn" if kind in "qkvo" else "mlp"
                key = f"{prefix}.resblocks.{i}.{group}.{name}"
                weights[f"{key}.vector_S"] = (sigma * (1 + 0.2 * torch.randn_like(sigma)))[None]
    first = model.transformer.resblocks[0].attn.q.weight.detach()
    u, _, vh = torch.linalg.svd(first, full_matrices=False)
    weights |= {
        "transformer.resblocks.0.attn.q_proj.fc_V.weight": vh,
        "transformer.resblocks.0.attn.q_proj.fc_U.weight": u,
        "transformer.resblocks.0.attn.q_proj.fc_U.bias": torch.zeros(len(u)),
        "visual.conv1.weight": model.visual.conv1.weight.detach().clone(),
        "token_embedding.weight": model.token_embedding.weight.detach().clone(),
        "logit_scale": model.logit_scale.detach().clone(),
    }
    return weights


def _dassl_save(path, state_dict, epoch=5, scheduler_object=True):
    """What Dassl's ``save_model`` writes; its warm-up scheduler's state holds the successor
    CosineAnnealingLR object itself."""
    params = [torch.nn.Parameter(v.float().clone()) for k, v in state_dict.items() if "." not in k]
    optimizer = torch.optim.SGD(params or [torch.nn.Parameter(torch.zeros(1))], lr=0.002)
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(epoch))
    scheduler = {"warmup_epoch": 1, "cons_lr": 1e-5, "base_lrs": [0.002], "last_epoch": epoch}
    if scheduler_object:
        scheduler["successor"] = successor
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": state_dict,
            "epoch": epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler,
            "val_result": None,
        },
        path,
    )
    return path


def _official_file(tmp_path, case):
    """(file, trainable tensors under official names) in the method's official layout."""
    frozen = load_backbone(*WORLD)
    if case == "clip_svd":
        weights = _svd_weights(frozen)
        path = tmp_path / "clip_svd" / "dtd" / "vitb16" / "16shots" / "seed1" / "base_model.pt"
        path.parent.mkdir(parents=True)
        torch.save(
            {"weights": weights, "metadata": {"image_encoder": True, "text_encoder": True}}, path
        )
        return path, {k: v for k, v in weights.items() if k.endswith("vector_S")}
    if case == "maple":
        state = _maple_model(frozen)
        path = _dassl_save(
            tmp_path / "maple" / "MultiModalPromptLearner" / "model.pth.tar-5", state
        )
        trainable = {
            k: v for k, v in state.items() if k.startswith("prompt_learner.") and "token_" not in k
        }
        return path, trainable
    state = _coop_learner(case, frozen)
    path = _dassl_save(tmp_path / case / "prompt_learner" / "model.pth.tar-50", state, epoch=50)
    return path, {k: v for k, v in state.items() if not k.startswith("token_")}


def _hand_mapping(case, official_key):
    """The peftclip adapter key of an official key, written out per method."""
    if case == "clip_svd":
        match = re.fullmatch(
            r"(visual\.)?transformer\.resblocks\.(\d+)\.\w+\.(\w+)\.vector_S", official_key
        )
        tower = "vision" if match[1] else "text"
        return f"sites.{tower}{match[2]}_{SVD_KINDS[match[3]]}.s"
    key = official_key.removeprefix("prompt_learner.")
    key = key.replace("meta_net.linear1.", "meta_net.0.").replace(
        "meta_net.linear2.", "meta_net.2."
    )
    key = key.replace("compound_prompts_text.", "deep_text.")
    return key.replace("compound_prompt_projections.", "deep_proj.")


def _set_by_hand(module, case, official):
    adapter = module.adapters[0]
    with torch.no_grad():
        for key, value in official.items():
            target = adapter.get_parameter(_hand_mapping(case, key))
            target.copy_(value.reshape(target.shape))


def _logits(module):
    module.eval().use_class_set(build_dataset("world_colors").classnames, "a photo of a {} shape.")
    images = torch.randn(4, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return module(images)["logits"]


CASES = list(SETTINGS)


# ------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("case", CASES)
def test_official_names_and_shapes_map_onto_the_adapter(tmp_path, case):
    source, official = _official_file(tmp_path, case)
    read = read_official(source, trust_pickle=True)
    assert read.method == _adapter(case)
    assert set(read.tensors) == set(official)  # token_prefix / token_suffix / frozen CLIP dropped
    output = import_checkpoint(
        _recipe(tmp_path, case), source, tmp_path / "imported.ckpt", trust_pickle=True
    )
    checkpoint = torch.load(output, weights_only=True)  # LightningCLI reads ckpt_path this way
    state = checkpoint["state_dict"]
    assert len(state) == len(official)
    for key, value in official.items():
        mapped = state[f"classifier.adapters.0.{_hand_mapping(case, key)}"]
        assert mapped.dtype == torch.float32
        assert torch.equal(mapped, value.float().reshape(mapped.shape))
    section = checkpoint["peftclip"]
    assert section["format"] == "peftclip-adapters/1" and section["adapters"] == [_adapter(case)]
    assert section["backbone"]["model_name"] == WORLD[0]
    assert section["imported_from"]["method"] == _adapter(case)


@pytest.mark.parametrize("case", CASES)
def test_round_trip_official_to_peftclip_to_official_is_identical(tmp_path, case):
    source, official = _official_file(tmp_path, case)
    recipe = _recipe(tmp_path, case)
    imported = import_checkpoint(recipe, source, tmp_path / "imported.ckpt", trust_pickle=True)
    exported = export_official(recipe, imported, tmp_path / "out" / "official.pth.tar")
    written = torch.load(exported, weights_only=True)  # plain tensors and containers only
    if case == "clip_svd":
        assert written["metadata"] == {"image_encoder": True, "text_encoder": True}
        tensors = written["weights"]
    else:
        assert {"epoch", "optimizer", "scheduler", "val_result"} <= set(written)
        tensors = written["state_dict"]
    assert set(tensors) == set(official)
    for key, value in official.items():
        assert tensors[key].shape == value.shape
        assert torch.equal(tensors[key].to(value.dtype), value)  # MaPLe's fp16 proj is exact


@pytest.mark.parametrize("case", CASES)
def test_imported_checkpoint_gives_the_logits_of_tensors_set_by_hand(tmp_path, case):
    source, official = _official_file(tmp_path, case)
    recipe = _recipe(tmp_path, case)
    imported = import_checkpoint(recipe, source, tmp_path / "imported.ckpt", trust_pickle=True)
    loaded, by_hand, untouched = _cli(recipe).model, _cli(recipe).model, _cli(recipe).model
    loaded.load_adapter_checkpoint(str(imported))
    _set_by_hand(by_hand, case, official)
    assert torch.equal(_logits(loaded), _logits(by_hand))
    assert not torch.allclose(_logits(loaded), _logits(untouched), atol=1e-3)


@pytest.mark.parametrize("case", ["cocoop", "maple", "clip_svd"])
def test_lightning_test_run_from_the_imported_checkpoint(tmp_path, case):
    source, official = _official_file(tmp_path, case)
    recipe = _recipe(tmp_path, case)
    imported = import_checkpoint(recipe, source, tmp_path / "imported.ckpt", trust_pickle=True)
    # What `peftclip test --config RECIPE --ckpt_path IMPORTED` runs.
    args = ["test", "--config", str(recipe), "--ckpt_path", str(imported)]
    metrics = PeftClipCLI(args=args).trainer.callback_metrics
    from_file = [{name: value.item() for name, value in metrics.items()}]
    reference = _cli(recipe)
    _set_by_hand(reference.model, case, official)
    by_hand = reference.trainer.test(reference.model, datamodule=reference.datamodule)
    assert from_file == by_hand
    fresh = _cli(recipe)
    assert fresh.trainer.test(fresh.model, datamodule=fresh.datamodule) != from_file


def test_unknown_key_sets_are_refused_with_the_keys_and_the_formats(tmp_path):
    odd = _dassl_save(
        tmp_path / "vpt" / "model.pth.tar-5", {"prompt_embeddings": torch.zeros(4, 8)}
    )
    with pytest.raises(PeftClipError, match=r"prompt_embeddings.*Recognised formats") as error:
        read_official(odd, trust_pickle=True)
    assert "CLIP-SVD" in str(error.value) and "meta_net.linear1" in str(error.value)
    ivlp = _maple_model(load_backbone(*WORLD)) | {
        "image_encoder.transformer.resblocks.1.VPT_shallow": torch.zeros(2, 192)
    }
    ivlp = _dassl_save(tmp_path / "ivlp" / "model.pth.tar-5", ivlp)
    with pytest.raises(PeftClipError, match=r"VPT_shallow.*Recognised formats"):
        read_official(ivlp, trust_pickle=True)
    plain = tmp_path / "plain.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "args": {}}, plain)
    with pytest.raises(PeftClipError, match=r"\[args, model\]"):
        read_official(plain)
    extra = _coop_learner("coop", load_backbone(*WORLD)) | {"bias_ctx": torch.zeros(3)}
    source = _dassl_save(tmp_path / "extra" / "model.pth.tar-1", extra, scheduler_object=False)
    with pytest.raises(PeftClipError, match=r"in the file but not in the recipe: \['bias_ctx'\]"):
        import_checkpoint(_recipe(tmp_path, "coop"), source, tmp_path / "x.ckpt")
    assert not (tmp_path / "x.ckpt").exists()


def test_shape_mismatch_names_adapter_tensor_shapes_and_setting(tmp_path):
    source, _ = _official_file(tmp_path, "coop")  # ctx (2, 128)
    with pytest.raises(PeftClipError) as error:
        import_checkpoint(
            _recipe(tmp_path, "coop", n_ctx=4), source, tmp_path / "x.ckpt", trust_pickle=True
        )
    message = str(error.value)
    for part in ("coop", "'ctx'", "(2, 128)", "(4, 128)", "n_ctx", "4 in the recipe but 2"):
        assert part in message
    csc, _ = _official_file(tmp_path, "coop_csc")  # ctx (8, 2, 128) into a generic context
    with pytest.raises(PeftClipError, match=r"\(8, 2, 128\).*3 dimensions, the recipe's 2"):
        import_checkpoint(_recipe(tmp_path, "coop"), csc, tmp_path / "x.ckpt", trust_pickle=True)
    maple, _ = _official_file(tmp_path, "maple")  # prompt depth 3
    with pytest.raises(PeftClipError, match=r"file has prompt_depth 3; the recipe has 2"):
        import_checkpoint(
            _recipe(tmp_path, "maple", prompt_depth=2),
            maple,
            tmp_path / "x.ckpt",
            trust_pickle=True,
        )


def test_wrong_method_and_wrong_backbone_are_refused(tmp_path):
    cocoop, _ = _official_file(tmp_path, "cocoop")
    with pytest.raises(
        PeftClipError, match="official cocoop checkpoint, but the recipe's adapter is coop"
    ):
        import_checkpoint(_recipe(tmp_path, "coop"), cocoop, tmp_path / "x.ckpt", trust_pickle=True)
    state = _maple_model(load_backbone(*WORLD))
    state["image_encoder.conv1.weight"] = torch.randn_like(state["image_encoder.conv1.weight"])
    other = _dassl_save(tmp_path / "other" / "model.pth.tar-5", state)
    with pytest.raises(PeftClipError, match="trained on other CLIP weights"):
        import_checkpoint(_recipe(tmp_path, "maple"), other, tmp_path / "x.ckpt", trust_pickle=True)


def test_pickled_scheduler_objects_need_trust(tmp_path):
    source, _ = _official_file(tmp_path, "coop")
    with pytest.raises(PeftClipError, match=r"CosineAnnealingLR.*trust_pickle"):
        read_official(source)
    assert read_official(source, trust_pickle=True).method == "coop"
    state = _coop_learner("coop", load_backbone(*WORLD))
    plain = _dassl_save(tmp_path / "plain" / "model-best.pth.tar", state, scheduler_object=False)
    assert read_official(plain).epoch == 5


def test_clip_svd_towers_the_official_run_did_not_train_may_be_left_out(tmp_path):
    source, official = _official_file(tmp_path, "clip_svd")
    content = torch.load(source, weights_only=True)
    text_only = _recipe(tmp_path, "clip_svd", towers="text")
    with pytest.raises(PeftClipError, match=r"towers='text'"):
        import_checkpoint(text_only, source, tmp_path / "x.ckpt")
    content["metadata"]["image_encoder"] = False  # vision vectors are the pretrained σ then
    torch.save(content, source)
    imported = import_checkpoint(text_only, source, tmp_path / "text.ckpt")
    state = torch.load(imported, weights_only=True)["state_dict"]
    text = {k: v for k, v in official.items() if not k.startswith("visual.")}
    assert len(state) == len(text) == 3 * 6
    for key, value in text.items():
        assert torch.equal(
            state[f"classifier.adapters.0.{_hand_mapping('clip_svd', key)}"], value[0]
        )


def test_a_fit_checkpoint_exports_under_the_official_names(tmp_path):
    recipe = _recipe(tmp_path, "cocoop")
    fit = ["fit", "--config", str(recipe), "--data.shots", "2", "--trainer.max_steps", "2"]
    PeftClipCLI(args=[*fit, "--trainer.enable_checkpointing", "true"])
    checkpoint = next((tmp_path / "runs").rglob("*.ckpt"))
    trained = torch.load(checkpoint, weights_only=False)
    written = torch.load(export_official(recipe, checkpoint, tmp_path / "model.pth.tar-1"))
    assert written["epoch"] == trained["epoch"] + 1
    state = written["state_dict"]
    assert sorted(state) == [
        "ctx",
        *(f"meta_net.linear{i}.{t}" for i in (1, 2) for t in ("bias", "weight")),
    ]
    for key, value in state.items():
        assert torch.equal(
            value, trained["state_dict"][f"classifier.adapters.0.{_hand_mapping('cocoop', key)}"]
        )


@pytest.mark.parametrize("case", ["coop", "clip_svd"])
def test_the_command_line_imports_and_exports_official_files(tmp_path, case, capsys):
    from peftclip.cli import main

    source, official = _official_file(tmp_path, case)
    recipe = ["--config", str(_recipe(tmp_path, case))]
    imported, exported = tmp_path / "imported.ckpt", tmp_path / "official.pth.tar"
    assert main(["import-checkpoint", *recipe, "--source", str(source), "--output",
                 str(imported), "--trust_pickle", "true"]) == 0  # fmt: skip
    assert f"--config {recipe[1]} --ckpt_path {imported}" in capsys.readouterr().out
    assert main(["export", *recipe, "--ckpt_path", str(imported), "--output", str(exported),
                 "--format", "official"]) == 0  # fmt: skip
    written = torch.load(exported, weights_only=True)
    if case != "clip_svd":  # the official epoch survives the trip through peftclip
        assert written["epoch"] == torch.load(source, weights_only=False)["epoch"]
    tensors = written["weights"] if case == "clip_svd" else written["state_dict"]
    assert set(tensors) == set(official)
    assert all(torch.equal(tensors[key].to(value.dtype), value) for key, value in official.items())
