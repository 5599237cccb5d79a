"""Reading checkpoint files without running code from them, with one-line errors.

Researchers load adapters that others released, and unpickling a file in full can call any
function it names. peftclip therefore reads every checkpoint with ``torch.load(...,
weights_only=True)``: tensors, containers and plain values only. A peftclip checkpoint (what
``peftclip fit`` and ``peftclip import-checkpoint`` write) needs nothing else, so there is no
allowlist to keep.

An adapter *release* (``peftclip export --format release``, docs/checkpoints.md) needs no
pickle at all: a folder with the adapter tensors as ``adapters.safetensors`` and a JSON sidecar
``adapters.json`` holding the checkpoint's ``peftclip`` section (backbone identity, adapters),
its hyper-parameters, the recipe's adapter settings and the SHA-256 of the tensors file.
:func:`read_checkpoint` reads both kinds into the same dict, so every loader takes either.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from peftclip.errors import PeftClipError

#: What every ``--ckpt_path`` error suggests instead.
CHECKPOINT_HINT = (
    "give a .ckpt written by `peftclip fit` or `peftclip import-checkpoint`, or a release folder "
    "of `peftclip export --format release`"
)
#: The format tag of a release's sidecar; a reader refuses any other.
RELEASE_FORMAT = "peftclip-release/1"
#: The two files of a release folder.
RELEASE_TENSORS, RELEASE_SIDECAR = "adapters.safetensors", "adapters.json"
#: What ``torch.load`` raises on a truncated or foreign file: its zip reader (``OSError`` carries
#: only an errno on a cut file), the unpickler, or a refused global under ``weights_only``.
TORCH_READ_ERRORS = (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError)


def missing_file(path: str | Path, what: str = "checkpoint") -> PeftClipError:
    """The error for a checkpoint path that names no file (one wording for every command)."""
    return PeftClipError(f"{what} {path} does not exist; check the path.")


def not_a_checkpoint(path: str | Path, reason: str) -> PeftClipError:
    """The error for a file that is not a peftclip checkpoint, with why."""
    return PeftClipError(f"{path} is not a peftclip checkpoint ({reason}); {CHECKPOINT_HINT}.")


def load_without_code(path: str | Path) -> object:
    """``torch.load`` of ``path`` that refuses any file whose unpickling would call a function.

    Raises:
        PeftClipError: The file is absent, names a Python object besides tensors and plain data
            (e.g. a crafted file calling ``os.system``), or is no torch file (truncated, another
            format).
    """
    if not Path(path).is_file():
        raise missing_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except TORCH_READ_ERRORS as error:
        refused = refused_global(error)
        if refused is not None:
            raise not_a_checkpoint(
                path,
                f"it would call the Python object {refused} when loaded, and peftclip never "
                "runs code from a file",
            ) from None
        raise not_a_checkpoint(path, unreadable_reason(error)) from None


def refused_global(error: Exception) -> str | None:
    """The Python object a ``weights_only`` load refused to call, if that is why it failed."""
    refused = re.search(r"GLOBAL ([\w.]+)", str(error))
    return refused[1] if isinstance(error, pickle.UnpicklingError) and refused else None


def unreadable_reason(error: Exception) -> str:
    """Why ``torch.load`` could not read a file, in one line ("truncated or not a torch file…")."""
    if isinstance(error, OSError):
        return "truncated or not a torch file"  # the zip reader's errno says nothing more
    # torch's messages: a long preamble, then what it could not read.
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
    reason = detail[1].strip() if detail else _first_sentence(error)
    return f"truncated or not a torch file: {reason}"


def _first_sentence(error: Exception) -> str:
    """The first sentence of ``error``'s message (torch appends paragraphs of advice)."""
    lines = str(error).strip().splitlines()
    return re.split(r"(?<=\.)\s", lines[0], maxsplit=1)[0] if lines else type(error).__name__


def check_peftclip_section(checkpoint: object, path: str | Path = "this checkpoint") -> dict:
    """Returns ``checkpoint`` if it is a dict with peftclip's section, else raises the error."""
    if not isinstance(checkpoint, dict):
        raise not_a_checkpoint(path, f"it holds a {type(checkpoint).__name__}, not a dict")
    section = checkpoint.get("peftclip")
    if not isinstance(section, dict) or "backbone" not in section:
        raise not_a_checkpoint(path, "it has no 'peftclip' section: another program wrote it")
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise not_a_checkpoint(path, "it has no adapter 'state_dict'")
    return checkpoint


def read_checkpoint(path: str | Path) -> dict:
    """Reads a peftclip adapter checkpoint or release, never running code from it.

    A release (see :func:`is_release`) comes back in a checkpoint's shape: ``state_dict``,
    ``peftclip``, ``hyper_parameters``, ``epoch`` and ``global_step``.

    Raises:
        PeftClipError: The file is absent, unsafe, unreadable or not a peftclip checkpoint.
    """
    if is_release(path):
        return read_release(path)
    return check_peftclip_section(load_without_code(path), path)


# ----------------------------------------------------------------------------- releases
def is_release(path: str | Path | None) -> bool:
    """Whether ``path`` names a release: its folder, or the ``.json`` / ``.safetensors`` in it.

    Anything else (a ``.ckpt``, Lightning's ``last``) is a torch checkpoint.
    """
    if path is None:
        return False
    path = Path(path)
    return path.is_dir() or path.suffix in (".json", ".safetensors")


def release_files(path: str | Path) -> tuple[Path, Path]:
    """The (sidecar, tensors) files of the release ``path`` names (folder or either file)."""
    path = Path(path)
    sidecar = path / RELEASE_SIDECAR if path.is_dir() else path.with_suffix(".json")
    return sidecar, sidecar.with_suffix(".safetensors")


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def not_a_release(path: str | Path, reason: str) -> PeftClipError:
    """The error for a release that cannot be loaded, with why and what to do."""
    return PeftClipError(
        f"{path} is not a loadable peftclip release ({reason}); a release is a folder with "
        f"{RELEASE_SIDECAR} and {RELEASE_TENSORS} as `peftclip export --format release` wrote "
        "them: export it again, or download both files again."
    )


def read_release(path: str | Path) -> dict:
    """Reads a release with JSON and safetensors only (no pickle), as a checkpoint dict.

    Raises:
        PeftClipError: The path is absent, the sidecar is missing, unreadable or of another
            format, the tensors file is missing or its SHA-256 differs from the sidecar's, or
            the sidecar has no ``peftclip`` section.
    """
    if not Path(path).exists():
        raise missing_file(path)  # the wording of every --ckpt_path
    sidecar_path, tensors_path = release_files(path)
    if not sidecar_path.is_file():
        raise not_a_release(path, f"there is no {sidecar_path.name} beside the tensors")
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise not_a_release(path, f"{sidecar_path.name} is no JSON: {error}") from None
    found = sidecar.get("format") if isinstance(sidecar, dict) else type(sidecar).__name__
    if found != RELEASE_FORMAT:
        raise not_a_release(
            path,
            f"{sidecar_path.name} has format {found!r}; this peftclip reads {RELEASE_FORMAT!r}",
        )
    if not tensors_path.is_file():
        raise not_a_release(path, f"{tensors_path.name} is missing")
    tensors = sidecar.get("tensors")
    recorded = tensors.get("sha256") if isinstance(tensors, dict) else None
    actual = file_sha256(tensors_path)
    if actual != recorded:
        raise not_a_release(
            path,
            f"{tensors_path.name} has SHA-256 {actual[:12]}… but {sidecar_path.name} records "
            f"{str(recorded)[:12]}…: one of them was changed or cut",
        )
    try:
        state_dict = load_file(str(tensors_path))
    except SafetensorError as error:
        raise not_a_release(path, f"{tensors_path.name} is no safetensors file: {error}") from None
    hyper_parameters = sidecar.get("hyper_parameters") or {}
    if not isinstance(hyper_parameters, dict):
        raise not_a_release(path, f"its hyper_parameters are a {type(hyper_parameters).__name__}")
    checkpoint = {
        "state_dict": state_dict,
        "peftclip": sidecar.get("peftclip"),
        "hyper_parameters": hyper_parameters,
        "epoch": sidecar.get("epoch"),
        "global_step": sidecar.get("global_step"),
    }
    return check_peftclip_section(checkpoint, path)
