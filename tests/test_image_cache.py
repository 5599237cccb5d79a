"""The image-feature cache: exact (cached runs equal uncached ones bitwise), keyed by everything
that changes a feature, capped, safe under concurrent writers, and off for prompted towers."""

import multiprocessing
import os

import pytest
import torch

import peftclip.image_cache as image_cache
from peftclip.adapters import get_adapter_class
from peftclip.backbone import BackboneSpec, FrozenClip, load_backbone
from peftclip.classifier import PeftClipClassifier
from peftclip.cli import main
from peftclip.data.images import LabeledImageFiles
from peftclip.image_cache import ImageFeatureCache, disk_entries, image_list_hash
from peftclip.lightning import PeftClipDataModule
from peftclip.lightning.cli import PeftClipCLI
from tests.conftest import TINY

TINY_RUN = ["--config", "recipes/zeroshot/tiny_random.yaml", "--trainer.enable_progress_bar",
            "false", "--data.shots", "2", "--data.batch_size", "16",
            "--trainer.enable_checkpointing", "false"]  # fmt: skip
COOP = ["--model.adapters+=coop", "--model.adapters.init_args.n_ctx", "2",
        "--model.optimizer", "torch.optim.SGD", "--model.optimizer.lr", "0.5"]  # fmt: skip


@pytest.fixture(autouse=True)
def _fresh_memory():
    """Each test starts with no table in the process's memory (what a new process sees)."""
    image_cache.MEMORY.clear()
    yield
    image_cache.MEMORY.clear()


@pytest.fixture
def tower_calls(monkeypatch):
    """Images per call of the image tower, in call order."""
    calls = []
    original = FrozenClip.encode_image

    def counted(self, images, *args, **kwargs):
        calls.append(len(images))
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(FrozenClip, "encode_image", counted)
    return calls


def _run(command, root, cache, *args):
    image_cache.MEMORY.clear()  # a later run is a new process: only the disk can serve it
    cache_args = ["--model.image_cache_dir", "null" if cache is None else str(cache)]
    return PeftClipCLI(args=[command, *TINY_RUN, "--trainer.default_root_dir", str(root),
                             *cache_args, *args])  # fmt: skip


def _fit_coop(root, cache, *args):
    cli = _run("fit", root, cache, *COOP, "--data.train_transform", "dassl_train",
               "--trainer.max_epochs", "2", *args)  # fmt: skip
    metrics = {k: v.clone() for k, v in cli.trainer.callback_metrics.items()}
    return cli.model.adapter_state_dict(), metrics, cli.model


def _assert_bitwise(first, second):
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_a_cached_augmented_coop_fit_equals_an_uncached_fit_bitwise(
    tmp_path, tower_calls, monkeypatch
):
    cache = tmp_path / "cache"
    cold_state, cold_metrics, model = _fit_coop(tmp_path / "cold", cache)
    assert model.reads_feature_tables and tower_calls  # the tables were computed
    # Two augmented views of the 16 training images (epochs 0 and 1) and the val split.
    splits = sorted((e.description["split"], str(e.description["view"])) for e in
                    disk_entries(cache))  # fmt: skip
    assert [split for split, _ in splits] == ["train", "train", "val"]
    assert splits[0][1] != splits[1][1]

    tower_calls.clear()
    warm_state, warm_metrics, _ = _fit_coop(tmp_path / "warm", cache)
    assert tower_calls == []  # a second run extracts nothing
    _assert_bitwise(cold_state, warm_state)
    _assert_bitwise(cold_metrics, warm_metrics)

    memory_state, memory_metrics, _ = _fit_coop(tmp_path / "memory", None)
    _assert_bitwise(cold_state, memory_state)
    _assert_bitwise(cold_metrics, memory_metrics)

    # The image path (the tower on every batch): a batch is the whole split, so the tower sees
    # the images of the tables' extraction in one call (shuffled: a GEMM's rows do not depend on
    # their order), each epoch with its own augmentation — the same bits as the tables.
    monkeypatch.setattr(PeftClipClassifier, "image_tower_frozen", property(lambda self: False))
    tower_calls.clear()
    image_state, image_metrics, model = _fit_coop(tmp_path / "images", None)
    assert not model.reads_feature_tables and tower_calls
    _assert_bitwise(cold_state, image_state)
    _assert_bitwise(cold_metrics, image_metrics)


def test_a_fitted_method_reads_its_training_views_from_the_cache(tmp_path, tower_calls):
    cache = tmp_path / "cache"
    args = ("--model.adapters+=tests.toy_adapters.ToyPrototypes", "--data.train_transform",
            "dassl_train", "--trainer.max_epochs", "1")  # fmt: skip
    cold = _run("fit", tmp_path / "cold", cache, *args).model.adapters[0].prototypes
    tower_calls.clear()
    warm = _run("fit", tmp_path / "warm", cache, *args).model.adapters[0].prototypes
    assert tower_calls == [] and torch.equal(cold, warm)
    assert sum(e.description["split"] == "train" for e in disk_entries(cache)) == 2  # 2 views


def _recorded_logits(monkeypatch) -> list[torch.Tensor]:
    logits = []
    original = PeftClipClassifier.head

    def recorded(self, inputs):
        logits.append(original(self, inputs))
        return logits[-1]

    monkeypatch.setattr(PeftClipClassifier, "head", recorded)
    return logits


def test_zero_shot_evaluation_from_a_warm_cache_equals_the_uncached_one(
    tmp_path, tower_calls, monkeypatch
):
    cache = tmp_path / "cache"
    logits = _recorded_logits(monkeypatch)
    _run("test", tmp_path / "cold", cache)
    cold = list(logits)
    logits.clear()
    tower_calls.clear()
    warm = _run("test", tmp_path / "warm", cache)
    assert tower_calls == []  # a matrix product against the cached features
    assert len(logits) == len(cold) > 1
    assert all(torch.equal(a, b) for a, b in zip(cold, logits, strict=True))

    monkeypatch.setattr(PeftClipClassifier, "image_tower_frozen", property(lambda self: False))
    logits.clear()
    plain = _run("test", tmp_path / "plain", cache)
    assert all(torch.equal(a, b) for a, b in zip(cold, logits, strict=True))
    assert warm.model.evaluations == plain.model.evaluations


def test_every_key_change_misses(tmp_path, tower_calls):
    cache = tmp_path / "cache"

    def tables_after(*args) -> int:
        _run("test", tmp_path / f"run{len(os.listdir(tmp_path))}", cache, *args)
        return len(disk_entries(cache))

    assert tables_after() == 1
    assert tables_after("--seed_everything", "2") == 1  # deterministic: one view for all seeds
    assert tables_after("--data.eval_transform", "dassl_test") == 2  # the transform
    assert tables_after("--data.options", "{seed: 1}") == 3  # other images
    assert tables_after("--model.backbone.init_seed", "1") == 4  # other weights
    assert tables_after("--data.eval_batch_size", "8") == 5  # other tower batches
    assert tables_after("--model.image_cache_dtype", "float16") == 6  # storage


def test_augmented_training_views_are_keyed_by_seed_and_view(tmp_path):
    cache = tmp_path / "cache"
    args = ("--data.train_transform", "dassl_train", "--trainer.max_epochs", "1",
            "--trainer.limit_val_batches", "0")  # fmt: skip
    _run("fit", tmp_path / "a", cache, *COOP, *args)
    _run("fit", tmp_path / "b", cache, *COOP, *args, "--seed_everything", "7")
    views = [e.description["view"] for e in disk_entries(cache)]
    assert sorted(view["seed"] for view in views) == [0, 7]  # the default seed, and 7
    assert {view["view"] for view in views} == {0}


def test_view_e_of_an_image_is_its_augmentation_in_training_epoch_e():
    datamodule = PeftClipDataModule(
        "world_colors",
        shots=2,
        num_workers=0,
        batch_size=4,
        train_transform="dassl_train",
        backbone=BackboneSpec(TINY),
    )
    datamodule.order_seed = 3
    datamodule.setup("fit")
    train = datamodule.data.splits["train"]
    in_order = torch.cat([images for images, _ in datamodule.view_loader(train, view=1)])
    epoch = {}
    datamodule._current_epoch = lambda: 1  # the trainer's epoch
    loader = datamodule.train_dataloader()  # shuffled
    for keys, (images, _) in zip(loader.batch_sampler, loader, strict=True):
        epoch.update({index: image for (index, _), image in zip(keys, images, strict=True)})
    assert list(epoch) != sorted(epoch)
    assert all(torch.equal(in_order[index], image) for index, image in epoch.items())
    assert len(epoch) == len(train)
    view0 = torch.cat([images for images, _ in datamodule.view_loader(train, view=0)])
    assert not torch.equal(view0, in_order)


@pytest.mark.parametrize(
    ("name", "options", "frozen"),
    [
        ("coop", {"n_ctx": 2}, True),
        ("cocoop", {"n_ctx": 2}, True),
        ("kgcoop", {}, True),
        ("lora", {"r": 2, "towers": "text"}, True),
        ("maple", {"n_ctx": 2, "prompt_depth": 2}, False),
        ("ivlp", {"text_depth": 2, "vision_depth": 2}, False),
        ("vpt_deep", {"n_vision": 2, "vision_depth": 2}, False),
        ("promptsrc", {"text_depth": 2, "vision_depth": 2}, False),
        ("lora", {"r": 2, "towers": "vision"}, False),
        ("clip_svd", {"towers": "vision"}, False),
    ],
)
def test_the_cache_serves_exactly_the_frozen_unprompted_towers(name, options, frozen):
    adapter = get_adapter_class(name)(**options)
    classifier = PeftClipClassifier(load_backbone(TINY, init_seed=0), [adapter])
    assert classifier.image_tower_frozen is frozen


def test_a_prompted_composition_never_uses_the_cache(tmp_path, tower_calls):
    cache = tmp_path / "cache"
    cli = _run("fit", tmp_path / "maple", cache, "--model.adapters+=maple",
               "--model.adapters.init_args.n_ctx", "2",
               "--model.adapters.init_args.prompt_depth", "2",
               "--trainer.max_steps", "2")  # fmt: skip
    assert not cli.model.reads_feature_tables
    assert not cache.exists() or disk_entries(cache) == []
    assert tower_calls[:2] == [16, 16]  # the prompted tower on every training batch


def _table(rows: int, fill: float) -> torch.Tensor:
    return torch.full((rows, 4), fill)


def _description(name: str) -> dict:
    return {"backbone": {"model_name": "m"}, "dataset": name, "split": "test", "images": 4,
            "view": None}  # fmt: skip


def test_the_cap_evicts_the_least_recently_used_tables(tmp_path):
    ImageFeatureCache(tmp_path / "one").features(_description("a"), lambda: _table(4, 0))
    (entry,) = disk_entries(tmp_path / "one")
    image_cache.MEMORY.clear()
    cache = ImageFeatureCache(tmp_path / "capped", max_gb=3.5 * entry.size / 1e9)
    for index, name in enumerate(("a", "b", "c")):
        cache.features(_description(name), lambda index=index: _table(4, index))
        os.utime(cache.path(_description(name)), (1000 + index, 1000 + index))
    image_cache.MEMORY.clear()
    cache.features(_description("a"), lambda: pytest.fail("a is on disk"))  # a is used again
    cache.features(_description("d"), lambda: _table(4, 3))
    kept = sorted(entry.description["dataset"] for entry in cache.entries())
    assert kept == ["a", "c", "d"]  # b, the least recently used, went
    assert sum(entry.size for entry in cache.entries()) <= cache.max_bytes


def test_float16_storage_rounds_cold_and_warm_alike(tmp_path):
    cache = ImageFeatureCache(tmp_path, dtype="float16")
    exact = torch.full((4, 4), 1 / 3)
    cold = cache.features(_description("a"), lambda: exact)
    image_cache.MEMORY.clear()
    warm = cache.features(_description("a"), lambda: pytest.fail("stored"))
    assert cold.dtype == warm.dtype == torch.float32 and torch.equal(cold, warm)
    assert not torch.equal(cold, exact) and torch.allclose(cold, exact, atol=1e-3)


def test_each_lookup_logs_a_miss_or_where_it_hit(tmp_path, caplog):
    cache = ImageFeatureCache(tmp_path)
    with caplog.at_level("INFO", logger="peftclip.image_cache"):
        cache.features(_description("a"), lambda: _table(4, 1.0))
        cache.features(_description("a"), lambda: pytest.fail("in memory"))
        image_cache.MEMORY.clear()
        cache.features(_description("a"), lambda: pytest.fail("on disk"))
    path = cache.path(_description("a"))
    assert [record.getMessage().split(":")[0] for record in caplog.records] == [
        "image-feature cache miss",
        "image-feature cache hit (memory)",
        f"image-feature cache hit ({path})",
    ]


def test_a_torn_file_is_recomputed(tmp_path):
    cache = ImageFeatureCache(tmp_path)
    cache.features(_description("a"), lambda: _table(4, 1.0))
    cache.path(_description("a")).write_bytes(b"torn")
    image_cache.MEMORY.clear()
    with pytest.warns(UserWarning, match="unreadable"):
        table = cache.features(_description("a"), lambda: _table(4, 2.0))
    assert torch.equal(table, _table(4, 2.0))


def _write_concurrently(directory: str, fill: float) -> None:
    cache = ImageFeatureCache(directory)
    for _ in range(20):
        cache._write(_description("a"), _table(4096, fill))


def test_two_processes_writing_one_table_leave_it_whole(tmp_path):
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_concurrently, args=(str(tmp_path), 1.0))
               for _ in range(2)]  # fmt: skip
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert all(writer.exitcode == 0 for writer in writers)
    cache = ImageFeatureCache(tmp_path)
    assert torch.equal(cache._read(_description("a")), _table(4096, 1.0))
    assert list(tmp_path.rglob("*.partial")) == []


def test_a_changed_file_changes_the_image_list(tmp_path):
    paths = [tmp_path / f"{index}.png" for index in range(2)]
    for path in paths:
        path.write_bytes(b"x")
    dataset = LabeledImageFiles([(path, 0) for path in paths])
    before = image_list_hash(dataset)
    assert image_list_hash(LabeledImageFiles([(p, 1) for p in paths])) == before  # labels: no
    paths[1].write_bytes(b"yy")
    assert image_list_hash(dataset) != before
    assert image_list_hash(LabeledImageFiles([(p, 0) for p in paths[::-1]])) != before


def test_cache_info_lists_and_clear_removes_tables(tmp_path, capsys):
    cache = ImageFeatureCache(tmp_path)
    for name in ("a", "b"):
        cache.features(_description(name), lambda: _table(4, 0.0))
    capsys.readouterr()
    assert main(["cache", "info", "--cache-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["backbone", "dataset", "split", "images", "view", "size",
                                "last", "used", "(UTC)"]  # fmt: skip
    assert [line.split()[:5] for line in lines[1:3]] == [
        ["m", name, "test", "4", "all"] for name in ("a", "b")
    ]
    size = cache.entries()[0].size  # the same for both (same shape and key lengths)
    assert lines[3] == f"2 tables, {2 * size} B in {tmp_path}"
    assert main(["cache", "clear", "--cache-dir", str(tmp_path), "--dataset", "a"]) == 0
    assert capsys.readouterr().out.strip() == f"removed 1 tables, {size} B from {tmp_path}"
    assert [entry.description["dataset"] for entry in cache.entries()] == ["b"]
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert main(["cache", "info", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"0 tables, 0 B in {tmp_path}"


def test_base_to_new_shares_its_test_tables_between_zero_shot_and_the_trained_model(
    tmp_path, tower_calls, monkeypatch
):
    import lightning as L

    from peftclip.adapters import CoOp
    from peftclip.lightning import PeftClipModule
    from peftclip.protocols.base_to_new import run_base_to_new

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the default folder
    cache = tmp_path / "cache"
    module = PeftClipModule(BackboneSpec(TINY), adapters=[CoOp(n_ctx=2)], image_cache_dir=cache)
    datamodule = PeftClipDataModule("world_colors", shots=2, num_workers=0,
                                    backbone=BackboneSpec(TINY))  # fmt: skip
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path)  # fmt: skip
    run_base_to_new(module, datamodule, trainer)
    tests = [e.description["images"] for e in disk_entries(cache) if e.description["split"] ==
             "test"]  # fmt: skip
    assert len(tests) == 2  # the base and the new test images, each computed once
    assert sum(tower_calls) == sum(e.description["images"] for e in disk_entries(cache))
    assert disk_entries(image_cache.default_cache_dir()) == []  # zero-shot used the recipe's
