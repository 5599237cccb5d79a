"""``peftclip leaderboard --protocol continual`` from a hand-made results database."""

import statistics
import subprocess
import sys

import pytest

from peftclip.continual.metrics import continual_metrics
from peftclip.continual.streams import XTAIL_ORDER
from peftclip.leaderboard import leaderboard
from peftclip.leaderboard.continual import build_continual_boards
from peftclip.leaderboard.reference import reference_numbers
from peftclip.results import ResultRecord, ResultsStore
from tests.leaderboard_fixture import VIT_B16, per_class

WORLD = {"model_name": "peftclip-world-tiny", "pretrained": "world"}


def xtail_matrix(seed: int) -> list[list[int]]:
    """Rows 0…10 (0: zero-shot) over X-TAIL's 10 datasets: forgetting after learning, a
    bump on learning, different per seed; integers, so top-1 is exact with 100 images."""
    rows = []
    for t in range(11):
        row = []
        for d in range(10):
            zero = 20 + 4 * d
            if t == 0 or d >= t:  # not learned yet
                row.append(zero - (t % 3) + seed)
            else:  # learned at task d + 1, then forgotten a little each task
                row.append(zero + 30 - 2 * (t - d - 1) + seed)
        rows.append(row)
    return rows


#: The "tiny" stream: 2 learned datasets and one held out; seed 7 complete, seed 8 killed.
TINY = {0: [50, 60, 80], 1: [90, 55, 70], 2: [70, 95, 64]}


def records(stream, method, seed, rows, datasets, held_out=(), backbone=VIT_B16, run=None):
    cell = {
        "protocol": "continual",
        "dataset": stream,
        "methods": [{"name": method, "config": {}}],
        "backbone": backbone,
        "profile": "32-true",
        "shots": 16,
        "seed": seed,
        "recipe": "r.yaml",
        "stream": {"name": stream, "held_out": [{"dataset": d} for d in held_out]},
    }
    out = []
    for t, values in rows.items() if isinstance(rows, dict) else enumerate(rows):
        for index, (name, top1) in enumerate(zip((*datasets, *held_out), values, strict=True)):
            metrics = {
                "correct": per_class(top1),
                "total": [25] * 4,
                "row": t,
                "column": index if index < len(datasets) else None,
                "held_out": index >= len(datasets),
            }
            out.append(
                ResultRecord(
                    run_id=run or f"{stream}-{method}-{seed}",
                    evaluation=name,
                    split=f"after_task_{t}",
                    metrics=metrics,
                    trainable_params=10,
                    wall_time_s=1.0,
                    cell=cell,
                    recipe="strategy: x\n",
                    git_commit=None,
                )
            )
    return out


@pytest.fixture
def continual_db(tmp_path):
    path = tmp_path / "continual.sqlite"
    stored = []
    for seed in (1, 2):
        stored += records("xtail", "codyra", seed, xtail_matrix(seed), XTAIL_ORDER)
    tiny = ("world_sizes", "world_counts")
    stored += records("tiny", "finetune", 7, TINY, tiny, ("world_colors",), WORLD)
    stored += records("tiny", "finetune", 8, {0: TINY[0]}, tiny, ("world_colors",), WORLD)
    with ResultsStore(path) as store:
        store.add_all(stored)
    return path


def _boards(db):
    with ResultsStore(db, readonly=True) as store:
        return build_continual_boards(store.records(), reference_numbers())


def test_metrics_from_stored_records_equal_the_runs_metrics(continual_db):
    boards = {(b.stream, b.method): b for b in _boards(continual_db)}
    codyra = boards[("xtail", "codyra")]
    assert codyra.datasets == XTAIL_ORDER and codyra.seeds == (1, 2)
    expected = {seed: continual_metrics(xtail_matrix(seed)[1:]) for seed in (1, 2)}
    for run in codyra.runs:
        assert run.metrics == expected[run.seed]
    for column in ("transfer", "avg", "last", "bwt"):
        values = [getattr(expected[s], column) for s in (1, 2)]
        assert codyra.stats[column].mean == pytest.approx(statistics.fmean(values))
        assert codyra.stats[column].std == pytest.approx(statistics.pstdev(values))
    # Seeds 1 and 2 differ by 1 point everywhere: std 0.5.
    assert codyra.stats["last"].std == pytest.approx(0.5)
    zero = boards[("xtail", "zeroshot")]
    zero_row = xtail_matrix(1)[0]
    assert zero.runs[0].metrics == continual_metrics([zero_row] * 10)
    assert zero.stats["transfer"].per_seed[1] == pytest.approx(statistics.fmean(zero_row[1:]))


def test_held_out_means_and_an_incomplete_seed(continual_db):
    finetune = next(
        b for b in _boards(continual_db) if (b.stream, b.method) == ("tiny", "finetune")
    )
    assert finetune.seeds == (7,) and finetune.held_out == ("world_colors",)
    assert finetune.stats["held_out_zero_shot"].mean == 80
    assert finetune.stats["held_out_last"].mean == 64
    assert any("seed 8 left out: 1 of 3 evaluation rows" in note for note in finetune.notes)
    # Transfer = A[1][1] = 55; Avg = mean(mean(90, 70), mean(55, 95)) = 77.5; Last = 82.5.
    assert (finetune.stats["transfer"].mean, finetune.stats["avg"].mean) == (55, 77.5)
    assert (finetune.stats["last"].mean, finetune.stats["bwt"].mean) == (82.5, -20)


def _table(text, title_start):
    section = text.split(f"## {title_start}", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_the_table_rows_and_the_paper_numbers_in_their_own_columns(continual_db):
    text, written = leaderboard("continual", db=continual_db)
    assert written == []
    header, *rows = _table(text, "xtail")
    assert header == [
        "strategy", "Transfer", "Avg", "Last", "BWT", "paper Transfer", "paper Avg",
        "paper Last", "Δ Transfer", "Δ Avg", "Δ Last",
    ]  # fmt: skip
    by_method = {row[0].strip("*").split(" · ")[0]: row for row in rows}
    metrics = [continual_metrics(xtail_matrix(s)[1:]) for s in (1, 2)]
    mean = {
        c: statistics.fmean(getattr(m, c) for m in metrics) for c in ("transfer", "avg", "last")
    }
    codyra = by_method["codyra"]
    assert codyra[0] == "codyra · 32-true · ViT-B-16-quickgelu (openai) · seeds 1, 2"
    assert codyra[1:4] == [f"{mean[c]:.1f} ± 0.5" for c in ("transfer", "avg", "last")]
    assert codyra[5:8] == ["63.2", "71.3", "79.2"]  # CoDyRA's X-TAIL row, page
    assert codyra[8] == f"{mean['transfer'] - 63.2:+.1f}"
    assert by_method["zeroshot"][5:] == ["–"] * 6  # no published zero-shot X-TAIL row
    assert "paper numbers of codyra: CoDyRA, from CoDyRA project page" in text
    tiny_header, tiny_zero, tiny_row = _table(text, "tiny")[:3]  # zero-shot first
    assert tiny_header[-2:] == ["held-out zero-shot", "held-out last"]
    assert "paper Transfer" not in tiny_header and tiny_row[-2:] == ["80.0", "64.0"]
    assert tiny_zero[-2:] == ["80.0", "80.0"]


def test_a_custom_stream_named_like_a_paper_stream_is_not_compared(tmp_path):
    db = tmp_path / "custom.sqlite"
    with ResultsStore(db) as store:
        store.add_all(
            records("xtail", "codyra", 1, [r[:3] for r in xtail_matrix(1)[:4]], XTAIL_ORDER[:3])
        )
    (board,) = [b for b in _boards(db) if b.method == "codyra"]
    assert board.paper == {} and "not compared with the paper" in board.notes[-1]


def test_plots_are_written_as_png(continual_db, tmp_path, capsys):
    from peftclip.cli import main

    plots = tmp_path / "plots"
    args = ["leaderboard", "--protocol", "continual", "--db", str(continual_db)]
    assert main([*args, "--plots", str(plots)]) == 0
    names = sorted(p.name for p in plots.iterdir())
    assert names == [
        "continual_tiny_finetune_curves.png", "continual_tiny_finetune_matrix.png",
        "continual_xtail_codyra_curves.png", "continual_xtail_codyra_matrix.png",
    ]  # fmt: skip
    for path in plots.iterdir():
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    assert "wrote 4 plots" in capsys.readouterr().err


def test_csv_and_html(continual_db):
    text, _ = leaderboard("continual", db=continual_db, format="csv", methods=["codyra"])
    lines = text.splitlines()
    assert lines[0].startswith("protocol,stream,method,profile")
    # The zero-shot rows come with the strategy: they are its runs' row 0.
    assert {line.split(",")[2] for line in lines[1:]} == {"zeroshot", "codyra"}
    transfer = next(line for line in lines if ",codyra," in line and ",Transfer," in line)
    assert ",1 2," in transfer and ",63.2," in transfer and "CoDyRA project page" in transfer
    page, _ = leaderboard("continual", db=continual_db, format="html")
    assert page.count("data:image/png;base64,") == 4 and "http" not in page.split("<body>")[1]


def test_the_continual_leaderboard_does_not_import_torch():
    code = (
        "import sys; import peftclip.leaderboard.command, peftclip.leaderboard.continual; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
