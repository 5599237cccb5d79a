"""``peftclip run``: a protocol grid of cells, each in its own process, skipped once recorded."""

import pytest

from peftclip.cli import main
from peftclip.protocols import runner
from peftclip.results import ResultsStore

TINY = ["--model.backbone.model_name", "peftclip-tiny-vit", "--model.backbone.pretrained", "null",
        "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false"]  # fmt: skip


QUICK = "recipes/quickstart.yaml"


def _run(tmp_path, *args):
    return main(
        ["run", *args, "--db", str(tmp_path / "r.sqlite"), "--root", str(tmp_path / "grid")]
    )


def test_the_grid_expands_datasets_shots_and_seeds_with_the_few_shot_run_lengths():
    cells = runner.expand("few_shot", "recipes/coop/fewshot.yaml", ["dtd", "eurosat"], None,
                          [1, 16], [1, 2], [])  # fmt: skip
    assert [(c.dataset, c.shots, c.seed) for c in cells] == [
        (d, k, s) for d in ("dtd", "eurosat") for k in (1, 16) for s in (1, 2)
    ]
    assert len({cell.key for cell in cells}) == 8
    fit = cells[0].commands(runner.Path("runs"), runner.Path("r.sqlite"))[0]
    assert fit[fit.index("--trainer.max_epochs") + 1] == "50"  # CoOp, 1 shot
    (imagenet,) = runner.expand("few_shot", "recipes/coop/fewshot.yaml", ["imagenet"], None,
                                [16], [1], [])  # fmt: skip
    command = imagenet.commands(runner.Path("runs"), runner.Path("r.sqlite"))[0]
    assert command[command.index("--trainer.max_epochs") + 1] == "50"  # ImageNet: 50 for every K
    svd = runner.expand("few_shot", "recipes/clip_svd/fewshot.yaml", ["dtd"], None, [8], [1], [])
    command = svd[0].commands(runner.Path("runs"), runner.Path("r.sqlite"))[0]
    assert command[command.index("--trainer.max_steps") + 1] == "1600"  # 200 · K
    overridden = runner.expand("few_shot", "recipes/coop/fewshot.yaml", ["dtd"], None, [1], [1],
                               ["--trainer.max_epochs", "2"])  # fmt: skip
    assert overridden[0].key != cells[0].key  # an override is part of the identity
    assert "--trainer.max_epochs" not in overridden[0]._run_length()
    (swapped,) = runner.expand("base2new", QUICK, ["dtd"], None, None, [1],
                               ["--model.adapters=[{class_path: kgcoop}]"])  # fmt: skip
    assert [method["name"] for method in swapped.methods] == ["kgcoop"]  # what actually trains
    assert swapped.methods[0]["config"]["kg_weight"] == 8.0


COOP = {"methods": [{"name": "coop", "config": {}}], "backbone": None, "profile": "modern"}


def test_dg_trains_once_on_the_source_and_tests_every_target(monkeypatch):
    monkeypatch.setattr(runner, "resolved_identity", lambda recipe, overrides: COOP)
    (cell,) = runner.expand("dg", "recipes/coop/dg.yaml", None, "world", None, [1], [])
    assert cell.dataset == "world_objects" and cell.shots == 16
    fit, test = cell.commands(runner.Path("runs"), runner.Path("r.sqlite"))
    assert fit[0] == "fit" and test[0] == "test" and "last" in test
    assert "world_objects_sketch" in test[test.index("--data.eval_datasets") + 1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fewshot", "--config", "recipes/coop/fewshot.yaml"], "unknown protocol 'fewshot'"),
        (["base2new", "--config", QUICK, "--suite", "wrld"], "unknown suite"),
        (["base2new", "--config", QUICK, "--datasets", "pets"], "unknown dataset"),
        (["base2new", "--config", "nope.yaml"], "recipe nope.yaml does not exist"),
        (["base2new", "--config", QUICK, "--bogus", "1"], "unknown option --bogus"),
        (["base2new", "--config", QUICK, "--data.datset", "x"], "does not parse: unknown option"),
    ],
)  # fmt: skip
def test_bad_grids_are_one_line(tmp_path, capsys, args, message):
    assert _run(tmp_path, *args) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert message in line
    assert not (tmp_path / "r.sqlite").exists()


def test_a_sweep_records_every_cell_and_a_rerun_does_nothing(tmp_path, capsys):
    grid = ["base2new", "--config", "recipes/quickstart.yaml", "--datasets", "world_colors",
            "world_shapes", "--seeds", "1", "--jobs", "2", *TINY]  # fmt: skip
    assert _run(tmp_path, *grid) == 0
    with ResultsStore(tmp_path / "r.sqlite", readonly=True) as store:
        records = store.records(protocol="base2new")
        assert len(store.done_cells("base2new")) == 2
    assert {(r.dataset, r.method, r.split) for r in records} == {
        (d, m, h) for d in ("world_colors", "world_shapes") for m in ("coop", "zeroshot")
        for h in ("base", "new")
    }  # fmt: skip
    assert _run(tmp_path, *grid, "--dry-run") == 0
    assert capsys.readouterr().out.count(" ok\n") == 2
    assert _run(tmp_path, *grid) == 0
    assert "2 of 2 cells already done; running 0." in capsys.readouterr().out
    with ResultsStore(tmp_path / "r.sqlite", readonly=True) as store:
        assert len(store.records(protocol="base2new")) == len(records)


def test_a_failed_cell_is_recorded_with_its_error_and_retried(tmp_path, monkeypatch, capsys):
    grid = ["base2new", "--config", "recipes/quickstart.yaml", "--datasets", "world_colors",
            "world_shapes", "--seeds", "1"]  # fmt: skip
    ran = []

    def fail_colours(cell, root, db, log_dir, jobs):
        ran.append(cell.dataset)
        return "boom" if cell.dataset == "world_colors" else None

    monkeypatch.setattr(runner, "_run_cell", fail_colours)
    monkeypatch.setattr(runner, "resolved_identity", lambda recipe, overrides: COOP)
    assert _run(tmp_path, *grid) == 1  # the failure did not stop the sweep
    assert ran == ["world_colors", "world_shapes"]
    with ResultsStore(tmp_path / "r.sqlite", readonly=True) as store:
        (failed,) = store.cells(status="failed")
    assert failed.cell["dataset"] == "world_colors" and failed.error == "boom"
    monkeypatch.setattr(runner, "_run_cell", lambda cell, *_: ran.append(cell.dataset))
    assert _run(tmp_path, *grid) == 0
    assert ran[2:] == ["world_colors"]  # only the failed cell ran again


def test_parallel_cells_share_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 8)
    assert runner.cell_environment(2)["OMP_NUM_THREADS"] == "4"
    assert runner.cell_environment(16)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice wins
    assert runner.cell_environment(2)["OMP_NUM_THREADS"] == "3"
