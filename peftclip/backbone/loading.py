"""Building a :class:`FrozenClip` from an open_clip model name and a weights source."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.factory import load_state_dict as read_open_clip_state_dict

from peftclip.backbone.frozen_clip import BackboneIdentity, FrozenClip
from peftclip.backbone.models import model_config, registered_model, require_model_config
from peftclip.errors import PeftClipError


@dataclass
class BackboneSpec:
    """Which frozen CLIP to load.

    Args:
        model_name: Any open_clip model name (``ViT-B-16-quickgelu``, ``ViT-B-32``, ``RN50``, ...)
            or a config registered by peftclip (``peftclip-tiny-vit``).
        pretrained: ``None`` for random init, an open_clip tag (``openai``; downloads once on a
            networked machine) or a local checkpoint file (``/data/weights/ViT-B-16.pt``).
        force_quick_gelu: Build the model with QuickGELU (needed for OpenAI weights on configs
            without the ``-quickgelu`` suffix).
        init_seed: Seed of the random initialisation when ``pretrained`` is ``None``.
    """

    model_name: str = "ViT-B-16-quickgelu"
    pretrained: str | None = None
    force_quick_gelu: bool = False
    init_seed: int = 0


def load_backbone(
    model_name: str,
    pretrained: str | None = None,
    force_quick_gelu: bool = False,
    init_seed: int = 0,
) -> FrozenClip:
    """Loads a frozen open_clip CLIP with split attention (see :class:`BackboneSpec`).

    No network is touched when ``pretrained`` is ``None`` or a local file.
    """
    config = require_model_config(model_name)
    quick_gelu = bool(config.get("quick_gelu", False)) or force_quick_gelu
    checkpoint = _resolve_pretrained(model_name, pretrained, quick_gelu)

    with torch.random.fork_rng(devices=[]), _quiet_random_init_warning(checkpoint is not None):
        torch.manual_seed(init_seed)
        model = open_clip.create_model(
            model_name,
            pretrained=pretrained if checkpoint is None and pretrained else None,
            force_quick_gelu=force_quick_gelu,
        )
    if checkpoint is not None:
        _load_checkpoint_file(model, model_name, checkpoint)
    identity = BackboneIdentity(
        model_name=model_name,
        pretrained=pretrained if checkpoint is None else str(Path(checkpoint).resolve()),
        weights_sha256=weights_sha256(model),
    )
    return FrozenClip(model, get_tokenizer(model_name), identity)


@contextlib.contextmanager
def _quiet_random_init_warning(weights_follow: bool):
    """open_clip warns "Model initialized randomly" when built without weights; peftclip loads
    local files itself right after, so the warning would be false there."""
    root = logging.getLogger()

    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")

    if weights_follow:
        root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def get_tokenizer(model_name: str):
    """The model's tokenizer: the one it was registered with (the world model's word
    tokenizer), else open_clip's."""
    registered = registered_model(model_name)
    if registered is not None and registered.tokenizer_factory is not None:
        config = model_config(model_name)
        return registered.tokenizer_factory(config["text_cfg"]["context_length"])
    return open_clip.get_tokenizer(model_name)


def _resolve_pretrained(model_name: str, pretrained: str | None, quick_gelu: bool) -> str | None:
    """Validates ``pretrained``; returns the local file path, or ``None`` for a tag / no weights."""
    if not pretrained:
        return None
    registered = registered_model(model_name)
    shipped = registered.shipped_weights.get(pretrained) if registered is not None else None
    if shipped is not None:
        if not shipped.is_file():
            raise PeftClipError(
                f"the shipped weights '{shipped}' are missing from this installation; reinstall "
                "peftclip or recreate them with `peftclip world pretrain`."
            )
        return str(shipped)
    tag_config = open_clip.get_pretrained_cfg(model_name, pretrained)
    if tag_config:
        if bool(tag_config.get("quick_gelu", False)) != quick_gelu:
            _raise_quick_gelu_mismatch(model_name, pretrained, trained_quick_gelu=not quick_gelu)
        return None
    path = Path(pretrained).expanduser()
    if path.is_file():
        if _is_torchscript_archive(path) and not quick_gelu:  # OpenAI's format: QuickGELU
            _raise_quick_gelu_mismatch(model_name, f"'{path}'", trained_quick_gelu=True)
        return str(path)
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if os.sep in pretrained or path.suffix in {".pt", ".pth", ".bin", ".safetensors"}:
        raise PeftClipError(
            f"pretrained checkpoint '{pretrained}' does not exist. Expected a local weights file "
            f"for {model_name} (e.g. OpenAI's ViT-B-16.pt or an open_clip .safetensors); check "
            f"the path, or use a pretrained tag ({', '.join(tags) or 'none known'})."
        )
    raise PeftClipError(
        f"'{pretrained}' is neither a pretrained tag of {model_name} nor a file. Known tags: "
        f"{', '.join(tags) or 'none'}. Give a tag, a local"
        " checkpoint path, or null for random init."
    )


def _raise_quick_gelu_mismatch(model_name: str, source: str, trained_quick_gelu: bool) -> None:
    if trained_quick_gelu:
        fix = (
            f"use '{model_name}-quickgelu' (e.g. ViT-B-16-quickgelu) or set force_quick_gelu: true"
        )
    else:
        fix = "drop force_quick_gelu (and any '-quickgelu' suffix of the model name)"
    trained, built = ("QuickGELU", "nn.GELU") if trained_quick_gelu else ("nn.GELU", "QuickGELU")
    raise PeftClipError(
        f"weights {source} were trained with {trained} but model '{model_name}' is built with "
        f"{built}; loading them would silently degrade the model (open_clip only warns). To fix, "
        f"{fix}."
    )


def _is_torchscript_archive(path: Path) -> bool:
    """OpenAI distributes its weights as TorchScript archives (a zip holding ``code/``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _load_checkpoint_file(model: torch.nn.Module, model_name: str, path: str) -> None:
    try:
        if _is_torchscript_archive(Path(path)):
            state_dict = torch.jit.load(path, map_location="cpu").state_dict()
        else:
            state_dict = read_open_clip_state_dict(path)
    except Exception as error:  # torch.load raises many types for unreadable files
        raise PeftClipError(
            f"could not read checkpoint '{path}' ({type(error).__name__}: {error}). Expected a "
            "torch, TorchScript or safetensors file of CLIP weights."
        ) from error
    # Metadata of OpenAI archives and buffers that open_clip rebuilds itself.
    for key in ("input_resolution", "context_length", "vocab_size", "attn_mask"):
        state_dict.pop(key, None)
    problems = _state_dict_mismatches(model.state_dict(), state_dict)
    if problems:
        raise PeftClipError(
            f"checkpoint '{path}' does not match the architecture of '{model_name}': "
            f"{'; '.join(problems)}. Pick the model name that the checkpoint was trained with."
        )
    model.load_state_dict(state_dict, strict=True)


def _state_dict_mismatches(expected: dict, found: dict, limit: int = 5) -> list[str]:
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    wrong_shape = [
        f"{key} {tuple(found[key].shape)} instead of {tuple(value.shape)}"
        for key, value in expected.items()
        if key in found and tuple(found[key].shape) != tuple(value.shape)
    ]
    problems = []
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("wrong shapes", wrong_shape),
    ):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:limit])}{more}")
    return problems


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the model's parameters and persistent buffers, in state-dict order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(data.view(torch.uint8).numpy())
    return digest.hexdigest()
