"""``peftclip leaderboard``: aggregation against hand-computed values, golden Markdown, the other
formats, plots, the shipped paper numbers and the one-line errors (no training anywhere).

The golden files are rewritten by ``PEFTCLIP_UPDATE_GOLDEN=1 pytest tests/test_leaderboard.py``;
review their diff before committing it.
"""

from __future__ import annotations

import base64
import csv
import io
import math
import os
import statistics
from html.parser import HTMLParser
from pathlib import Path

import pytest

from peftclip.cli import main
from peftclip.leaderboard import build_boards, harmonic_mean, leaderboard, reference_numbers
from peftclip.leaderboard.reference import parse_reference_numbers
from tests.leaderboard_fixture import fixture_records, record, write_fixture

GOLDEN = Path(__file__).parent / "golden"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COOP11 = reference_numbers().averages["base2new"]


@pytest.fixture
def fixture_db(tmp_path, monkeypatch):
    """The fixture database as ``fixture.sqlite`` in the current folder (so the rendered text
    names it the same way on every machine)."""
    monkeypatch.chdir(tmp_path)
    return write_fixture(Path("fixture.sqlite"))


def _board(boards, method):
    (found,) = [board for board in boards if board.method == method]
    return found


# Aggregation, by hand


def test_base_to_new_means_population_std_and_hm_of_means():
    coop = _board(build_boards(fixture_records(), "base2new", reference_numbers()), "coop")
    caltech = coop.row("caltech101")
    # Base 98 (the newer of two records; the older says 90), 96, 94; New 90, 86, 91.
    assert caltech.stats["base"].per_seed == {1: 98, 2: 96, 3: 94}
    assert caltech.stats["base"].mean == pytest.approx(96.0)
    # Population std: sqrt((2² + 0 + 2²) / 3) = 1.632993 (the sample std would be 2.0).
    assert caltech.stats["base"].std == pytest.approx(math.sqrt(8 / 3))
    assert caltech.stats["new"].std == pytest.approx(math.sqrt((1 + 9 + 4) / 3))  # 2.160247
    # HM of the seed means, 2·96·89 / 185 = 92.367568, not the mean of the seeds' HMs (92.343579).
    assert caltech.value("hm") == pytest.approx(2 * 96 * 89 / 185)
    mean_of_hms = statistics.fmean(harmonic_mean(b, n) for b, n in [(98, 90), (96, 86), (94, 91)])
    assert mean_of_hms == pytest.approx(92.343579, abs=1e-6)
    assert abs(caltech.value("hm") - mean_of_hms) > 0.02

    dtd = coop.row("dtd")
    assert dtd.stats["new"].mean == pytest.approx(140 / 3)  # (50 + 52 + 38) / 3
    assert dtd.value("hm") == pytest.approx(2 * 79 * (140 / 3) / (79 + 140 / 3))  # 58.673740

    average = coop.row("average")
    assert average.averaged == ("caltech101", "dtd")
    # B̄_avg = (96 + 79) / 2, N̄_avg = (89 + 46.667) / 2; HM(B̄_avg, N̄_avg) = 76.421674, not the
    # mean of the datasets' HMs (75.520654).
    assert average.stats["base"].mean == pytest.approx(87.5)
    assert average.stats["new"].mean == pytest.approx((89 + 140 / 3) / 2)
    assert average.value("hm") == pytest.approx(harmonic_mean(87.5, (89 + 140 / 3) / 2))
    assert average.value("hm") == pytest.approx(76.421674, abs=1e-6)
    datasets_hm = (caltech.value("hm") + dtd.value("hm")) / 2
    assert datasets_hm == pytest.approx(75.520654, abs=1e-6)
    # Its std is over seeds of the per-seed average: Base 89, 87, 86.5 → 1.080123.
    assert average.stats["base"].per_seed == {1: 89, 2: 87, 3: 86.5}
    assert average.stats["base"].std == pytest.approx(1.080123, abs=1e-6)
    assert average.stats["new"].std == pytest.approx(2.392117, abs=1e-6)


def test_a_seed_more_than_5_points_from_the_median_is_flagged():
    coop = _board(build_boards(fixture_records(), "base2new", reference_numbers()), "coop")
    flagged = {
        (row.label, column): stat.flagged
        for row in coop.rows
        for column, stat in row.stats.items()
        if stat.flagged
    }
    # dtd New: 50, 52, 38 → median 50, seed 3 is 12 points away; caltech101's seeds are within 4.
    assert flagged == {("dtd", "new"): (3,)}


def test_newest_record_of_an_evaluation_wins_whatever_order_it_was_stored_in():
    for records in (fixture_records(), fixture_records()[::-1]):
        coop = _board(build_boards(records, "base2new", reference_numbers()), "coop")
        assert coop.row("caltech101").stats["base"].per_seed[1] == 98
        (note,) = coop.notes
        assert note.startswith("caltech101 Base seed 1: 2 records of the same cell; the newest")


def test_val_splits_and_other_protocols_are_left_out():
    records = fixture_records()
    boards = build_boards(records, "base2new", reference_numbers())
    assert [board.method for board in boards] == ["zeroshot", "coop"]
    assert {split for board in boards for split in board.columns} == {"base", "new", "hm"}
    # The val record (10 %) and the plain run (12 %) would change caltech101's numbers.
    assert _board(boards, "coop").row("caltech101").stats["base"].per_seed == {1: 98, 2: 96, 3: 94}


def test_few_shot_average_per_k_and_dg_target_average():
    few_shot = build_boards(fixture_records(), "few_shot", reference_numbers())
    coop = _board(few_shot, "coop")
    assert coop.columns == (1, 4, 16)
    average = coop.row("average")
    # K = 16: caltech101 95, 94 and dtd 68, 65 → means 94.5, 66.5 → 80.5; per seed 81.5, 79.5.
    assert average.stats[16].mean == pytest.approx(80.5)
    assert average.stats[16].per_seed == {1: 81.5, 2: 79.5}
    assert average.stats[16].std == pytest.approx(1.0)
    assert _board(few_shot, "zeroshot").columns == (0,)  # zero-shot: no shots

    (dg,) = build_boards(fixture_records(), "dg", reference_numbers())
    assert [row.label for row in dg.rows] == [
        "imagenet",
        "imagenetv2",
        "imagenet_sketch",
        "imagenet_a",
        "imagenet_r",
        "target_average",
    ]
    assert dg.rows[0].kind == "source"
    target = dg.row("target_average")
    assert target.averaged == ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
    assert target.stats["top1"].mean == pytest.approx((64.5 + 47.5 + 49.5 + 75.5) / 4)  # 59.25
    # The published target average is over the same four targets: compared with.
    assert target.paper["top1"].value == 59.28


def test_average_with_uneven_seeds_has_no_std_and_says_why():
    records = [r for r in fixture_records() if not (r.dataset == "dtd" and r.seed == 3)]
    coop = _board(build_boards(records, "base2new", reference_numbers()), "coop")
    average = coop.row("average")
    assert average.stats["base"].mean == pytest.approx((96 + 79) / 2)
    assert average.stats["base"].std is None
    assert any("different seeds" in note for note in coop.notes)


def _eleven_datasets(model_name="ViT-B-16-quickgelu", datasets=COOP11):
    return [
        record("base2new", "coop", dataset, 1, top1, split=split, model_name=model_name)
        for dataset in datasets
        for split, top1 in (("base", 80), ("new", 70))
    ]


def test_paper_average_only_over_the_same_datasets_and_backbone():
    (board,) = build_boards(_eleven_datasets(), "base2new", reference_numbers())
    average = board.row("average")
    assert {c: n.value for c, n in average.paper.items()} == {
        "base": 82.69,
        "new": 63.22,
        "hm": 71.66,
    }
    assert "CLIP-SVD" in average.paper["base"].source
    assert board.row("dtd").paper["new"].value == 41.18

    (ten,) = build_boards(_eleven_datasets(datasets=COOP11[:10]), "base2new", reference_numbers())
    assert ten.row("average").paper == {}  # 10 datasets: not the published average
    assert ten.row("dtd").paper["new"].value == 41.18

    for other in ("RN50", "peftclip-world-tiny"):  # other backbones: no ViT-B/16 numbers
        (board,) = build_boards(_eleven_datasets(other), "base2new", reference_numbers())
        assert all(not row.paper for row in board.rows)


def test_few_shot_paper_average_per_k_and_zero_shot_for_every_k():
    records = [
        record("few_shot", method, dataset, 1, 70, shots=shots)
        for dataset in COOP11
        for method, shots in (("coop", 4), ("coop", 16), ("zeroshot", None))
    ]
    zeroshot, coop = build_boards(records, "few_shot", reference_numbers())
    assert {k: n.value for k, n in coop.row("average").paper.items()} == {4: 73.59, 16: 79.01}
    assert zeroshot.row("average").paper[0].value == 65.36  # printed once, holds for every K
    assert all(not row.paper for row in coop.rows if row.kind == "dataset")


# The shipped paper numbers


def test_reference_numbers_are_internally_consistent():
    """Catches a mistyped number: every HM recomputes from its B and N, every published
    average from its datasets (within the papers' rounding, 0.01)."""
    numbers = reference_numbers().transcribed
    triples = {}
    for (protocol, method, backbone, row, column), number in numbers.items():
        # The biomedical (BiomedCLIP) averages print an HM that is not HM(B̄, N̄): left out.
        if protocol == "base2new" and backbone == "ViT-B/16":
            triples.setdefault((method, backbone, row), {})[column] = number.value
    assert len(triples) == 81  # 6 methods × (11 datasets + average), 9 averages
    for key, bnh in triples.items():
        assert bnh["hm"] == pytest.approx(harmonic_mean(bnh["base"], bnh["new"]), abs=0.01), key
    complete = {k[0] for k in triples if k[2] == "ucf101"}
    assert len(complete) == 6  # CLIP, CoOp, CoCoOp, KgCoOp, MaPLe, PromptSRC
    for method in complete:
        for column in ("base", "new"):
            mean = statistics.fmean(triples[(method, "ViT-B/16", d)][column] for d in COOP11)
            assert triples[(method, "ViT-B/16", "average")][column] == pytest.approx(
                mean, abs=0.01
            ), (method, column)
    averages = reference_numbers().averages
    for protocol in ("dg", "xd"):
        methods = {k[1] for k in numbers if k[0] == protocol and k[3] == "target_average"}
        assert len(methods) == (6 if protocol == "dg" else 5)
        for method in methods:
            targets = [
                numbers[(protocol, method, "ViT-B/16", d, "top1")].value for d in averages[protocol]
            ]
            average = numbers[(protocol, method, "ViT-B/16", "target_average", "top1")].value
            assert average == pytest.approx(statistics.fmean(targets), abs=0.01), method


def test_reference_numbers_name_real_methods_and_datasets_and_keep_their_sources():
    from peftclip.adapters import list_adapters
    from peftclip.continual.registry import list_strategies
    from peftclip.continual.streams import list_streams
    from peftclip.data import list_datasets

    references = reference_numbers()
    rows = {"average", "target_average", *list_datasets()}
    strategies = {"zeroshot", *list_strategies()}
    for protocol, method, backbone, row, _ in references.numbers:
        if protocol == "continual":  # a strategy on a stream
            assert method in strategies and row in list_streams(), (method, row)
        else:
            assert method == "zeroshot" or set(method.split("+")) <= set(list_adapters()), method
            assert row in rows
        assert backbone in references.backbones
    maple_eurosat = references.lookup("base2new", "maple", "ViT-B-16", "eurosat", "hm")
    assert (maple_eurosat.value, maple_eurosat.tag) == (82.35, "issue")
    assert "issue 28" in maple_eurosat.source
    # Zero-shot CLIP's few-shot average holds for every K; RN50 numbers only for RN50.
    assert references.lookup("few_shot", "zeroshot", "ViT-B-16", "average", 8).value == 65.36
    assert references.lookup("few_shot", "coop", "RN50-quickgelu", "imagenet", 16).value == 62.95
    assert references.lookup("few_shot", "coop", "ViT-B-16", "imagenet", 16) is None
    # The second CoOp few-shot row (PromptSRC paper) is transcribed but not compared with.
    assert references.lookup("few_shot", "coop", "ViT-B-16", "average", 1).value == 68.09
    promptsrc_coop = ("few_shot", "CoOp as re-run in the PromptSRC paper", "ViT-B/16", "average", 1)
    assert references.transcribed[promptsrc_coop].value == 67.56


def test_two_compared_numbers_for_one_cell_are_refused():
    entry = {
        "method": "coop",
        "paper_method": "CoOp",
        "source": "s",
        "tag": "README",
        "values": {"dtd": 50.0},
    }
    data = {
        "sources": {"s": "a paper"},
        "backbones": {"ViT-B/16": ["ViT-B-16"]},
        "averages": {},
        "base2new": [],
        "few_shot": [],
        "xd": [],
        "dg": [entry, {**entry, "paper_method": "x"}],
    }
    with pytest.raises(ValueError, match="two compared numbers"):
        parse_reference_numbers(data)
    data["dg"][1]["compare"] = False
    assert len(parse_reference_numbers(data).numbers) == 1
    data["dg"][1]["source"] = "unknown"
    with pytest.raises(ValueError, match="unknown source"):
        parse_reference_numbers(data)


# Rendering


@pytest.mark.parametrize(
    ("name", "protocol", "options"),
    [
        ("base2new", "base2new", {}),
        ("base2new_per_seed", "base2new", {"per_seed": True, "methods": ["coop"]}),
        ("few_shot", "few_shot", {}),
        ("dg", "dg", {}),
    ],
)
def test_markdown_matches_the_golden_file(fixture_db, name, protocol, options):
    text, written = leaderboard(protocol, db=fixture_db, **options)
    assert written == []
    golden = GOLDEN / f"leaderboard_{name}.md"
    if os.environ.get("PEFTCLIP_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_markdown_keeps_paper_numbers_in_their_own_columns(fixture_db):
    text, _ = leaderboard("base2new", db=fixture_db, methods=["coop"])
    header, *rows = [line for line in text.splitlines() if line.startswith("| ")][:4]
    names = [cell.strip() for cell in header.strip("|").split("|")]
    assert names == [
        "dataset",
        "Base",
        "New",
        "HM",
        "paper Base",
        "paper New",
        "paper HM",
        "Δ Base",
        "Δ New",
        "Δ HM",
    ]
    dtd = [cell.strip() for cell in rows[1].strip("|").split("|")]
    # measured (with its outlier mark) | paper | measured − paper, from the unrounded mean.
    assert dtd[:4] == ["dtd", "79.00 ± 0.82", "46.67 ± 6.18†", "58.67"]
    assert dtd[4:7] == ["79.44", "41.18", "54.24"]
    assert dtd[8] == f"{140 / 3 - 41.18:+.2f}"
    assert "profile modern" in text


def _html_sources(page: str) -> list[str]:
    found = []

    class Sources(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(value for name, value in attrs if name in ("src", "href"))

    Sources().feed(page)
    return found


def test_html_is_one_page_with_embedded_plots_and_no_urls(fixture_db, tmp_path):
    out = tmp_path / "board.html"
    assert (
        main(
            [
                "leaderboard",
                "--protocol",
                "few_shot",
                "--db",
                str(fixture_db),
                "--format",
                "html",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("fixture")] == [
        "board.html"
    ]
    page = out.read_text()
    sources = _html_sources(page)
    assert len(sources) == 3  # caltech101, dtd and the average
    for source in sources:
        prefix = "data:image/png;base64,"
        assert source.startswith(prefix)
        assert base64.b64decode(source[len(prefix) :]).startswith(PNG_SIGNATURE)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert page.count("<table>") == 2 and "94.50 ± 0.50" in page


@pytest.mark.parametrize(
    ("protocol", "files"),
    [
        ("few_shot", ["few_shot_average.png", "few_shot_caltech101.png", "few_shot_dtd.png"]),
        ("base2new", ["base2new.png"]),
        ("dg", ["dg.png"]),
    ],
)
def test_plots_are_written_as_png(fixture_db, tmp_path, capsys, protocol, files):
    plots = tmp_path / "plots"
    assert (
        main(
            ["leaderboard", "--protocol", protocol, "--db", str(fixture_db), "--plots", str(plots)]
        )
        == 0
    )
    assert sorted(p.name for p in plots.iterdir()) == files
    for name in files:
        assert (plots / name).read_bytes().startswith(PNG_SIGNATURE)
    captured = capsys.readouterr()
    assert captured.out.startswith("# Leaderboard")  # the table on stdout, the plots on stderr
    assert captured.err.startswith(f"wrote {len(files)} plot")


def test_csv_has_one_line_per_number_with_seeds_and_paper_apart(fixture_db, capsys):
    assert (
        main(
            [
                "leaderboard",
                "--protocol",
                "base2new",
                "--db",
                str(fixture_db),
                "--format",
                "csv",
                "--per-seed",
                "--methods",
                "coop",
                "zeroshot",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 2 * 3 * 3  # 2 methods × (2 datasets + average) × Base, New, HM
    dtd_new = next(
        r for r in rows if (r["method"], r["row"], r["column"]) == ("coop", "dtd", "New")
    )
    assert dtd_new["mean"] == "46.67" and dtd_new["std"] == "6.18"
    assert (dtd_new["seed_1"], dtd_new["seed_2"], dtd_new["seed_3"]) == ("50.00", "52.00", "38.00")
    assert dtd_new["outlier_seeds"] == "3" and dtd_new["paper"] == "41.18"
    assert dtd_new["profile"] == "modern"


def test_latex_escapes_and_groups_columns(fixture_db):
    text, _ = leaderboard("dg", db=fixture_db, format="latex")
    assert r"\begin{tabular}{lrrr}" in text and r"\multicolumn{1}{c}{paper}" in text
    assert r"imagenet\_sketch & 47.50 $\pm$ 0.50 & 47.99 & -0.49 \\" in text
    body = text.split(r"\begin{table}", 1)[1]
    assert "±" not in body and "_s" not in body.replace(r"\_s", "")


# Bad input


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (
            ["--protocol", "fewshot"],
            "unknown protocol 'fewshot'; a leaderboard is made for few_shot, base2new, dg, xd, "
            "continual.",
        ),
        (["--protocol", "base2new", "--methods", "coop", "mapel"], "unknown method 'mapel'"),
        (["--protocol", "base2new", "--datasets", "dtdd"], "unknown dataset 'dtdd'"),
        (["--protocol", "base2new", "--format", "pdf"], "unknown format 'pdf'"),
        (
            ["--protocol", "base2new", "--methods", "maple"],
            "no base2new records in fixture.sqlite match --methods maple; it holds base2new: "
            "methods coop, zeroshot; datasets caltech101, dtd |",
        ),
        (["--protocol", "xd"], "no xd records in fixture.sqlite; it holds base2new:"),
    ],
)
def test_bad_input_is_one_line(fixture_db, capsys, arguments, expected):
    out = Path("board.md")
    assert main(["leaderboard", "--db", str(fixture_db), "--output", str(out), *arguments]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith(f"peftclip: error: {expected}")
    assert captured.out == "" and not out.exists()
    if "unknown method" in expected:
        assert "coop, gda, ivlp, kgcoop" in line  # the valid ones are listed


def test_missing_and_empty_databases_are_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.sqlite"
    assert main(["leaderboard", "--protocol", "dg", "--db", str(missing)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"peftclip: error: no results database at {missing}: nothing was recorded there; give "
        "the database with --db PATH or $PEFTCLIP_RESULTS_DB."
    )
    assert not missing.exists()
    empty = write_fixture(tmp_path / "empty.sqlite", records=[])
    assert main(["leaderboard", "--protocol", "dg", "--db", str(empty)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"peftclip: error: no records in {empty} (the database is empty)")
