"""Run folders (peftclip.runs) and the results records of plain runs (peftclip.results)."""

from pathlib import Path

import pytest
import torch

from peftclip.cli import main
from peftclip.lightning.cli import PeftClipCLI
from peftclip.results import ResultsStore
from peftclip.runs import LATEST

TINY = ["--config", "recipes/zeroshot/tiny_random.yaml", "--model.adapters+=coop",
        "--data.shots", "2", "--trainer.enable_progress_bar", "false"]  # fmt: skip
SAVE_LAST = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.save_last=true"]


def _fit(root: Path, *extra: str) -> PeftClipCLI:
    return PeftClipCLI(args=["fit", *TINY, "--trainer.max_steps", "1", *SAVE_LAST,
                             "--trainer.default_root_dir", str(root), *extra])  # fmt: skip


def _test(root: Path, *extra: str) -> PeftClipCLI:
    return PeftClipCLI(args=["test", *TINY, "--trainer.limit_test_batches", "2",
                             "--trainer.default_root_dir", str(root), *extra])  # fmt: skip


def test_every_run_writes_a_folder_of_its_own_and_nothing_is_overwritten(tmp_path):
    first, second = _fit(tmp_path), _fit(tmp_path)
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and not p.is_symlink())
    assert len(runs) == 2 and all("-fit-" in run.name for run in runs)
    assert Path(first.trainer.default_root_dir) != Path(second.trainer.default_root_dir)
    for run in runs:
        assert {"config.yaml", "checkpoints", "logs", "log.txt"} <= {p.name for p in run.iterdir()}
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert list((run / "logs").rglob("metrics.csv"))
    assert (tmp_path / LATEST).resolve() == runs[-1].resolve()

    fit_config = (runs[-1] / "config.yaml").read_text()
    test = _test(tmp_path, "--ckpt_path", "last")
    assert (runs[-1] / "config.yaml").read_text() == fit_config  # the test wrote its own
    assert "-test-" in Path(test.trainer.default_root_dir).name
    assert (tmp_path / LATEST).resolve() == Path(test.trainer.default_root_dir).resolve()


def test_a_relative_root_holds_the_run_folders(tmp_path, monkeypatch):
    """What `peftclip base2new --config recipes/quickstart.yaml` does: the default root `runs`."""
    recipe = Path("recipes/zeroshot/tiny_random.yaml").absolute()
    monkeypatch.chdir(tmp_path)
    args = [a if a != "recipes/zeroshot/tiny_random.yaml" else str(recipe) for a in TINY]
    PeftClipCLI(args=["fit", *args, "--trainer.max_steps", "1", *SAVE_LAST])
    (run,) = Path("runs").glob("*-fit-*")
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()


def test_ckpt_path_last_takes_the_newest_fit_of_the_same_data_and_run_ids_name_runs(tmp_path):
    colours = _fit(tmp_path)
    _fit(tmp_path, "--data.dataset", "world_shapes")  # newer, another dataset
    test = _test(tmp_path, "--ckpt_path", "last")
    trained = colours.model.adapter_state_dict()["classifier.adapters.0.ctx"]
    assert torch.equal(test.model.adapter_state_dict()["classifier.adapters.0.ctx"], trained)
    run_id = Path(colours.trainer.default_root_dir).name
    by_id = _test(tmp_path, "--ckpt_path", run_id)
    assert torch.equal(by_id.model.adapter_state_dict()["classifier.adapters.0.ctx"], trained)


def test_ckpt_path_last_without_a_matching_fit_is_one_line(tmp_path, capsys):
    _fit(tmp_path, "--data.dataset", "world_shapes")
    code = main(["test", *TINY, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", "last"])
    message = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(message) == 1
    assert "no fit run with a checkpoint" in message[0] and "world_shapes" in message[0]


def test_a_resumed_fit_continues_in_its_folder_and_keeps_both_configs(tmp_path):
    _fit(tmp_path)
    resumed = _fit(tmp_path, "--trainer.max_steps", "2", "--ckpt_path", "last")
    assert resumed.trainer.global_step == 2
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.is_symlink()]
    names = {p.name for p in run.iterdir()}
    assert "config.yaml" in names and any(n.startswith("config.resumed-") for n in names)
    assert len(list((run / "logs").rglob("metrics.csv"))) == 2  # one per invocation


def test_fit_and_test_record_their_evaluations_with_per_class_counts(tmp_path):
    database = tmp_path / "results.sqlite"
    fit = _fit(tmp_path, "--results_db", str(database), "--trainer.limit_val_batches", "1")
    test = _test(tmp_path, "--results_db", str(database), "--ckpt_path", "last")
    with ResultsStore(database, readonly=True) as store:
        (val,) = store.records(split="val")
        (tested,) = store.records(split="test")
    assert val.run_id == Path(fit.trainer.default_root_dir).name
    assert tested.run_id == Path(test.trainer.default_root_dir).name
    assert tested.method == "coop" and tested.dataset == "world_colors" and tested.shots == 2
    assert tested.cell["backbone"] == test.model.backbone.identity.to_dict()
    assert sum(tested.metrics["total"]) == 2 * 32  # two test batches of 32
    assert tested.top1 == pytest.approx(float(test.trainer.callback_metrics["test/top1"]))
    assert tested.trainable_params == sum(
        p.numel() for p in test.model.parameters() if p.requires_grad
    )


def test_base_to_new_records_zero_shot_and_the_method_on_both_halves(tmp_path, capsys):
    database = tmp_path / "results.sqlite"
    code = main(["base2new", "--config", "recipes/quickstart.yaml", "--trainer.max_steps", "1",
                 "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(tmp_path),
                 "--results_db", str(database)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    with ResultsStore(database, readonly=True) as store:
        records = {(r.method, r.split): r for r in store.records(protocol="base2new")}
    assert set(records) == {(m, h) for m in ("zeroshot", "coop") for h in ("base", "new")}
    for (method, half), record in records.items():
        row = next(
            line
            for line in printed.splitlines()
            if line.startswith(f"| {'zero-shot CLIP' if method == 'zeroshot' else method} ")
        )
        base, new = (float(v) for v in row.split("|")[2:4])
        assert record.top1 == pytest.approx(base if half == "base" else new, abs=0.005)
