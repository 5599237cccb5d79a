"""Checkpoints of the official CoOp, CoCoOp, MaPLe and CLIP-SVD code, in and out of peftclip.

Import turns the authors' released prompts or singular values into a peftclip adapter checkpoint,
so they are evaluated under peftclip's protocols (``peftclip test --config RECIPE --ckpt_path
IMPORTED.ckpt``); export writes a peftclip adapter back under the official names
(docs/checkpoints.md). The recipe decides the backbone and every adapter setting; the file only
provides tensors, which must fit the recipe's adapter exactly.

The official formats, as their code writes them:

* **Dassl** (CoOp and CoCoOp: KaiyangZhou/CoOp; MaPLe: muzairkhattak/multimodal-prompt-learning).
  ``torch.save({"state_dict", "epoch", "optimizer", "scheduler", "val_result"})`` into
  ``OUTPUT/<model name>/model.pth.tar-<epoch>`` (and ``model-best.pth.tar``). CoOp and CoCoOp
  register the prompt learner as ``prompt_learner``: keys ``ctx`` (``(M, width)``, or
  ``(classes, M, width)`` with CSC) and CoCoOp's ``meta_net.linear1.*`` / ``meta_net.linear2.*``.
  MaPLe registers its whole model as ``MultiModalPromptLearner``: ``prompt_learner.ctx``,
  ``prompt_learner.proj.*``, ``prompt_learner.compound_prompts_text.<j>``,
  ``prompt_learner.compound_prompt_projections.<j>.*``, plus the frozen CLIP under
  ``image_encoder.`` / ``text_encoder.`` and ``logit_scale``. The class-name buffers
  ``token_prefix`` / ``token_suffix`` are saved too; like the official loaders, peftclip drops
  them (they are rebuilt for whatever class set is evaluated).
* **CLIP-SVD** (HealthX-Lab/CLIP-SVD, ``svf_utils/utils.py``): ``torch.save({"weights":
  model.state_dict(), "metadata": {"image_encoder": bool, "text_encoder": bool}})`` of the whole
  re-expressed CLIP. The trainable singular values are ``[visual.]transformer.resblocks.<i>.attn.
  {q_proj,k_proj,v_proj,proj}.vector_S`` and ``….mlp.{c_fc,c_proj}.vector_S``, each ``(1, k)``.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning
import torch

from peftclip.adapters import Adapter, ClipSVD, MaPLe
from peftclip.adapters.official_names import (
    OFFICIAL_NAMES,
    OfficialName,
    official_names,
    shape_mismatch,
)
from peftclip.atomic_files import atomic_path
from peftclip.checkpoint_files import (
    TORCH_READ_ERRORS,
    missing_file,
    read_checkpoint,
    refused_global,
    unreadable_reason,
)
from peftclip.errors import PeftClipError
from peftclip.lightning.cli import LightningArgumentParser, PeftClipCLI
from peftclip.lightning.module import PeftClipModule

#: What :func:`read_official` recognises, as shown in errors.
RECOGNISED_FORMATS = (
    "Dassl CoOp: {'state_dict': {ctx, token_prefix, token_suffix}, 'epoch', 'optimizer', ...}",
    "Dassl CoCoOp: as CoOp, plus meta_net.linear1.{weight,bias}, meta_net.linear2.{weight,bias}",
    "Dassl MaPLe: {'state_dict': {prompt_learner.ctx, prompt_learner.proj.*, "
    "prompt_learner.compound_prompts_text.<j>, prompt_learner.compound_prompt_projections.<j>.*,"
    " image_encoder.*, text_encoder.*, ...}, 'epoch', ...}",
    "CLIP-SVD: {'weights': {[visual.]transformer.resblocks.<i>.attn.q_proj.vector_S, ...}, "
    "'metadata': {'image_encoder', 'text_encoder'}}",
)

_DASSL_BUFFERS = ("token_prefix", "token_suffix")
# MaPLe saves its whole CustomCLIP; the frozen CLIP comes from the recipe's backbone instead.
_MAPLE_FROZEN_PREFIXES = ("image_encoder.", "text_encoder.", "logit_scale")
# Frozen CLIP tensors that official files carry, compared with the recipe's backbone so that
# prompts trained on other weights are refused (file key → attribute path in the open_clip model).
_FROZEN_REFERENCES = {
    "maple": {
        "image_encoder.conv1.weight": "visual.conv1.weight",
        "text_encoder.positional_embedding": "positional_embedding",
    },
    "clip_svd": {
        "visual.conv1.weight": "visual.conv1.weight",
        "token_embedding.weight": "token_embedding.weight",
    },
}


@dataclass(frozen=True)
class OfficialCheckpoint:
    """The tensors of an official checkpoint that peftclip maps, with where they came from.

    Attributes:
        method: The peftclip adapter it belongs to: ``coop``, ``cocoop``, ``maple`` or
            ``clip_svd``.
        tensors: Trainable tensors under their official names (class-name buffers and the
            frozen CLIP dropped).
        frozen: Frozen CLIP tensors the file also holds (checked against the backbone).
        epoch: The epoch the official code recorded (Dassl), else ``None``.
        metadata: CLIP-SVD's ``metadata`` (which towers it trained), else empty.
    """

    method: str
    tensors: dict[str, torch.Tensor]
    frozen: dict[str, torch.Tensor] = field(default_factory=dict)
    epoch: int | None = None
    metadata: dict = field(default_factory=dict)


def _links(adapter: Adapter) -> list[OfficialName]:
    if type(adapter) not in OFFICIAL_NAMES:
        raise PeftClipError(
            f"adapter '{adapter.name}' has no official checkpoint format; official checkpoints "
            f"exist for {', '.join(cls.name for cls in OFFICIAL_NAMES)}."
        )
    links = official_names(adapter)
    uncovered = set(adapter.state_dict()) - {link.adapter for link in links}
    if uncovered:  # a new adapter tensor without an official name would be silently lost
        raise PeftClipError(
            f"adapter '{adapter.name}' holds tensors {sorted(uncovered)} that have no official "
            "counterpart; update peftclip/official_checkpoints.py for them."
        )
    return links


# ------------------------------------------------------------------------------------ reading
def _load(path: Path, trust_pickle: bool) -> object:
    # The one place peftclip unpickles in full, and only on the user's explicit --trust_pickle
    # (Dassl files hold the scheduler object); everything else goes through checkpoint_files.
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except TORCH_READ_ERRORS as error:
        refused = refused_global(error)
        if refused is None:  # truncated or foreign, whatever the unpickler was allowed
            raise PeftClipError(
                f"{path} is not an official checkpoint torch can read ({unreadable_reason(error)})"
                "; give the complete file the official code saved (download it again if it was "
                "cut short)."
            ) from None
        raise PeftClipError(
            f"{path} holds pickled Python objects besides tensors (a {refused}); torch refuses to "
            "unpickle them by default because that can run code from the file. If you trust the "
            "file (e.g. the authors' own release), import it with trust_pickle "
            "(--trust_pickle true)."
        ) from None


def _unknown(path: Path, keys: Sequence[str]) -> PeftClipError:
    shown = ", ".join(sorted(map(str, keys))[:12]) + (" …" if len(keys) > 12 else "")
    formats = "\n  ".join(RECOGNISED_FORMATS)
    return PeftClipError(
        f"{path} is not an official checkpoint peftclip recognises: it holds the keys "
        f"[{shown}]. Recognised formats:\n  {formats}"
    )


def read_official(source: str | Path, trust_pickle: bool = False) -> OfficialCheckpoint:
    """Reads an official CoOp / CoCoOp / MaPLe (Dassl) or CLIP-SVD checkpoint file.

    Args:
        source: The file: Dassl's ``<model name>/model.pth.tar-<epoch>`` or
            ``model-best.pth.tar``, or CLIP-SVD's ``.pt``.
        trust_pickle: Unpickle arbitrary Python objects (Dassl files hold the scheduler
            object). Only for files you trust.

    Returns:
        The trainable tensors under their official names, and which method they belong to.
    """
    path = Path(source)
    if path.is_dir():
        found = sorted(str(p.relative_to(path)) for p in path.rglob("*") if "model" in p.name)
        raise PeftClipError(
            f"{path} is a folder; give one checkpoint file, e.g. one of {found[:6] or 'none'} "
            "(Dassl writes OUTPUT/prompt_learner/model.pth.tar-N for CoOp and CoCoOp, "
            "OUTPUT/MultiModalPromptLearner/model.pth.tar-N for MaPLe)."
        )
    if not path.is_file():
        raise missing_file(path, "official checkpoint")
    content = _load(path, trust_pickle)
    if not isinstance(content, dict):
        raise _unknown(path, [type(content).__name__])
    if isinstance(content.get("weights"), dict) and "metadata" in content:
        return _read_clip_svd(path, content)
    if isinstance(content.get("state_dict"), dict):
        return _read_dassl(path, content)
    raise _unknown(path, list(content))


def _read_clip_svd(path: Path, content: dict) -> OfficialCheckpoint:
    weights = content["weights"]
    vectors = {key: value for key, value in weights.items() if key.endswith(".vector_S")}
    if not vectors:
        raise _unknown(path, list(weights))
    frozen = {key: weights[key] for key in _FROZEN_REFERENCES["clip_svd"] if key in weights}
    metadata = dict(content["metadata"] or {})
    return OfficialCheckpoint("clip_svd", vectors, frozen, metadata=metadata)


def _read_dassl(path: Path, content: dict) -> OfficialCheckpoint:
    # Dassl registers the model before wrapping it in DataParallel; strip "module." all the same.
    state = {key.removeprefix("module."): value for key, value in content["state_dict"].items()}
    epoch = content.get("epoch")
    epoch = int(epoch) if isinstance(epoch, int) else None
    prompts_in_encoders = [key for key in state if "VPT" in key]
    if prompts_in_encoders:  # IVLP / VPT keep their prompts inside the encoders
        raise _unknown(path, prompts_in_encoders)
    if any(key.startswith("prompt_learner.") for key in state):
        buffers = {f"prompt_learner.{name}" for name in _DASSL_BUFFERS}
        tensors = {
            key: value
            for key, value in state.items()
            if key not in buffers and not key.startswith(_MAPLE_FROZEN_PREFIXES)
        }
        frozen = {key: state[key] for key in _FROZEN_REFERENCES["maple"] if key in state}
        return OfficialCheckpoint("maple", tensors, frozen, epoch)
    tensors = {key: value for key, value in state.items() if key not in _DASSL_BUFFERS}
    if "ctx" not in tensors:
        raise _unknown(path, list(state))
    method = "cocoop" if any(key.startswith("meta_net.") for key in tensors) else "coop"
    return OfficialCheckpoint(method, tensors, epoch=epoch)


# ------------------------------------------------------------------------------------ mapping
def _keyset_hint(adapter: Adapter, official: OfficialCheckpoint) -> str:
    if isinstance(adapter, MaPLe):
        depth = 1 + sum(
            k.startswith("prompt_learner.compound_prompts_text.") for k in official.tensors
        )
        return f" The file has prompt_depth {depth}; the recipe has {adapter.prompt_depth}."
    if isinstance(adapter, ClipSVD):
        return (
            f" The recipe targets towers={adapter.towers!r}, layers={adapter.layers}, "
            f"blocks={adapter.blocks}; the official code decomposes every layer of both towers."
        )
    return ""


def official_to_adapter_state(
    adapter: Adapter, official: OfficialCheckpoint
) -> dict[str, torch.Tensor]:
    """Maps official tensors onto ``adapter``'s state dict (its own keys, its dtypes).

    Args:
        adapter: The recipe's adapter, attached to its backbone.
        official: What :func:`read_official` returned.

    Raises:
        PeftClipError: The file belongs to another method, its key set differs from the
            adapter's, or a tensor's shape differs (naming the tensor, both shapes and the
            setting that decides the differing dimension).
    """
    if official.method != adapter.name:
        raise PeftClipError(
            f"the file is an official {official.method} checkpoint, but the recipe's adapter is "
            f"{adapter.name}; use a {official.method} recipe."
        )
    links = _links(adapter)
    expected = {link.official for link in links}
    found = set(official.tensors)
    if official.method == "clip_svd":
        # Towers the official run did not train still hold their pretrained singular values.
        untrained = tuple(
            prefix
            for prefix, flag in (("visual.", "image_encoder"), ("transformer.", "text_encoder"))
            if official.metadata.get(flag) is False
        )
        found = {key for key in found if key in expected or not key.startswith(untrained)}
    if found != expected:
        missing, unexpected = sorted(expected - found), sorted(found - expected)
        raise PeftClipError(
            f"{adapter.name}: the official tensors do not match the recipe's adapter. Missing "
            f"from the file: {missing[:6]}{' …' if len(missing) > 6 else ''} ({len(missing)}); "
            f"in the file but not in the recipe: {unexpected[:6]}"
            f"{' …' if len(unexpected) > 6 else ''} ({len(unexpected)})."
            f"{_keyset_hint(adapter, official)}"
        )
    own = adapter.state_dict()
    state = {}
    for link in links:
        tensor, target = official.tensors[link.official], own[link.adapter]
        wanted = link.official_shape(target.shape)
        if tuple(tensor.shape) != wanted:
            raise PeftClipError(
                shape_mismatch(
                    adapter,
                    f"official tensor '{link.official}'",
                    tensor.shape,
                    link.adapter,
                    wanted,
                )
            )
        state[link.adapter] = tensor.detach().reshape(target.shape).to(target.dtype).clone()
    return state


def adapter_to_official(adapter: Adapter) -> dict[str, torch.Tensor]:
    """``adapter``'s trainable tensors under the official names and shapes (on the CPU)."""
    own = adapter.state_dict()
    official = {}
    for link in _links(adapter):
        tensor = own[link.adapter].detach().cpu()
        official[link.official] = tensor.reshape(link.official_shape(tensor.shape)).clone()
    return official


def _check_frozen(module: PeftClipModule, official: OfficialCheckpoint, source: Path) -> None:
    model = module.backbone.model
    for key, path in _FROZEN_REFERENCES.get(official.method, {}).items():
        if key not in official.frozen:
            continue
        theirs, ours = official.frozen[key].float(), model.get_parameter(path).detach().cpu()
        # Official files may hold CLIP in fp16: allow its rounding, nothing more.
        tolerance = 1e-3 * ours.abs().max().item() + 1e-6
        if theirs.shape != ours.shape or (theirs - ours.float()).abs().max() > tolerance:
            raise PeftClipError(
                f"{source} was trained on other CLIP weights than this recipe's backbone "
                f"{module.backbone.identity.model_name} ({module.backbone.identity.pretrained}): "
                f"its '{key}' differs from the backbone's '{path}'. Set model.backbone to the "
                "weights the official run used."
            )


def _only_adapter(module: PeftClipModule) -> Adapter:
    if len(module.adapters) != 1:
        names = [adapter.name for adapter in module.adapters] or "no adapters"
        raise PeftClipError(
            f"an official checkpoint holds one method; the recipe has {names}. Use a recipe "
            "with exactly one of coop, cocoop, maple, clip_svd."
        )
    return module.adapters[0]


# --------------------------------------------------------------------- peftclip checkpoints
def imported_checkpoint(
    module: PeftClipModule, source: str | Path, trust_pickle: bool = False
) -> dict:
    """Loads an official checkpoint into ``module`` and returns it as a ``peftclip fit`` checkpoint.

    The result is what ``PeftClipModule.on_save_checkpoint`` writes (adapter-only
    ``state_dict`` + the ``peftclip`` section with the backbone identity), plus what Lightning's
    ``trainer.test(ckpt_path=...)`` needs, and ``peftclip.imported_from`` records the source.
    """
    source = Path(source)
    official = read_official(source, trust_pickle)
    adapter = _only_adapter(module)
    _check_frozen(module, official, source)
    state = official_to_adapter_state(adapter, official)
    module.load_state_dict({f"classifier.adapters.0.{k}": v for k, v in state.items()})
    checkpoint = {"pytorch-lightning_version": lightning.__version__, "epoch": 0, "global_step": 0}
    module.on_save_checkpoint(checkpoint)
    checkpoint["peftclip"]["imported_from"] = {
        "path": str(source),
        "method": official.method,
        "epoch": official.epoch,
    }
    return checkpoint


def official_checkpoint(module: PeftClipModule, epoch: int = 0) -> dict:
    """``module``'s adapter as the official code saves it (see the module docstring).

    CoOp / CoCoOp / MaPLe: a Dassl dict (``optimizer`` and ``scheduler`` are ``None``); the
    official ``load_model`` reads it with ``strict=False``, so the frozen CLIP that MaPLe's own
    files carry is not needed. CLIP-SVD: ``{"weights", "metadata"}`` with the singular-value
    vectors only; load it with ``model.load_state_dict(weights, strict=False)``.
    """
    adapter = _only_adapter(module)
    tensors = adapter_to_official(adapter)
    if isinstance(adapter, ClipSVD):
        towers = adapter.adapted_towers
        metadata = {"image_encoder": "vision" in towers, "text_encoder": "text" in towers}
        return {"weights": tensors, "metadata": metadata}
    return {
        "state_dict": tensors,
        "epoch": epoch,
        "optimizer": None,
        "scheduler": None,
        "val_result": None,
    }


# ------------------------------------------------------------------------ command-line entries
def _module_from_recipe(recipe: str | Path, overrides: Sequence[str]) -> PeftClipModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return PeftClipCLI(args=["--config", str(recipe), *overrides], run=False).model


def import_checkpoint(
    recipe: str | Path,
    source: str | Path,
    output: str | Path,
    overrides: Sequence[str] = (),
    trust_pickle: bool = False,
) -> Path:
    """Turn an official CoOp / CoCoOp / MaPLe (Dassl) or CLIP-SVD checkpoint into a peftclip one.

    The recipe decides the backbone and the adapter's settings; the file's tensors must fit them
    exactly. Evaluate the result with ``peftclip test --config RECIPE --ckpt_path OUTPUT``.

    Args:
        recipe: The recipe YAML the checkpoint will be evaluated with (one adapter).
        source: The official file: Dassl's ``prompt_learner/model.pth.tar-N`` (CoOp, CoCoOp),
            ``MultiModalPromptLearner/model.pth.tar-N`` (MaPLe), or CLIP-SVD's ``.pt``.
        output: Where to write the peftclip adapter checkpoint (``.ckpt``).
        overrides: Recipe overrides, as on the command line (``--model.backbone.pretrained
            /weights/ViT-B-16.pt``).
        trust_pickle: Unpickle Python objects besides tensors (Dassl files hold the scheduler
            object); only for files you trust.

    Returns:
        The written file.
    """
    return save_imported(_module_from_recipe(recipe, overrides), source, output, trust_pickle)


def save_imported(
    module: PeftClipModule, source: str | Path, output: str | Path, trust_pickle: bool = False
) -> Path:
    """Writes :func:`imported_checkpoint` of ``source`` for ``module`` to ``output``."""
    checkpoint = imported_checkpoint(module, source, trust_pickle)
    with atomic_path(output) as partial:
        torch.save(checkpoint, partial)
    return Path(output)


def export_official(
    recipe: str | Path,
    ckpt_path: str | Path,
    output: str | Path,
    overrides: Sequence[str] = (),
) -> Path:
    """Write a peftclip adapter checkpoint under the official code's names and layout.

    CoOp / CoCoOp / MaPLe become a Dassl file (save it as ``OUTPUT/prompt_learner/
    model.pth.tar-N``, or ``OUTPUT/MultiModalPromptLearner/...`` for MaPLe, where the official
    ``--model-dir OUTPUT --load-epoch N`` finds it); CLIP-SVD becomes its ``{"weights",
    "metadata"}`` file holding the singular-value vectors.

    Args:
        recipe: The recipe the checkpoint was trained with (one adapter).
        ckpt_path: The adapter checkpoint of ``peftclip fit`` (or of ``import_checkpoint``).
        output: The official file to write.
        overrides: Recipe overrides, as on the command line.

    Returns:
        The written file.
    """
    module = _module_from_recipe(recipe, overrides)
    module.load_adapter_checkpoint(str(ckpt_path))
    return save_official(module, ckpt_path, output)


def save_official(module: PeftClipModule, ckpt_path: str | Path, output: str | Path) -> Path:
    """Writes ``module``'s adapter, loaded from ``ckpt_path``, as the official code saves it."""
    saved = read_checkpoint(ckpt_path)
    imported = saved.get("peftclip", {}).get("imported_from") or {}
    if imported.get("epoch") is not None:  # an imported file keeps the official epoch
        epoch = int(imported["epoch"])
    else:  # Dassl counts finished epochs; Lightning records the index of the epoch it saved in
        epoch = int(saved.get("epoch", -1)) + 1
    official = official_checkpoint(module, epoch=epoch)
    with atomic_path(output) as partial:
        torch.save(official, partial)
    return Path(output)


class ImportCheckpointCLI(PeftClipCLI):
    """Turns an official CoOp / CoCoOp / MaPLe (Dassl) or CLIP-SVD checkpoint into a peftclip one.

    The recipe options (--config RECIPE.yaml, --model.backbone.pretrained ...) are those the
    checkpoint will be evaluated with: they decide the backbone and the adapter's settings, and
    the file's tensors must fit them exactly. Then: peftclip test --config RECIPE.yaml
    --ckpt_path OUTPUT.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument(
            "--source",
            required=True,
            help="the official file: prompt_learner/model.pth.tar-N (CoOp, CoCoOp), "
            "MultiModalPromptLearner/model.pth.tar-N (MaPLe) or CLIP-SVD's .pt",
        )
        parser.add_argument("--output", required=True, help="the peftclip checkpoint to write")
        parser.add_argument(
            "--trust_pickle",
            type=bool,
            default=False,
            help="unpickle Python objects besides tensors (Dassl files hold the scheduler "
            "object); only for files you trust",
        )


def import_checkpoint_command(args: list[str]) -> int:
    """Imports an official CoOp / CoCoOp / MaPLe or CLIP-SVD checkpoint."""
    cli = ImportCheckpointCLI(
        args=args,
        run=False,
        prog="peftclip import-checkpoint",
        description=inspect.getdoc(ImportCheckpointCLI),
    )
    save_imported(cli.model, cli.config.source, cli.config.output, cli.config.trust_pickle)
    recipes = " ".join(f"--config {path}" for path in cli.config.get("config") or [])
    print(f"wrote {cli.config.output}; evaluate it with peftclip test "
          f"{recipes or '--config RECIPE.yaml'} --ckpt_path {cli.config.output}")  # fmt: skip
    return 0
