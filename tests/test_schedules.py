"""The Dassl epoch schedule, checked against the values in specs/methods.md §1.8."""

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
