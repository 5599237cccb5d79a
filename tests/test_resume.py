"""A fit stopped at any step — crash, ``kill -9``, a kill while a checkpoint is written, SIGTERM —
resumes with ``--ckpt_path last`` to the very tensors, optimizer state, learning rate and
metrics of the uninterrupted run (docs/resuming.md)."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peftclip.checkpoint_files import read_checkpoint
from peftclip.data.order import EpochSampler
from peftclip.lightning.cli import PeftClipCLI
from peftclip.lightning.datamodule import PeftClipDataModule
from peftclip.lightning.resume import SIGTERM_EXIT_STATUS, AtomicCheckpointIO
from tests.test_adapter_matrix import FITTED_ONLY, SHIPPED, TINY_SETTINGS

REPOSITORY = Path(__file__).resolve().parents[1]
#: 16 training images in batches of 4 for 3 epochs: 12 steps, with random crops and flips,
#: AdamW and Dassl's per-epoch cosine; a checkpoint after every step.
STEPS_PER_EPOCH, EPOCHS = 4, 3


def _fit_args(name, run_dir, *extra):
    return [
        "fit", "--config", "recipes/zeroshot/tiny_random.yaml", f"--model.adapters+={name}",
        *(f"--model.adapters.init_args.{k}={v}" for k, v in TINY_SETTINGS.get(name, {}).items()),
        "--data.shots", "2", "--data.batch_size", "4", "--data.train_transform", "dassl_train",
        "--model.optimizer", "AdamW", "--model.optimizer.lr", "0.01",
        "--model.scheduler", "peftclip.schedules.DasslCosine", "--model.scheduler_interval",
        "epoch", "--trainer.max_epochs", str(EPOCHS), "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run_dir),
        "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps=1",
        "--trainer.callbacks.save_last=true", *extra,
    ]  # fmt: skip


def _callback(name: str, **init_args) -> list[str]:
    """Command-line words adding ``tests.fault_injection.<name>(**init_args)`` to the trainer."""
    words = [f"--trainer.callbacks+=tests.fault_injection.{name}"]
    return words + [f"--trainer.callbacks.{key}={value}" for key, value in init_args.items()]


def _assert_same_training_state(expected: dict, found: dict) -> None:
    """Two checkpoints hold bitwise-equal adapters, optimizer and scheduler states."""
    assert found["global_step"] == expected["global_step"]
    assert expected["state_dict"].keys() == found["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        if torch.is_tensor(value):
            assert torch.equal(found["state_dict"][key], value), key
        else:  # a fitted method's extra state (its class names)
            assert found["state_dict"][key] == value, key
    for wanted, got in zip(expected["optimizer_states"], found["optimizer_states"], strict=True):
        assert got["param_groups"] == wanted["param_groups"]  # learning rates included
        for index, state in wanted["state"].items():
            for name, value in state.items():
                assert torch.equal(got["state"][index][name], value), (index, name)
    assert found["lr_schedulers"] == expected["lr_schedulers"]


def _last_checkpoint(root: Path) -> dict:
    """``last.ckpt`` of the (one) fit run under ``root``: a resumed fit continues in its folder."""
    (checkpoint,) = root.glob("*-fit-*/checkpoints/last.ckpt")
    return read_checkpoint(checkpoint)


def _crash_steps() -> list[tuple[str, int]]:
    """Every adapter at a step drawn for it, plus CoOp at an epoch's end and in the last epoch
    (where the interrupted epoch's training metrics must be restored)."""
    total = STEPS_PER_EPOCH * EPOCHS
    # A method fitted from data takes no step that a crash could interrupt.
    trained = [name for name in SHIPPED if name not in FITTED_ONLY]
    drawn = [(name, random.Random(name).randrange(1, total)) for name in trained]
    return [*drawn, ("coop", STEPS_PER_EPOCH), ("coop", total - 2)]


@pytest.mark.parametrize(("name", "crash_step"), _crash_steps())
def test_a_crashed_fit_resumes_to_the_uninterrupted_run(tmp_path, name, crash_step):
    straight = PeftClipCLI(args=_fit_args(name, tmp_path / "straight"))
    with pytest.raises(RuntimeError, match="injected crash"):
        PeftClipCLI(
            args=_fit_args(name, tmp_path / "crashed", *_callback("CrashAt", step=crash_step))
        )
    resumed = PeftClipCLI(args=_fit_args(name, tmp_path / "crashed", "--ckpt_path", "last"))
    _assert_same_training_state(
        _last_checkpoint(tmp_path / "straight"), _last_checkpoint(tmp_path / "crashed")
    )
    expected = {k: float(v) for k, v in straight.trainer.callback_metrics.items()}
    assert {k: float(v) for k, v in resumed.trainer.callback_metrics.items()} == expected


def _run_fit(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """``peftclip fit`` in its own process, loading with two worker processes."""
    record = _callback("RecordMetrics", path=f"{run_dir}.json")
    args = _fit_args("coop", run_dir, "--data.num_workers", "2", *record, *extra)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPOSITORY)}
    return subprocess.run(
        [sys.executable, "-m", "peftclip", *args],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = _run_fit(run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


#: kill -9 at steps drawn with seeds 0 and 1, and during the write of a checkpoint.
KILLS = [
    ("KillAt", random.Random(0).randrange(1, 12)),
    ("KillAt", random.Random(1).randrange(1, 12)),
    ("KillDuringSave", 6),
]


@pytest.mark.parametrize(("callback", "step"), KILLS)
def test_kill_9_with_worker_processes_resumes_to_the_uninterrupted_run(
    tmp_path, uninterrupted, callback, step
):
    run_dir = tmp_path / "run"
    killed = _run_fit(run_dir, *_callback(callback, step=step))
    assert killed.returncode == -9, killed.stderr[-2000:]
    saved = _last_checkpoint(run_dir)  # the previous checkpoint: whole, under its own name
    assert saved["global_step"] == (step - 1 if callback == "KillDuringSave" else step)
    resumed = _run_fit(run_dir, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_training_state(_last_checkpoint(uninterrupted), _last_checkpoint(run_dir))
    expected = json.loads(Path(f"{uninterrupted}.json").read_text())
    assert json.loads(Path(f"{run_dir}.json").read_text()) == expected


def test_sigterm_saves_the_step_and_exits_143_then_resumes(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    stopped = _run_fit(run_dir, *_callback("KillAt", step=5, signal_name="SIGTERM"))
    assert stopped.returncode == SIGTERM_EXIT_STATUS, stopped.stderr[-2000:]
    assert _last_checkpoint(run_dir)["global_step"] == 6  # the step under way when it arrived
    resumed = _run_fit(run_dir, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_training_state(_last_checkpoint(uninterrupted), _last_checkpoint(run_dir))


def test_an_atomic_checkpoint_write_that_fails_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)

    def fail_halfway(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def _batches(loader):
    return [(images.clone(), labels.clone()) for images, labels in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_depend_on_seed_and_epoch_only(workers):
    """The order and the random crops of an epoch are the same with and without worker
    processes, and an epoch resumed at a batch serves exactly the rest of it."""
    torch.manual_seed(3)
    options = {"shots": 2, "batch_size": 4, "train_transform": "dassl_train"}
    reference = PeftClipDataModule("world_colors", num_workers=0, **options)
    reference.setup("fit")
    loader = reference.train_dataloader()
    loader.sampler.resume_at(1, 0)
    expected = _batches(loader)

    module = PeftClipDataModule("world_colors", num_workers=workers, **options)
    module.setup("fit")
    module.order_seed = reference.order_seed
    module._resume_at = (1, 2)  # what load_state_dict sets from a checkpoint
    resumed = _batches(module.train_dataloader())
    assert len(resumed) == len(expected) - 2
    for (images, labels), (want_images, want_labels) in zip(resumed, expected[2:], strict=True):
        assert torch.equal(labels, want_labels) and torch.equal(images, want_images)

    other_epoch = reference.train_dataloader()
    other_epoch.sampler.resume_at(2, 0)
    assert not torch.equal(_batches(other_epoch)[0][0], expected[0][0])


def test_the_sampler_serves_every_sample_once_per_epoch():
    epoch = [0]
    sampler = EpochSampler(10, seed=1, epoch=lambda: epoch[0], batch_size=3)
    first = [index for index, _ in sampler]
    epoch[0] = 1
    second = [index for index, _ in sampler]
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    sampler.resume_at(1, 2)
    assert [index for index, _ in sampler] == second[6:]
    assert [index for index, _ in sampler] == second  # the resume point is used once


def test_a_non_finite_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    from peftclip.cli import main

    run_dir = tmp_path / "run"
    status = main(_fit_args("coop", run_dir, *_callback("PoisonAt", step=5)))
    assert status == 2
    (message,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert "training loss became nan at step 5" in message
    saved = _last_checkpoint(run_dir)
    assert saved["global_step"] == 5
    assert all(torch.isfinite(tensor).all() for tensor in saved["state_dict"].values())
