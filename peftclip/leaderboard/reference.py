"""Published numbers to compare measured results with, read from ``reference_numbers.yaml``.

The file ships with the package; each number carries its source (a paper or an official
repository's README or issue) and a tag saying how it was obtained (docs/leaderboard.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

#: The protocols the file has numbers for, and the columns of each (few_shot: K, or ``any``).
PROTOCOL_COLUMNS = {
    "base2new": ("base", "new", "hm"),
    "dg": ("top1",),
    "xd": ("top1",),
    "continual": ("transfer", "avg", "last"),
}
#: The row key of a published average (base2new, few_shot) or target average (dg, xd).
AVERAGE, TARGET_AVERAGE = "average", "target_average"
#: The tags a number may carry (the file's header says what each means).
TAGS = ("README", "issue", "paper-recalled", "analysis", "notebook", "page")
#: The backbone of an entry that names none.
DEFAULT_BACKBONE = "ViT-B/16"
#: A few-shot column that matches every K (zero-shot CLIP does not depend on K).
ANY_SHOTS = "any"


@dataclass(frozen=True)
class PaperNumber:
    """One published number.

    Attributes:
        value: Top-1 accuracy (%) as printed.
        source: The paper or repository it comes from.
        tag: How it was obtained (one of ``TAGS``).
        paper_method: The method's name in the source, with its settings.
        note: Anything else the source material says about it, or None.
    """

    value: float
    source: str
    tag: str
    paper_method: str
    note: str | None = None

    def citation(self) -> str:
        """The source, the method as the source names it, the tag and the note, in one line."""
        note = f"; {self.note}" if self.note else ""
        return f"{self.paper_method}, from {self.source} [{self.tag}{note}]"


@dataclass(frozen=True)
class ReferenceNumbers:
    """The published numbers compared with, by (protocol, method, backbone, row, column).

    Attributes:
        numbers: ``(protocol, method, backbone, row, column) → PaperNumber``, where backbone is
            a name of ``backbones`` (``ViT-B/16``), row a dataset or ``average`` /
            ``target_average`` (continual: a stream), and column ``base`` / ``new`` / ``hm``,
            ``top1``, K or ``transfer`` / ``avg`` / ``last``.
        transcribed: Every number of the file, the ones not compared with included
            (``(protocol, paper_method, backbone, row, column) → PaperNumber``).
        backbones: ``backbone → the open_clip model names of that network``.
        averages: ``protocol → the datasets a published average is taken over`` (in the
            papers' order).
    """

    numbers: dict[tuple, PaperNumber]
    transcribed: dict[tuple, PaperNumber]
    backbones: dict[str, tuple[str, ...]]
    averages: dict[str, tuple[str, ...]]

    def backbone_of(self, model_name: str | None) -> str | None:
        """The backbone name (``ViT-B/16``) whose open_clip names include ``model_name``."""
        for backbone, names in self.backbones.items():
            if model_name in names:
                return backbone
        return None

    def lookup(
        self, protocol: str, method: str, model_name: str | None, row: str, column
    ) -> PaperNumber | None:
        """The published number for a measured one, or None where there is none.

        Args:
            protocol: few_shot, base2new, dg or xd.
            method: The measured method (``coop``, ``zeroshot``, ``maple+clip_svd``).
            model_name: The open_clip model name of the measured backbone.
            row: A dataset, or ``average`` / ``target_average`` (the caller checks that the
                measured average is over the datasets of ``averages``).
            column: ``base`` / ``new`` / ``hm``, ``top1``, or K (few_shot).
        """
        backbone = self.backbone_of(model_name)
        if backbone is None:
            return None
        key = (protocol, method, backbone, row)
        found = self.numbers.get((*key, column))
        if found is None and protocol == "few_shot":
            found = self.numbers.get((*key, ANY_SHOTS))
        return found


def _columns(protocol: str, value) -> dict:
    """``column → number`` of one transcribed value."""
    if protocol == "few_shot":
        if not isinstance(value, dict):
            raise ValueError(f"a few_shot value is {{K: accuracy}}; got {value!r}")
        return {k if k == ANY_SHOTS else int(k): float(v) for k, v in value.items()}
    columns = PROTOCOL_COLUMNS[protocol]
    values = value if isinstance(value, list) else [value]
    if len(values) != len(columns):
        raise ValueError(f"a {protocol} value has the columns {columns}; got {value!r}")
    # A null is a number the source does not print (e.g. zero-shot Avg of MTIL 5-shot).
    return {column: float(v) for column, v in zip(columns, values, strict=True) if v is not None}


def parse_reference_numbers(data: dict) -> ReferenceNumbers:
    """The numbers of a file in the format of ``reference_numbers.yaml``.

    Raises:
        ValueError: An entry names an unknown source, tag or backbone, a value has the wrong
            shape, or two compared numbers have the same key.
    """
    sources = {name: " ".join(text.split()) for name, text in data["sources"].items()}
    backbones = {name: tuple(names) for name, names in data["backbones"].items()}
    averages = {protocol: tuple(names) for protocol, names in data["averages"].items()}
    numbers: dict[tuple, PaperNumber] = {}
    transcribed: dict[tuple, PaperNumber] = {}
    for protocol in (*PROTOCOL_COLUMNS, "few_shot"):
        for entry in data.get(protocol, ()):
            backbone = entry.get("backbone", DEFAULT_BACKBONE)
            if backbone not in backbones:
                raise ValueError(f"{entry['paper_method']}: unknown backbone {backbone!r}")
            for row, given in entry["values"].items():
                own = given if isinstance(given, dict) and "value" in given else {"value": given}
                settings = {key: own.get(key, entry.get(key)) for key in ("source", "tag", "note")}
                if settings["source"] not in sources:
                    raise ValueError(
                        f"{entry['paper_method']}: unknown source {settings['source']!r}"
                    )
                if settings["tag"] not in TAGS:
                    raise ValueError(
                        f"{entry['paper_method']}: tag {settings['tag']!r} not in {TAGS}"
                    )
                for column, value in _columns(protocol, own["value"]).items():
                    number = PaperNumber(
                        value=value,
                        source=sources[settings["source"]],
                        tag=settings["tag"],
                        paper_method=entry["paper_method"],
                        note=settings["note"],
                    )
                    written = (protocol, entry["paper_method"], backbone, row, column)
                    if written in transcribed:
                        raise ValueError(f"{written} is transcribed twice")
                    transcribed[written] = number
                    if entry["method"] is None or not entry.get("compare", True):
                        continue
                    key = (protocol, entry["method"], backbone, row, column)
                    if key in numbers:
                        raise ValueError(
                            f"two compared numbers for {key}: {numbers[key].paper_method} and "
                            f"{entry['paper_method']}; mark one `compare: false`"
                        )
                    numbers[key] = number
    return ReferenceNumbers(numbers, transcribed, backbones, averages)


@cache
def reference_numbers() -> ReferenceNumbers:
    """The numbers shipped with peftclip (``peftclip/leaderboard/reference_numbers.yaml``)."""
    text = resources.files(__package__).joinpath("reference_numbers.yaml").read_text("utf-8")
    return parse_reference_numbers(yaml.safe_load(text))
