"""DDP on CPU (gloo): two processes train the same adapter tensors as one (docs/multi_gpu.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peftclip.data.order import EpochSampler

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "zeroshot" / "tiny_random.yaml"


@pytest.mark.parametrize("size", [24, 27])
def test_the_ranks_batches_of_a_step_are_the_single_process_batch(size):
    one = list(EpochSampler(size, 5, lambda: 3, batch_size=6))
    samplers = [
        EpochSampler(size, 5, lambda: 3, batch_size=6, rank=r, world_size=3) for r in range(3)
    ]
    ranks = [list(sampler) for sampler in samplers]
    assert [len(part) for part in ranks] == [len(sampler) for sampler in samplers]
    local = [[part[i : i + 2] for i in range(0, len(part), 2)] for part in ranks]  # batch 6 / 3
    steps = [[item for r in range(3) for item in local[r][j]] for j in range(len(local[0]))]
    assert [
        item for step in steps for item in step
    ] == one  # the last, partial batch (27 = 4·6 + 3) too


def _fit(tmp_path: Path, devices: int, *extra: str) -> dict[str, torch.Tensor]:
    root = tmp_path / f"devices{devices}"
    args = [
        sys.executable, "-m", "peftclip", "fit", "--config", str(RECIPE),
        "--model.adapters+=lora", "--data.batch_size", "8", "--trainer.max_steps", "3",
        "--trainer.accelerator", "cpu", "--trainer.devices", str(devices),
        "--trainer.strategy", "ddp" if devices > 1 else "auto",
        "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(root), *extra,
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    if devices > 1:
        assert f"Starting with {devices} processes" in done.stderr + done.stdout
    (checkpoint,) = root.rglob("*.ckpt")
    return torch.load(checkpoint, weights_only=False)["state_dict"]


def test_a_two_process_ddp_fit_trains_the_tensors_of_a_one_process_fit(tmp_path):
    single, ddp = _fit(tmp_path, 1), _fit(tmp_path, 2)
    initial = _fit_free_initial_state()
    assert single.keys() == ddp.keys() and single
    moved = [name for name in single if not torch.equal(single[name], initial[name])]
    assert moved  # the fit trained something
    for name, tensor in single.items():
        torch.testing.assert_close(ddp[name], tensor, rtol=1e-5, atol=1e-6)


def _fit_free_initial_state() -> dict[str, torch.Tensor]:
    """The LoRA tensors before training, as the fit builds them (seed 0)."""
    from peftclip.lightning.cli import PeftClipCLI

    cli = PeftClipCLI(args=["--config", str(RECIPE), "--model.adapters+=lora"], run=False)
    return {name: tensor.clone() for name, tensor in cli.model.state_dict().items()}


def _cache_worker(rank: int, cache: str, directory: str, init_file: str) -> None:
    torch.distributed.init_process_group("gloo", f"file://{init_file}", rank=rank, world_size=2)

    def compute() -> torch.Tensor:
        (Path(directory) / f"computed-by-{rank}").touch()
        return torch.arange(6.0).reshape(2, 3) + 0.25

    if cache == "image":
        from peftclip.image_cache import ImageFeatureCache

        description = {"backbone": {"model_name": "m"}, "dataset": "d", "split": "test", "view": 0}
        images = ImageFeatureCache(directory)
        lookup = lambda: images.features(description, compute)  # noqa: E731
    else:  # a frozen text head (model.text_cache_dir)
        from peftclip.backbone import TextFeatureCache

        text = TextFeatureCache(directory)
        lookup = lambda: text.features("key", compute)  # noqa: E731
    table = lookup()
    assert torch.equal(lookup(), table)  # a memory hit: nothing computed, no rank waits alone
    torch.save(table, Path(directory) / f"table-{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("cache", ["image", "text"])
def test_under_ddp_rank_zero_writes_a_cached_table_and_the_others_read_it(tmp_path, cache):
    torch.multiprocessing.spawn(
        _cache_worker, args=(cache, str(tmp_path), str(tmp_path / "init")), nprocs=2, join=True
    )
    assert sorted(p.name for p in tmp_path.glob("computed-by-*")) == ["computed-by-0"]
    tables = [torch.load(tmp_path / f"table-{rank}.pt") for rank in (0, 1)]
    assert torch.equal(tables[0], tables[1])
    assert torch.equal(tables[0], torch.arange(6.0).reshape(2, 3) + 0.25)
