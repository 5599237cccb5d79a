"""Every recipe and docs page that ``peftclip --help``, README.md or peftclip's own messages and
docstrings name exists in the repository."""

import re
from pathlib import Path

from peftclip.cli import overview

REPO = Path(__file__).parents[1]
#: ``recipes/.../NAME.yaml`` and ``docs/.../NAME.md`` (an anchor ``#...`` after it is not part).
NAMED_PATH = re.compile(r"(?<![\w/.-])(?:recipes|docs)/[\w./-]+?\.(?:yaml|md)\b")


def missing_paths(text: str) -> list[str]:
    """The repository paths named in ``text`` that do not exist."""
    return sorted({path for path in NAMED_PATH.findall(text) if not (REPO / path).is_file()})


def test_the_check_finds_a_missing_path():
    text = "peftclip test --config recipes/zeroshot/imagenet.yaml (docs/datasets.md#transforms)"
    assert missing_paths(text) == ["recipes/zeroshot/imagenet.yaml"]
    assert NAMED_PATH.findall(text) == ["recipes/zeroshot/imagenet.yaml", "docs/datasets.md"]


def test_help_names_only_existing_paths():
    help_text = overview()
    assert NAMED_PATH.findall(help_text)  # it does name recipes
    assert missing_paths(help_text) == []


def test_readme_names_only_existing_paths():
    readme = (REPO / "README.md").read_text()
    assert len(NAMED_PATH.findall(readme)) > 10
    assert missing_paths(readme) == []


def test_messages_and_docstrings_name_only_existing_paths():
    missing = {
        str(source.relative_to(REPO)): found
        for source in sorted((REPO / "peftclip").rglob("*.py"))
        if (found := missing_paths(source.read_text()))
    }
    assert missing == {}
