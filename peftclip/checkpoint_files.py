"""Reading checkpoint files without running code from them, with one-line errors.

Researchers load adapters that others released, and unpickling a file in full can call any
function it names. peftclip therefore reads every checkpoint with ``torch.load(...,
weights_only=True)``: tensors, containers and plain values only. A peftclip checkpoint (what
``peftclip fit`` and ``peftclip import-checkpoint`` write) needs nothing else, so there is no
allowlist to keep.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from peftclip.errors import PeftClipError

#: What every ``--ckpt_path`` error suggests instead.
CHECKPOINT_HINT = "give a .ckpt written by `peftclip fit` or `peftclip import-checkpoint`"


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
    except pickle.UnpicklingError as error:
        # torch's message: a long preamble, then what it refused or could not read.
        message = str(error)
        refused = re.search(r"GLOBAL ([\w.]+)", message)
        if refused is not None:
            raise not_a_checkpoint(
                path,
                f"it would call the Python object {refused[1]} when loaded, and peftclip never "
                "runs code from a file",
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", message)
        reason = detail[1].strip() if detail else _first_line(error)
        raise not_a_checkpoint(path, f"truncated or not a torch file: {reason}") from None
    except OSError:  # torch's zip reader on a cut file: an errno that says nothing more
        raise not_a_checkpoint(path, "truncated or not a torch file") from None
    except (RuntimeError, EOFError, ValueError) as error:  # torch's zip reader, pickle
        raise not_a_checkpoint(
            path, f"truncated or not a torch file: {_first_line(error)}"
        ) from None


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


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
    """Reads a peftclip adapter checkpoint, never running code from it.

    Raises:
        PeftClipError: The file is absent, unsafe, unreadable or not a peftclip checkpoint.
    """
    return check_peftclip_section(load_without_code(path), path)
