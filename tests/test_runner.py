"""``peftclip run``: a protocol grid of cells, each in its own process, skipped once recorded."""

import pytest

from peftclip.cli import main
from peftclip.protocols import cells, runner, slurm
from peftclip.protocols.cells import Cell
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
    grid = runner.expand("few_shot", "recipes/coop/fewshot.yaml", ["dtd", "eurosat"], None,
                          [1, 16], [1, 2], [])  # fmt: skip
    assert [(c.dataset, c.shots, c.seed) for c in grid] == [
        (d, k, s) for d in ("dtd", "eurosat") for k in (1, 16) for s in (1, 2)
    ]
    assert len({cell.key for cell in grid}) == 8
    fit = grid[0].commands(runner.Path("runs"), runner.Path("r.sqlite"))[0]
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
    assert overridden[0].key != grid[0].key  # an override is part of the identity
    root = runner.Path("runs")  # and its run folders are its own: `test --ckpt_path last` there
    assert overridden[0].folder(root) != grid[0].folder(root)  # never finds another cell's fit
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

    monkeypatch.setattr(runner, "run_cell", fail_colours)
    monkeypatch.setattr(runner, "resolved_identity", lambda recipe, overrides: COOP)
    assert _run(tmp_path, *grid) == 1  # the failure did not stop the sweep
    assert ran == ["world_colors", "world_shapes"]
    with ResultsStore(tmp_path / "r.sqlite", readonly=True) as store:
        (failed,) = store.cells(status="failed")
    assert failed.cell["dataset"] == "world_colors" and failed.error == "boom"
    monkeypatch.setattr(runner, "run_cell", lambda cell, *_: ran.append(cell.dataset))
    assert _run(tmp_path, *grid) == 0
    assert ran[2:] == ["world_colors"]  # only the failed cell ran again


def test_parallel_cells_share_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr(cells.os, "cpu_count", lambda: 8)
    assert cells.cell_environment(2)["OMP_NUM_THREADS"] == "4"
    assert cells.cell_environment(16)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")  # a SLURM task's own CPUs, not the node's
    assert cells.cell_environment(1)["OMP_NUM_THREADS"] == "6"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice wins
    assert cells.cell_environment(2)["OMP_NUM_THREADS"] == "3"


def test_world_cells_train_as_their_recipe_says_and_base2new_keeps_tasks_with_two_classes_a_half(
    monkeypatch,
):
    monkeypatch.setattr(runner, "resolved_identity", lambda recipe, overrides: COOP)
    few_shot = runner.expand("few_shot", QUICK, None, "world", [1, 16], [1], [])
    assert {cell.dataset for cell in few_shot} == set(runner.WORLD)
    assert all(cell._run_length() == [] for cell in few_shot)  # not the papers' 50-200 epochs
    base2new = runner.expand("base2new", QUICK, None, "world", None, [1], [])
    from peftclip.data import dataset_definition

    for cell in base2new:
        classes = len(dataset_definition(cell.dataset).classnames)
        assert classes // 2 >= 2, cell.dataset  # the smaller (new) half has two classes or more
    assert {"world_counts", "world_sizes"}.isdisjoint(cell.dataset for cell in base2new)


SLURM = slurm.SlurmOptions(partition="gpu", account="lab", gpus=2, cpus=16, mem_gb=64,
                           time_min=90, parallelism=3)  # fmt: skip


def test_the_slurm_options_reach_the_sbatch_file_of_the_array(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"  # records what it is given, answers as SLURM does
    fake.write_text(
        f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n'
    )
    fake.chmod(0o755)
    (bin_dir / "srun").symlink_to("/bin/true")  # submitit looks for it to detect a cluster
    monkeypatch.setenv("PATH", f"{bin_dir}:{cells.os.environ['PATH']}")
    slurm.check_available("slurm")
    cell = Cell("base2new", QUICK, "world_colors", 16, 1, (), (), COOP)
    jobs = slurm.executor(tmp_path / "jobs", SLURM).map_array(
        slurm.run_cell_task, [cell] * 5, [tmp_path] * 5
    )
    assert [job.job_id for job in jobs] == [f"4242_{index}" for index in range(5)]
    sbatch = (tmp_path / "submitted.sh").read_text()
    for line in ("--partition=gpu", "--account=lab", "--gpus-per-node=2", "--cpus-per-task=16",
                 "--mem=64GB", "--time=90", "--array=0-4%3"):  # fmt: skip
        assert f"#SBATCH {line}\n" in sbatch


def test_slurm_without_sbatch_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(runner, "resolved_identity", lambda recipe, overrides: COOP)
    assert _run(tmp_path, "base2new", "--config", QUICK, "--datasets", "world_colors",
                "--seeds", "1", "--launcher", "slurm") == 2  # fmt: skip
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert "--launcher slurm needs SLURM's sbatch and srun on this machine" in line


def test_a_slurm_array_through_submitits_local_executor_records_its_cells(tmp_path, capsys):
    """The SLURM code path end to end, with submitit's local executor standing in for SLURM:
    tasks run the cells, return their records, and the runner stores them (or the error)."""
    (ok,) = runner.expand("base2new", QUICK, ["world_colors"], None, None, [1], TINY)
    broken = Cell(
        "base2new", QUICK, "world_shapes", 16, 1, ("--trainer.max_epochs", "many"), (), ok.resolved
    )
    db = tmp_path / "r.sqlite"
    options = slurm.SlurmOptions(gpus=0, cpus=1, time_min=10, parallelism=2)
    failed = runner.run_grid([ok, broken], db, tmp_path / "grid", slurm=options,
                             cluster="local", poll_s=0.2)  # fmt: skip
    assert failed == 1
    assert "submitted 2 cells as job array" in capsys.readouterr().out
    with ResultsStore(db, readonly=True) as store:
        assert store.done_cells("base2new") == {ok.key}
        assert {(r.method, r.split) for r in store.records()} == {  # zero-shot CLIP too
            (m, h) for m in ("coop", "zeroshot") for h in ("base", "new")
        }
        (failure,) = store.cells(status="failed")
    assert failure.cell_key == broken.key and "exited" in failure.error
