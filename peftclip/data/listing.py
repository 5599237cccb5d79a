"""Listing data folders: the root check, image files and class folders, with clear errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peftclip.errors import PeftClipError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class FolderLayout:
    """Where a dataset read from plain folders lives under the data root ``<DATA>``.

    Attributes:
        directory: The dataset's folder, ``<DATA>/<directory>``.
        image_folders: Candidate image folders inside it, in order of preference (the first
            that exists is read; ImageNet-Sketch accepts its archive's ``sketch/`` too).
    """

    directory: str
    image_folders: tuple[str, ...] = ()


def existing_root(root: str | None, what: str) -> Path:
    if not root:
        raise PeftClipError(f"this dataset needs a root: set data.root to {what}.")
    path = Path(root).expanduser()
    if not path.exists():
        raise PeftClipError(f"dataset root '{path}' does not exist. Set data.root to {what}.")
    return path


def folder_entries(folder: Path) -> list[Path]:
    """Every entry of ``folder`` (hidden ones too), or a clear error if it cannot be listed."""
    try:
        return list(folder.iterdir())
    except OSError as error:
        raise PeftClipError(
            f"cannot list '{folder}' ({error.strerror}). Check that the folder exists and is "
            "readable by this user."
        ) from error


def image_files(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder_entries(folder)
        if path.is_file()
        and not path.name.startswith(".")
        and path.suffix.lower() in IMAGE_SUFFIXES
    )


def class_folders(folder: Path) -> list[Path]:
    return sorted(
        path for path in folder_entries(folder) if path.is_dir() and not path.name.startswith(".")
    )
