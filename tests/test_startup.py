"""``peftclip --help`` and ``peftclip list`` answer without importing torch (lazy imports)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "lightning", "open_clip", "torchvision", "peft", "matplotlib", "sklearn")
ROOT = Path(__file__).resolve().parents[1]
# Runs a command in a fresh interpreter, then prints the heavy packages it imported.
PROBE = """
import json, sys
from peftclip.cli import main
main(sys.argv[1:])
heavy = sorted(name for name in {heavy!r} if name in sys.modules)
print("IMPORTED=" + json.dumps(heavy))
"""


def _run(args: list[str], cache_home: Path) -> tuple[list[str], list[str]]:
    """The printed lines and the heavy packages imported by ``peftclip ARGS`` in a new process."""
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(cache_home),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    *lines, imported = done.stdout.splitlines()
    return lines, json.loads(imported.removeprefix("IMPORTED="))


def test_help_imports_no_heavy_package(tmp_path):
    lines, imported = _run(["--help"], tmp_path)
    assert any(line.strip().startswith("fit") for line in lines)
    assert imported == []


def _live_names(kind: str) -> list[str]:
    """What the registries hold in a fresh process (this one holds the tests' toy entries)."""
    probe = (
        "import json; from peftclip.names_index import _list_live; "
        f"print(json.dumps(_list_live({kind!r})))"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("kind", ["adapters", "datasets", "models"])
def test_list_answers_from_the_names_index_without_torch(tmp_path, kind):
    first, _ = _run(["list", kind], tmp_path)  # builds the index: imports the registries
    second, imported = _run(["list", kind], tmp_path)
    assert first == second == _live_names(kind)
    assert imported == []


def test_a_stale_or_torn_index_is_rebuilt(tmp_path, monkeypatch):
    from peftclip import names_index

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    index = names_index.names_index_dir()
    current = index / f"{names_index._sources_fingerprint()}.json"
    index.mkdir(parents=True)
    (index / f"{'0' * 32}.json").write_text('{"adapters": ["stale"]}')
    current.write_text('{"adapters": ["torn"')
    lines, _ = _run(["list", "adapters"], tmp_path)
    assert lines == _live_names("adapters")
    assert list(index.iterdir()) == [current]
    assert json.loads(current.read_text())["adapters"] == lines
