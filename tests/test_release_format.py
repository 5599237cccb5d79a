"""Adapter releases (``export --format release``): safetensors + a JSON sidecar, no pickle.

A release must evaluate exactly as the checkpoint it came from, hold its tensors bitwise, load
with every unpickler disabled, and answer a damaged or mismatched release with the one-line
errors of a checkpoint.
"""

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tests.toy_adapters  # noqa: F401  (registers the toy adapters)
from peftclip.checkpoint_files import RELEASE_FORMAT, file_sha256
from peftclip.cli import main
from peftclip.lightning.cli import PeftClipCLI
from tests.helpers import one_line_error

TINY = ["--config", "recipes/zeroshot/tiny_random.yaml", "--data.shots", "2"]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
#: A prompt adapter, a weight-space adapter, and one fitted from data (data-dependent shapes).
ADAPTERS = {
    "coop": ["--model.adapters+=coop", "--model.adapters.init_args.n_ctx=2"],
    "lora": ["--model.adapters+=lora", "--model.adapters.init_args.r=2"],
    "toy_prototypes": ["--model.adapters+=tests.toy_adapters.ToyPrototypes"],
}
CLASS_PATHS = {
    "coop": "peftclip.adapters.coop.CoOp",
    "lora": "peftclip.adapters.lora.LoRA",
    "toy_prototypes": "tests.toy_adapters.ToyPrototypes",
}
TRAINING = ["--model.optimizer", "SGD", "--model.optimizer.lr", "0.05", "--trainer.max_steps", "2"]


def _recipe(name: str) -> list[str]:
    return [*TINY, *ADAPTERS[name]]


def _fit(root: Path, name: str) -> Path:
    """A real ``peftclip fit`` checkpoint of ``name`` under ``root``."""
    training = [] if name == "toy_prototypes" else TRAINING  # fitted at fit start, zero steps
    # A hyper-parameter `test` takes from the checkpoint, not the recipe: it changes test/loss.
    training = [*training, "--model.label_smoothing", "0.25"]
    args = ["fit", *_recipe(name), *training, "--trainer.limit_val_batches", "0", *QUIET,
            "--trainer.enable_checkpointing", "true",
            "--trainer.default_root_dir", str(root)]  # fmt: skip
    assert main(args) == 0
    (checkpoint,) = root.rglob("*.ckpt")
    return checkpoint


def _export_release(name: str, checkpoint: Path, folder: Path) -> Path:
    args = ["export", *_recipe(name), "--ckpt_path", str(checkpoint), "--format", "release"]
    assert main([*args, "--output", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """``releases(name)``: (its fit checkpoint, the release exported from it), made once."""
    made = {}

    def release(name: str) -> tuple[Path, Path]:
        if name not in made:
            root = tmp_path_factory.mktemp(name)
            checkpoint = _fit(root / "fit", name)
            made[name] = checkpoint, _export_release(name, checkpoint, root / "release")
        return made[name]

    return release


def _test(name: str, ckpt_path, root: Path, *extra: str) -> PeftClipCLI:
    return PeftClipCLI(args=["test", *_recipe(name), *QUIET, "--ckpt_path", str(ckpt_path),
                             "--trainer.default_root_dir", str(root), *extra])  # fmt: skip


def _no_unpickling(monkeypatch) -> None:
    """Every way peftclip, Lightning or torch could unpickle a file now fails the test."""

    def refused(*args, **kwargs):
        raise AssertionError("a release must load without pickle")

    for module, name in [(torch, "load"), (torch.serialization, "load"), (pickle, "load"),
                         (pickle, "loads"), (pickle, "Unpickler")]:  # fmt: skip
        monkeypatch.setattr(module, name, refused)


# --------------------------------------------------------------------------- the format
@pytest.mark.parametrize("name", ADAPTERS)
def test_the_release_holds_the_checkpoint_tensors_bitwise_and_its_identity(releases, name):
    checkpoint, folder = releases(name)
    saved = torch.load(checkpoint, weights_only=True)
    assert sorted(p.name for p in folder.iterdir()) == ["adapters.json", "adapters.safetensors"]
    tensors = load_file(str(folder / "adapters.safetensors"))
    assert tensors.keys() == saved["state_dict"].keys() and tensors
    for key, value in saved["state_dict"].items():
        assert tensors[key].dtype == value.dtype and tensors[key].is_contiguous()
        assert torch.equal(tensors[key], value), key
    sidecar = json.loads((folder / "adapters.json").read_text())
    assert sidecar["format"] == RELEASE_FORMAT
    assert sidecar["peftclip"] == saved["peftclip"]  # backbone identity, adapters, summaries
    assert sidecar["hyper_parameters"] == saved["hyper_parameters"]
    assert sidecar["tensors"]["sha256"] == file_sha256(folder / "adapters.safetensors")
    (adapter,) = sidecar["recipe"]["model"]["adapters"]
    assert adapter["class_path"] == CLASS_PATHS[name]  # what to pair the release with
    assert sidecar["recipe"]["model"]["backbone"]["model_name"] == "peftclip-tiny-vit"


@pytest.mark.parametrize("name", ADAPTERS)
def test_a_release_evaluates_exactly_as_its_checkpoint_without_any_unpickling(
    releases, name, tmp_path, monkeypatch
):
    checkpoint, folder = releases(name)
    from_checkpoint = _test(name, checkpoint, tmp_path / "ckpt")
    expected = {k: v.item() for k, v in from_checkpoint.trainer.callback_metrics.items()}
    assert "test/top1" in expected and from_checkpoint.model.label_smoothing == 0.25
    _no_unpickling(monkeypatch)
    from_release = _test(name, folder, tmp_path / "release")
    assert {k: v.item() for k, v in from_release.trainer.callback_metrics.items()} == expected
    trained, loaded = (
        from_checkpoint.model.adapter_state_dict(),
        from_release.model.adapter_state_dict(),
    )
    assert trained.keys() == loaded.keys()
    assert all(torch.equal(trained[key], loaded[key]) for key in trained)


@pytest.mark.parametrize("inside", ["adapters.json", "adapters.safetensors"])
def test_either_file_of_the_release_names_it_too(releases, tmp_path, inside):
    checkpoint, folder = releases("coop")
    validate = PeftClipCLI(args=["validate", *_recipe("coop"), *QUIET, "--ckpt_path",
                                 str(folder / inside), "--trainer.default_root_dir",
                                 str(tmp_path)])  # fmt: skip
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert torch.equal(validate.model.adapter_state_dict()["classifier.adapters.0.ctx"],
                       saved["classifier.adapters.0.ctx"])  # fmt: skip


@pytest.mark.parametrize("name", ["coop", "lora"])  # the fitted toy head has no other format
def test_exports_from_a_release_equal_exports_from_its_checkpoint(releases, name, tmp_path):
    checkpoint, folder = releases(name)
    export_format = {"coop": "official", "lora": "open_clip"}[name]
    written = {}
    for source, path in (("ckpt", checkpoint), ("release", folder)):
        output = tmp_path / f"{source}.{'safetensors' if name == 'lora' else 'pth.tar'}"
        assert main(["export", *_recipe(name), "--ckpt_path", str(path), "--format",
                     export_format, "--output", str(output)]) == 0  # fmt: skip
        written[source] = (
            load_file(str(output)) if name == "lora" else torch.load(output, weights_only=True)
        )
    if name == "coop":  # Dassl's epoch comes from the checkpoint, through the sidecar
        assert written["release"]["epoch"] == written["ckpt"]["epoch"] == 2
        written = {source: content["state_dict"] for source, content in written.items()}
    assert written["release"].keys() == written["ckpt"].keys()
    assert all(torch.equal(written["release"][k], written["ckpt"][k]) for k in written["ckpt"])


@pytest.mark.parametrize("name", ADAPTERS)
def test_a_release_re_exported_from_a_release_is_the_same_release(releases, name, tmp_path):
    _, folder = releases(name)
    again = _export_release(name, folder, tmp_path / "again")
    assert (again / "adapters.safetensors").read_bytes() == (
        folder / "adapters.safetensors"
    ).read_bytes()
    first, second = (json.loads((f / "adapters.json").read_text()) for f in (folder, again))
    assert first == second


# --------------------------------------------------------------------- refusals, one line
@pytest.fixture
def coop_release(releases) -> Path:
    return releases("coop")[1]


def _copy(release: Path, to: Path) -> Path:
    to.mkdir()
    for file in release.iterdir():
        (to / file.name).write_bytes(file.read_bytes())
    return to


def _tamper(folder: Path, damage: str) -> str:
    """Damages the release in ``folder``; returns what the error must say."""
    tensors, sidecar = folder / "adapters.safetensors", folder / "adapters.json"
    if damage == "tensor_changed":
        data = bytearray(tensors.read_bytes())
        data[-1] ^= 0x01  # the last byte of the last tensor: a valid file, other values
        tensors.write_bytes(bytes(data))
        return "SHA-256"
    if damage == "tensors_cut":
        tensors.write_bytes(tensors.read_bytes()[:40])
        return "SHA-256"
    if damage == "tensors_missing":
        tensors.unlink()
        return "adapters.safetensors is missing"
    if damage == "sidecar_missing":
        sidecar.unlink()
        return "there is no adapters.json"
    if damage == "other_format":
        content = json.loads(sidecar.read_text())
        sidecar.write_text(json.dumps({**content, "format": "peftclip-release/99"}))
        return "format 'peftclip-release/99'; this peftclip reads 'peftclip-release/1'"
    sidecar.write_text("{not json")
    return "adapters.json is no JSON"


DAMAGES = ["tensor_changed", "tensors_cut", "tensors_missing", "sidecar_missing",
           "other_format", "not_json"]  # fmt: skip


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("command", ["test", "export"])
def test_a_damaged_release_is_one_line_and_exit_2(coop_release, tmp_path, capsys, damage, command):
    folder = _copy(coop_release, tmp_path / "release")
    reason = _tamper(folder, damage)
    output = tmp_path / "out.pth.tar"
    args = {
        "test": ["test", *_recipe("coop"), *QUIET, "--trainer.default_root_dir", str(tmp_path)],
        "export": ["export", *_recipe("coop"), "--format", "official", "--output", str(output)],
    }[command]
    code = main([*args, "--ckpt_path", str(folder)])
    one_line_error(capsys, code, f"{folder} is not a loadable peftclip release (", reason)
    assert not output.exists()


def test_a_missing_release_folder_has_the_checkpoint_wording(tmp_path, capsys):
    missing = tmp_path / "nowhere.json"
    code = main(["test", *_recipe("coop"), *QUIET, "--ckpt_path", str(missing)])
    one_line_error(capsys, code, f"checkpoint {missing} does not exist; check the path.")


def test_a_release_onto_another_recipe_gives_the_checkpoint_errors(coop_release, capsys):
    release = ["--ckpt_path", str(coop_release)]
    one_line_error(
        capsys,
        main(["test", *TINY, *QUIET, "--model.adapters+=coop", *release]),  # n_ctx 16
        "coop: checkpoint tensor 'ctx' has shape (2, ",
        "n_ctx (or the word count of ctx_init) is 16 in the recipe but 2 in the file",
    )
    one_line_error(
        capsys,
        main(["test", *_recipe("coop"), "--model.adapters+=lora", *QUIET, *release]),
        "checkpoint does not match this recipe's adapters: missing ['classifier.adapters.1.",
    )
    one_line_error(
        capsys,
        main(["test", *_recipe("coop"), "--model.backbone.init_seed", "1", *QUIET, *release]),
        "checkpoint adapters were trained on backbone peftclip-tiny-vit",
    )


def test_fit_refuses_a_release_and_test_treats_it_as_given(coop_release, tmp_path, capsys):
    code = main(["fit", *_recipe("coop"), *QUIET, "--trainer.default_root_dir", str(tmp_path),
                 "--ckpt_path", str(coop_release)])  # fmt: skip
    one_line_error(capsys, code, "is an adapter release", "no training state to resume")
    assert not list(tmp_path.rglob("*.ckpt"))
    # Without --ckpt_path, test is refused; with the release, the adapters count as trained.
    assert main(["test", *_recipe("coop"), *QUIET]) == 2
    assert "without --ckpt_path" in capsys.readouterr().err


def test_an_interrupted_export_leaves_the_previous_release_whole(
    coop_release, tmp_path, monkeypatch
):
    import peftclip.export

    folder = _copy(coop_release, tmp_path / "release")
    before = {file.name: file.read_bytes() for file in folder.iterdir()}

    def dies_half_way(tensors, path):
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt  # as a kill between the first bytes and the end

    monkeypatch.setattr(peftclip.export, "save_file", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        _export_release("coop", folder, folder)
    assert {file.name: file.read_bytes() for file in folder.iterdir()} == before
    monkeypatch.undo()
    model = PeftClipCLI(args=_recipe("coop"), run=False).model
    model.load_adapter_checkpoint(str(folder))  # still loadable


# ------------------------------------------------------------------ import-checkpoint
@pytest.mark.parametrize("trust_pickle", ["true", "false"])
@pytest.mark.parametrize("cut", [0, 10, 0.5])
def test_import_of_a_truncated_official_file_is_one_line(tmp_path, capsys, trust_pickle, cut):
    from tests.test_official_checkpoints import _official_file
    from tests.test_official_checkpoints import _recipe as official_recipe

    source, _ = _official_file(tmp_path, "coop")
    data = source.read_bytes()
    source.write_bytes(data[: int(cut * len(data)) if isinstance(cut, float) else cut])
    output = tmp_path / "imported.ckpt"
    recipe = official_recipe(tmp_path, "coop")
    code = main(["import-checkpoint", "--config", str(recipe), "--source", str(source),
                 "--output", str(output), "--trust_pickle", trust_pickle])  # fmt: skip
    one_line_error(
        capsys, code, f"{source} is not an official checkpoint torch can read (truncated"
    )
    assert not output.exists()
