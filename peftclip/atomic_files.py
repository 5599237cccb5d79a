"""Writing files so that a crash never leaves a torn file under the final name."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it over ``path`` when the block succeeds.

    The rename is atomic (same folder, ``os.replace``), so readers see either the previous file
    or the complete new one, never a half-written file — also after ``kill -9``. The data is
    flushed to disk before the rename. On an error the temporary file is removed and the
    previous file stays as it was.

    Example::

        with atomic_path("runs/last.ckpt") as partial:
            torch.save(state, partial)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield partial
        with open(partial, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str) -> None:
    """Writes ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as partial:
        partial.write_text(text)
