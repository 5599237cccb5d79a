"""Methods on frozen image features: GDA, Tip-Adapter(-F), the linear probe and LP++ against
direct computations; selection never on test by default; the Tip-lineage samplers."""

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from peftclip.adapters import (
    GDA,
    HeadInput,
    LPPlusPlus,
    SelectionSet,
    TipAdapter,
    TipAdapterF,
    TrainingFeatures,
    get_adapter_class,
    list_adapters,
)
from peftclip.adapters.base import implements
from peftclip.adapters.gda import synthesized_new_head
from peftclip.adapters.linear_probe import logistic_regression, search_c
from peftclip.adapters.tip_adapter import search_counts, search_grid
from peftclip.data.fewshot import sample_per_class
from peftclip.errors import PeftClipError
from peftclip.lightning.cli import PeftClipCLI
from peftclip.results import ResultsStore

CLASSES = [f"class {i}" for i in range(4)]
DIM = 8
FITTED = [
    name
    for name in list_adapters()
    if get_adapter_class(name).__module__.startswith("peftclip.")
    and implements(get_adapter_class(name)(), "fit_from_data")
]


def _problem(views=3, per_class=6, seed=0):
    """Separable-ish random features: a class direction plus noise, raw (norm ≠ 1)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(CLASSES), DIM, generator=generator)
    labels = torch.arange(len(CLASSES)).repeat_interleave(per_class)
    noise = torch.randn(views, len(labels), DIM, generator=generator)
    features = 3 * (centres[labels] + 0.8 * noise)
    val_labels = torch.arange(len(CLASSES)).repeat(3)
    val = 3 * (centres[val_labels] + 0.8 * torch.randn(len(val_labels), DIM, generator=generator))
    text = F.normalize(centres + 0.5 * torch.randn(len(CLASSES), DIM, generator=generator), dim=-1)
    return features, labels, val, val_labels, text


def _data(views=3, per_class=6, seed=0, asked=None):
    features, labels, val, val_labels, text = _problem(views, per_class, seed)

    def selection(split):
        if asked is not None:
            asked.append(split)
        return SelectionSet(split, val, val_labels, torch.tensor(100.0), text)

    return TrainingFeatures(features, labels, CLASSES, lambda templates=None: text, selection)


def _inputs(features, text, classnames=CLASSES):
    return HeadInput(features, text, torch.tensor(100.0), classnames)


# ----------------------------------------------------------------------------------- GDA
def test_gda_few_shot_estimator_equals_a_float64_numpy_computation():
    data = _data()
    gda = GDA(views=3)
    gda.fit_from_data(data)
    x = F.normalize(data.features, dim=-1).reshape(-1, DIM).double().numpy()
    y = data.labels.repeat(3).numpy()
    means = np.stack([x[y == k].mean(0) for k in range(4)])
    centred = x - means[y]
    scatter = centred.T @ centred
    n = len(x)
    regularised = scatter + np.trace(scatter) / (n - 1) * np.eye(DIM)
    precision = DIM * np.linalg.inv(regularised)
    np.testing.assert_allclose(precision @ regularised, DIM * np.eye(DIM), atol=1e-9)
    weight = means @ precision
    bias = np.log(1 / 4) - 0.5 * np.einsum("kd,kd->k", weight, means)
    np.testing.assert_allclose(gda.weight.numpy(), weight, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gda.bias.numpy(), bias, rtol=1e-4, atol=1e-4)
    # the combined logits, with the searched α
    probe = torch.randn(5, DIM)
    image = F.normalize(probe, dim=-1).double().numpy()
    text = data.frozen_head().double().numpy()
    alpha = gda.alpha.item()
    expected = 100 * image @ text.T + alpha * (image @ weight.T + bias)
    got = gda.head(_inputs(probe, data.frozen_head()))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-3)


def test_gda_alpha_zero_is_zero_shot_and_ties_pick_the_smallest_alpha():
    data = _data()
    gda = GDA(views=3, alphas=(0.0,))
    gda.fit_from_data(data)
    probe = torch.randn(5, DIM)
    zero_shot = 100 * (F.normalize(probe, dim=-1) @ F.normalize(data.frozen_head(), dim=-1).T)
    assert torch.equal(gda.head(_inputs(probe, data.frozen_head())), zero_shot)
    # Tiny α change no prediction: all tie with the first, which wins.
    tied = GDA(views=3, alphas=(1e-9, 2e-9, 3e-9))
    tied.fit_from_data(data)
    assert tied.alpha.item() == pytest.approx(1e-9)


def test_gda_base_to_new_estimator_and_the_synthesised_new_head():
    data = _data(per_class=5)
    gda = GDA(estimator="base2new", views=3)
    gda.fit_from_data(data)
    x = F.normalize(data.features, dim=-1).reshape(-1, DIM).double().numpy()
    y = data.labels.repeat(3).numpy()
    covariances = [np.cov(x[y == k], rowvar=False) for k in range(4)]  # unbiased, own mean
    precision = np.linalg.pinv(np.mean(covariances, 0))
    means = np.stack([x[y == k].mean(0) for k in range(4)])
    np.testing.assert_allclose(gda.weight.numpy(), means @ precision, rtol=1e-3, atol=1e-3)
    # The new-class mean on a toy set: k = 2 neighbours, the text 16 times.
    train = F.normalize(torch.tensor([[1.0, 0.1], [0.9, 0.4], [-1.0, 0.0]]), dim=-1)
    text = F.normalize(torch.tensor([[1.0, 0.0]]), dim=-1)
    weight, bias = synthesized_new_head(train, text, neighbours=2, text_copies=16)
    mean = (train[0] + train[1] + 16 * text[0]) / 18
    centred = (train[:2] - text[0]).double().numpy()
    sigma = centred.T @ centred / 1
    new_precision = 2 * np.linalg.pinv(1 * sigma + np.trace(sigma) * np.eye(2))
    np.testing.assert_allclose(weight[0].numpy(), new_precision @ mean.numpy(), rtol=1e-5)
    expected_bias = np.log(1.0) - 0.5 * mean.numpy() @ new_precision @ mean.numpy()
    assert bias.item() == pytest.approx(expected_bias, rel=1e-5)
    # The fitted base2new head meets new class names: it synthesises their head.
    new_text = F.normalize(torch.randn(3, DIM), dim=-1)
    logits = gda.head(_inputs(torch.randn(2, DIM), new_text, ["new a", "new b", "new c"]))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    with pytest.raises(PeftClipError, match="cannot score classes"):
        few_shot = GDA(views=3)
        few_shot.fit_from_data(data)
        few_shot.head(_inputs(torch.randn(2, DIM), new_text, ["new a", "new b", "new c"]))


# --------------------------------------------------------------------------- Tip-Adapter
def test_tip_adapter_cache_logits_keys_and_alpha_zero():
    data = _data()
    tip = TipAdapter(views=3, search=False, alpha=2.0, beta=5.0)
    tip.fit_from_data(data)
    assert torch.equal(tip.keys, F.normalize(data.features.mean(0), dim=-1))
    probe = torch.randn(5, DIM)
    affinity = F.normalize(probe, dim=-1) @ tip.keys.T
    values = F.one_hot(data.labels, 4).float()
    expected = 2.0 * torch.exp(-5.0 * (1 - affinity)) @ values
    assert torch.allclose(tip.extra_logits(_inputs(probe, data.frozen_head())), expected)
    tip.alpha_beta[0] = 0.0
    assert torch.equal(tip.extra_logits(_inputs(probe, data.frozen_head())), torch.zeros(5, 4))


def test_tip_adapter_search_grid_and_first_best_pair():
    grid = search_grid(13, 200)
    assert grid[0] == 0.1 and grid[-1] == pytest.approx(12.9355) and len(grid) == 200
    data = _data()
    tip = TipAdapter(views=3, search_scale=(7, 3), search_steps=(8, 4))
    tip.fit_from_data(data)
    selection = data.selection("fewshot_val")
    zero_shot, scores = selection.zero_shot_logits(), []
    for beta in search_grid(7, 8):
        for alpha in search_grid(3, 4):
            cache = TipAdapter(views=3, search=False, alpha=alpha, beta=beta)
            cache.fit_from_data(data)
            logits = zero_shot + cache.extra_logits(
                _inputs(selection.features, selection.text_features)
            )
            scores.append(
                ((logits.argmax(-1) == selection.labels).float().mean().item(), alpha, beta)
            )
    best = max(score for score, _, _ in scores)
    first = next((alpha, beta) for score, alpha, beta in scores if score == best)
    assert tuple(tip.alpha_beta.tolist()) == pytest.approx(first)


def test_tip_adapter_search_counts_equal_a_direct_evaluation_of_every_grid_pair():
    # Unequal keys per class (padded slots), a duplicated class (exact zero-shot and cache ties:
    # argmax's first index decides), image chunks smaller than the set, a ratio step crossing
    # the exact exponentials.
    generator = torch.Generator().manual_seed(3)
    keys = F.normalize(torch.randn(11, DIM, generator=generator), dim=-1)
    key_labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3])
    text = F.normalize(torch.randn(5, DIM, generator=generator), dim=-1)
    text[4] = text[3]
    keys = torch.cat([keys, keys[9:]])  # class 4 is class 3 again: same text, same keys
    key_labels = torch.cat([key_labels, torch.tensor([4, 4])])
    features = torch.randn(40, DIM, generator=generator)
    labels = torch.randint(0, 5, (40,), generator=generator)
    selection = SelectionSet("fewshot_val", features, labels, torch.tensor(20.0), text)
    betas, alphas = search_grid(9, 30), search_grid(6, 7)
    counts = search_counts(
        selection, keys, key_labels, betas, alphas, exact_every=4, chunk_elements=13 * 5 * 7
    )
    values = F.one_hot(key_labels, 5).float()
    affinity = F.normalize(features, dim=-1) @ keys.T
    expected = torch.tensor([
        [int(((selection.zero_shot_logits() + alpha * torch.exp(-beta * (1 - affinity)) @ values)
              .argmax(-1) == labels).sum()) for alpha in alphas]
        for beta in betas
    ])  # fmt: skip
    assert torch.equal(counts, expected)


def test_tip_adapter_f_starts_from_the_training_free_cache():
    data = _data()
    tip, tip_f = TipAdapter(views=3, search=False, alpha=1.17), TipAdapterF(views=3, alpha=1.17)
    tip.fit_from_data(data)
    tip_f.fit_from_data(data)
    probe = torch.randn(5, DIM)
    assert torch.equal(
        tip_f.extra_logits(_inputs(probe, data.frozen_head())),
        tip.extra_logits(_inputs(probe, data.frozen_head())),
    )
    trainable = sum(p.numel() for p in tip_f.parameters() if p.requires_grad)
    assert trainable == len(data.labels) * DIM  # NK · d
    assert not any(p.requires_grad for p in tip.parameters())


# -------------------------------------------------------------------------- linear probes
def test_linear_probe_equals_scikit_learns_logistic_regression():
    linear_model = pytest.importorskip("sklearn.linear_model")
    features, labels, val, _val_labels, _ = _problem(views=1)
    x = features[0]
    for c in (0.05, 1.0):
        weight, bias = logistic_regression(x, labels, 4, c, tolerance=1e-10)
        reference = linear_model.LogisticRegression(C=c, max_iter=5000, tol=1e-10).fit(
            x.double().numpy(), labels.numpy()
        )
        # scikit-learn's multinomial coefficients are defined up to a shift of the intercepts'
        # mean; L2 makes W unique, and the intercepts are compared after centring.
        np.testing.assert_allclose(weight.numpy(), reference.coef_, atol=2e-4, rtol=1e-3)
        centred = reference.intercept_ - reference.intercept_.mean()
        np.testing.assert_allclose((bias - bias.mean()).numpy(), centred, atol=2e-4)
        predicted = (val @ weight.T + bias).argmax(-1).numpy()
        assert (predicted == reference.predict(val.double().numpy())).all()


def test_c_search_follows_the_lpclip_trace():
    # A scripted accuracy: best near C = 10**0.3; ties on the coarse grid keep the larger C.
    def score(c):
        return round(-abs(np.log10(c) - 0.3), 6) if c <= 1e2 else -10.0

    visited = []
    chosen = search_c(lambda c: visited.append(c) or score(c))
    assert len(visited) == 7 + 16
    assert visited[7:9] == pytest.approx([0.1, 10.0])  # the bracket [C*/10, 10·C*] of C* = 1
    # Hand trace of the bracket in log10: [-1, 1] → left ties? no: -1.3 < -0.7 → right, etc.
    left, right, trace = -1.0, 1.0, None
    for _ in range(8):
        middle = (left + right) / 2
        if score(10**left) < score(10**right):
            trace, left = right, middle
        else:
            trace, right = left, middle
    assert np.log10(chosen) == pytest.approx(trace)
    assert abs(np.log10(chosen) - 0.3) < 0.05


def test_lpp_initialisation_step_sizes_and_accumulated_alpha_gradient():
    data = _data(views=1)
    lpp = LPPlusPlus(iterations=20)
    features = F.normalize(data.features[0], dim=-1)
    text = data.frozen_head()
    weight, _, alpha, lr_weight, lr_alpha = lpp.initial_state(features, data.labels, text)
    x, t, y = features.double().numpy(), text.double().numpy(), data.labels.numpy()
    sums = np.stack([x[y == k].sum(0) for k in range(4)])
    np.testing.assert_allclose(weight.numpy(), sums, rtol=1e-6)
    own = np.mean([(x[y == k] @ t[k]).mean() for k in range(4)])
    np.testing.assert_allclose(alpha.numpy(), np.full(4, 250 * own), rtol=1e-5)
    n = len(x)
    assert lr_weight == pytest.approx(4 * n / np.linalg.eigvalsh(x.T @ x)[-1], rel=1e-6)
    assert lr_alpha == pytest.approx(n / (4 * ((x @ t.T) ** 2).sum(0).max()), rel=1e-5)

    # The α update at iteration 20 uses the gradient summed over iterations 1–20.
    torch.manual_seed(3)
    lpp.fit_from_data(data)
    torch.manual_seed(3)
    w, b, a, lr_w, lr_a = lpp.initial_state(features, data.labels, text)
    w.requires_grad_(True), b.requires_grad_(True)
    momentum = torch.optim.SGD([w, b], lr=lr_w, momentum=0.9)
    gradient_sum, trace = torch.zeros(4), []
    for iteration in range(1, 21):
        a_leaf = a.clone().requires_grad_(True)
        momentum.zero_grad()
        loss = F.cross_entropy(features @ w.T + b + a_leaf * (features @ text.T), data.labels)
        loss.backward()
        momentum.step()
        gradient_sum += a_leaf.grad
        if iteration % 10 == 0:
            a = a - lr_a * gradient_sum
            trace.append(a.clone())
    assert torch.allclose(lpp.alpha_trace[1], trace[1], atol=1e-5)
    window = LPPlusPlus(iterations=20, alpha_grad="per_window")
    torch.manual_seed(3)
    window.fit_from_data(data)
    assert torch.allclose(window.alpha_trace[0], lpp.alpha_trace[0])
    assert not torch.allclose(window.alpha_trace[1], lpp.alpha_trace[1])


# ------------------------------------------------------------------- every fitted method
@pytest.mark.parametrize("name", FITTED)
def test_every_fitted_method_counts_round_trips_and_selects_on_val(name):
    asked = []
    data = _data(asked=asked)
    torch.manual_seed(0)
    adapter = get_adapter_class(name)(
        **({"views": 3} if name in ("gda", "tip_adapter", "tip_adapter_f") else {})
    )
    adapter.fit_from_data(data)
    assert set(asked) <= {"fewshot_val"}  # the default selection never sees test
    stored = {
        "gda": 4 * (DIM + 1) + 1,  # head 513·C on ViT-B/16, and α
        "linear_probe": 4 * (DIM + 1) + 1,  # (d + 1)·C, and the chosen C
        "lpp": 4 * (DIM + 2),  # (d + 2)·C
        "tip_adapter": 24 * DIM + 24 * 4 + 2,  # keys NK·d, values NK·C, (α, β)
        "tip_adapter_f": 24 * DIM + 24 * 4 + 2,
    }[name]
    assert sum(t.numel() for t in adapter.state_dict().values() if torch.is_tensor(t)) == stored
    fresh = get_adapter_class(name)()
    assert not fresh.is_fitted
    fresh.load_state_dict(adapter.state_dict())
    probe = torch.randn(3, DIM)
    inputs = _inputs(probe, data.frozen_head())
    point = "head" if implements(adapter, "head") else "extra_logits"
    assert torch.equal(getattr(fresh, point)(inputs), getattr(adapter, point)(inputs))


@pytest.mark.parametrize("name", FITTED)
def test_selection_on_anchor_splits_needs_the_faithful_switch(name):
    with pytest.raises(PeftClipError, match="faithful: true"):
        get_adapter_class(name)(selection_split="test")
    adapter = get_adapter_class(name)(selection_split="test", faithful=True)
    assert adapter.selection_rule == "best_test"


def test_tip_f_max_test_needs_the_faithful_switch_and_keeps_the_best_test_epoch():
    with pytest.raises(PeftClipError, match="faithful: true"):
        TipAdapterF(tip_f_select="max_test")
    assert TipAdapterF().selection_rule == "best_val"
    asked = []
    data = _data(asked=asked)
    tip_f = TipAdapterF(
        views=3, alpha=1.17, search_scale=(7, 3), search_steps=(8, 4), faithful=True,
        tip_f_select="max_test",
    )  # fmt: skip
    assert tip_f.selection_rule == "best_test"
    tip_f.fit_from_data(data)
    test = data.selection("test")
    asked.clear()

    def score(alpha_beta):
        tip_f.alpha_beta = alpha_beta
        cache = tip_f.extra_logits(_inputs(test.features, test.text_features))
        return ((test.zero_shot_logits() + cache).argmax(-1) == test.labels).float().mean().item()

    good = tip_f.keys.detach().clone()
    tip_f.after_epoch(data.selection)  # epoch 1: the training-free keys
    with torch.no_grad():
        tip_f.keys.copy_(-good)  # epoch 2: keys that point away from their class
    tip_f.after_epoch(data.selection)
    tip_f.after_training(data.selection)
    assert torch.equal(tip_f.keys, good)  # the best test epoch's keys are back
    assert asked.count("test") == 3 and "fewshot_val" in asked  # 2 epochs, the final choice
    # The reported model scores max(best epoch at the initial (α, β), searched (α, β)) on test.
    chosen = tip_f.alpha_beta.clone()
    initial = torch.tensor([1.17, 1.0])
    at_initial = score(initial)
    searched = TipAdapter(views=3, search_scale=(7, 3), search_steps=(8, 4))
    searched.fit_from_data(data)
    at_searched = score(searched.alpha_beta)
    assert score(chosen) == max(at_initial, at_searched)
    assert torch.equal(chosen, initial if at_initial > at_searched else searched.alpha_beta)


def test_a_fitted_run_records_its_selection_rule_and_never_reads_test(tmp_path, monkeypatch):
    from peftclip.lightning.datamodule import PeftClipDataModule

    asked = []
    original = PeftClipDataModule.selection_split
    monkeypatch.setattr(
        PeftClipDataModule,
        "selection_split",
        lambda self, split: asked.append(split) or original(self, split),
    )
    db = tmp_path / "r.sqlite"
    common = ["--config", "recipes/zeroshot/tiny_random.yaml", "--model.adapters+=gda",
              "--model.adapters.init_args.views=2", "--data.shots", "2",
              "--trainer.enable_progress_bar", "false", "--results_db", str(db)]  # fmt: skip
    faithful = ["--model.adapters.init_args.selection_split=test",
                "--model.adapters.init_args.faithful=true"]  # fmt: skip
    for name, extra in (("clean", []), ("faithful", faithful)):
        root = ["--trainer.default_root_dir", str(tmp_path / name)]
        fit = PeftClipCLI(args=["fit", *common, *extra, *root,
                                "--trainer.enable_checkpointing", "true"])  # fmt: skip
        assert fit.trainer.global_step == 0
        (checkpoint,) = (tmp_path / name).rglob("*.ckpt")
        PeftClipCLI(args=["test", *common, *extra, *root, "--ckpt_path", str(checkpoint),
                          "--trainer.limit_test_batches", "1"])  # fmt: skip
    assert asked == ["fewshot_val", "test"]
    with ResultsStore(db) as store:
        rules = {record.selection_rule for record in store.records()}
    assert rules == {"best_val", "best_test"}


# --------------------------------------------------------------------------------- data
def test_tip_samplers_fill_short_classes_by_repetition():
    labels = [0] * 5 + [1] * 2
    rng, reference = random.Random(1), random.Random(1)
    chosen = sample_per_class(labels, 4, rng, repeat=True)
    expected = reference.sample(range(5), 4) + reference.choices([5, 6], k=4)
    assert chosen == expected
    assert sample_per_class(labels, 4, random.Random(1)) == [
        *random.Random(1).sample(range(5), 4),
        5,
        6,
    ]
