"""The Dassl epoch schedule, checked against docs/methods/index.md#learning-rate-schedules."""

import pytest
import torch

from peftclip.schedules import DasslCosine


def _lrs(lr0: float, epochs: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr0, momentum=0.9)
    scheduler = DasslCosine(optimizer, max_epochs=epochs)
    values = []
    for _ in range(epochs):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_maple_base_to_new_schedule():
    assert _lrs(0.0035, 5) == pytest.approx([1e-5, 3.5e-3, 3.17e-3, 2.29e-3, 1.21e-3], abs=6e-6)


def test_two_epochs_is_one_effective_epoch():
    assert _lrs(0.0026, 2) == pytest.approx([1e-5, 2.6e-3])


def test_invalid_length():
    with pytest.raises(ValueError):
        DasslCosine(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), max_epochs=0)


def test_iteration_cosine_matches_cosine_annealing_and_fills_the_run_length():
    from peftclip.schedules import IterationCosine

    def lrs(make, steps):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
        scheduler = make(optimizer)
        values = []
        for _ in range(steps):
            values.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return values

    ours = lrs(lambda o: IterationCosine(o, total_steps=20, eta_min=1e-6), 20)
    reference = lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 20, 1e-6), 20)
    assert ours == pytest.approx(reference, rel=1e-9)
    assert ours[0] == 5e-4 and ours[-1] > 1e-6


def test_iteration_cosine_takes_the_trainer_length(tmp_path):
    from peftclip.lightning.cli import PeftClipCLI

    cli = PeftClipCLI(args=[
        "fit", "--config", "recipes/zeroshot/tiny_random.yaml", "--model.adapters+=coop",
        "--model.scheduler", "peftclip.schedules.IterationCosine",
        "--data.shots", "2", "--trainer.max_steps", "3", "--trainer.enable_progress_bar",
        "false", "--trainer.default_root_dir", str(tmp_path),
    ])  # fmt: skip
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.total_steps == 3 and scheduler.last_epoch == 3
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0)
