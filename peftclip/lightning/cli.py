"""``PeftClipCLI``: LightningCLI over PeftClipModule + PeftClipDataModule, adapter short names."""

from __future__ import annotations

import difflib
import re
import sys
import typing
from argparse import ArgumentError
from typing import Any

from jsonargparse import ArgumentParser, get_loader, set_loader
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from peftclip.adapters import Adapter, adapter_class_path, get_adapter_class, list_adapters
from peftclip.checkpoint_files import is_release, read_checkpoint
from peftclip.errors import PeftClipError
from peftclip.lightning.datamodule import PeftClipDataModule
from peftclip.lightning.module import PeftClipModule
from peftclip.lightning.resume import CheckpointOnSigterm

PARSER_MODE = "peftclip"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: ``--ckpt_path`` values the trainer resolves to a file itself.
LIGHTNING_CHECKPOINT_NAMES = ("last", "best", "hpc")


def resolve_adapter_names(value: Any, key: str | None = None) -> Any:
    """Rewrites registered adapter short names into the ``class_path`` LightningCLI needs.

    Accepts ``adapters: [coop]``, ``adapters: [{class_path: coop, init_args: {...}}]`` and, on
    the command line, ``--model.adapters+=coop``.

    Raises:
        PeftClipError: An entry of ``adapters`` (or a ``class_path``) is a bare word that names
            no adapter, with the closest registered names.
    """
    names = set(list_adapters())
    if isinstance(value, dict):
        resolved = {k: resolve_adapter_names(v, k) for k, v in value.items()}
        if isinstance(resolved.get("class_path"), str) and resolved["class_path"] in names:
            resolved["class_path"] = adapter_class_path(resolved["class_path"])
        return resolved
    if isinstance(value, list):
        if key == "adapters":  # other class_path entries (optimizer, callbacks) are not adapters
            for item in value:
                name = item.get("class_path") if isinstance(item, dict) else item
                if isinstance(name, str):
                    check_adapter_name(name)
        return [
            {"class_path": adapter_class_path(item)}
            if key == "adapters" and isinstance(item, str) and item in names
            else resolve_adapter_names(item)
            for item in value
        ]
    if key is None and isinstance(value, str) and value in names:
        return {"class_path": adapter_class_path(value)}
    return value


def check_adapter_name(name: str) -> None:
    """Refuses a bare word that is neither a registered adapter nor an adapter class's name.

    An import path (``my_package.MyAdapter``) is left to jsonargparse, which imports it; a typo
    like ``cop`` would otherwise be answered with "Expected a dot import path string".

    Raises:
        PeftClipError: From the adapter registry, with the closest registered names.
    """
    if "." in name or name in list_adapters():
        return
    subclasses, pending = set(), [Adapter]
    while pending:
        for subclass in pending.pop().__subclasses__():
            subclasses.add(subclass.__name__)
            pending.append(subclass)
    if name not in subclasses:
        get_adapter_class(name)  # raises the registry's "unknown adapter" error


def _check_adapter_arguments(args: list[str]) -> None:
    """Checks the command line's ``--model.adapters+=NAME`` / ``--model.adapters+ NAME``."""
    for position, arg in enumerate(args):
        if arg.startswith("--model.adapters+="):
            check_adapter_name(arg.partition("=")[2])
        elif arg == "--model.adapters+" and position + 1 < len(args):
            check_adapter_name(args[position + 1])


def _load(text: str) -> Any:
    return resolve_adapter_names(get_loader("yaml")(text))


def _int_before_float() -> None:
    """Makes jsonargparse read ``--trainer.limit_test_batches 1`` as the int 1 (one batch).

    typing caches ``Union`` objects, and ``Union[float, int]`` equals ``Union[int, float]``, so
    whichever order is in the cache is handed back for both (CPython's open issue
    python/cpython#103749, "Make sure that typing cache differentiate Union[int, str] and
    Union[str, int]"; earlier python/typing#559). When Lightning Fabric's
    ``Optional[Union[float, int]]`` is cached as ``trainer.py`` is imported (which depends on
    import order and on evictions from the bounded cache), the Trainer's ``limit_*_batches``,
    ``val_check_interval``, ... become float-first, and jsonargparse parses "1" as 1.0: the whole
    set instead of one batch. Put the int-first annotations back before the parser reads them.
    """
    for clear in getattr(typing, "_cleanups", ()):
        clear()
    int_first = (typing.Union[int, float], typing.Optional[typing.Union[int, float]])  # noqa: UP007, UP045
    annotations = Trainer.__init__.__annotations__
    for name, annotation in annotations.items():
        for wanted in int_first:
            if annotation == wanted and annotation.__args__ != wanted.__args__:
                annotations[name] = wanted


def _unknown_key(message: str) -> str | None:
    """The key of jsonargparse's "unrecognized arguments" / "does not accept option" error."""
    command_line = re.match(r"unrecognized arguments: --([^\s=]+)", message)
    recipe = re.search(r"does not accept option '([^']+)'", message)
    match = command_line or recipe
    return match.group(1) if match else None


def _subcommand_parser(parser: ArgumentParser, args: list[str]) -> ArgumentParser:
    """The parser of the subcommand named in ``args`` (``parser`` itself if it has none)."""
    subcommands = parser._subcommands_action
    if subcommands is None:
        return parser
    name = next((arg for arg in args if arg in subcommands._name_parser_map), None)
    return subcommands._name_parser_map.get(name, parser)


def _unknown_key_message(parser: ArgumentParser, key: str) -> str:
    """ "unknown option ...; did you mean ...?" with the closest key ``parser`` knows."""
    keys = {
        option[2:]
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--")
    }
    close = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    prog = parser.prog.replace(" [options]", "")
    return f"unknown option '{key}'; {hint}`{prog} --help` lists every option."


class PeftClipCLI(LightningCLI):
    """``peftclip fit|validate|test --config recipe.yaml`` (LightningCLI)."""

    def __init__(
        self, args=None, run: bool = True, prog: str = "peftclip", description=None, **kwargs
    ) -> None:
        _int_before_float()
        self._lightning_subcommands = run  # fit / validate / test: --allow_untrained
        if isinstance(args, list | None):
            _check_adapter_arguments(sys.argv[1:] if args is None else args)
        set_loader(PARSER_MODE, _load, exceptions=(__import__("yaml").YAMLError,))
        # The usage line names the command a user typed, also under `python -m peftclip`.
        # exit_on_error=False: parse_arguments answers a misspelt key with one line.
        own = {"parser_mode": PARSER_MODE, "exit_on_error": False}
        parser_kwargs = {**own, "prog": prog}
        if description is not None:
            parser_kwargs["description"] = description
        parser_kwargs.update({name: own for name in SUBCOMMANDS})
        super().__init__(
            PeftClipModule,
            PeftClipDataModule,
            args=args,
            run=run,
            parser_kwargs=parser_kwargs,
            save_config_kwargs={"overwrite": True},
            # Logs, checkpoints and the resolved config.yaml go under runs/, not the cwd; a
            # pre-empted fit (SIGTERM) saves last.ckpt before it exits (docs/resuming.md).
            trainer_defaults={"default_root_dir": "runs", "callbacks": [CheckpointOnSigterm()]},
            seed_everything_default=0,  # reproducible by default; recipes may override
            **kwargs,
        )

    def _parse_ckpt_path(self) -> None:
        """Refuses a ``--ckpt_path`` that is absent, unsafe or not a peftclip checkpoint.

        LightningCLI reads the file here first (for its hyperparameters), before the trainer
        reads it again; both only after it passed :func:`read_checkpoint`, so each refusal is
        one line and nothing in the file ever runs. Lightning's own names (``last``, ``best``,
        ``hpc``) are resolved by the trainer; see :meth:`_require_last_checkpoint`. A release
        folder (``peftclip export --format release``) takes the same hyper-parameters from its
        sidecar; :meth:`_prepare_subcommand_kwargs` loads its tensors.

        Raises:
            PeftClipError: The checkpoint cannot be read, or ``fit`` is given a release.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path is None or ckpt_path in LIGHTNING_CHECKPOINT_NAMES:
            return super()._parse_ckpt_path()
        checkpoint = read_checkpoint(ckpt_path)
        if not is_release(ckpt_path):
            return super()._parse_ckpt_path()
        if subcommand == "fit":
            raise PeftClipError(
                f"--ckpt_path {ckpt_path} is an adapter release: it holds the adapter tensors but "
                "no training state to resume. `peftclip fit --ckpt_path` takes a .ckpt of "
                "`peftclip fit`; evaluate a release with `peftclip test` or `validate`."
            )
        # What Lightning does with a .ckpt's hyper-parameters, from the release's JSON sidecar.
        hparams = dict(checkpoint["hyper_parameters"])
        hparams.pop("_instantiator", None)
        if hparams:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        return None

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        """The trainer's arguments; a release ``--ckpt_path`` is loaded into the model here.

        The trainer reads torch checkpoints only, so it gets ``ckpt_path=None`` and evaluates
        the loaded adapters; the checks and errors are the checkpoint's own
        (:meth:`PeftClipModule.load_adapter_checkpoint`).
        """
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if is_release(kwargs.get("ckpt_path")):
            self.model.load_adapter_checkpoint(kwargs["ckpt_path"])
            kwargs["ckpt_path"] = None
        return kwargs

    def _require_last_checkpoint(self) -> None:
        """``--ckpt_path last`` with nothing to resume is an error, not a fresh start.

        Lightning only warns and trains from scratch, which hides a wrong
        ``trainer.default_root_dir`` behind hours of repeated work.
        """
        if self.config_init[self.subcommand].get("ckpt_path") != "last":
            return
        callbacks = [
            cb for cb in self.trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)
        ]
        # What the trainer's own resolution of "last" looks for (last*.ckpt in each folder).
        if not any(callback._find_last_checkpoints(self.trainer) for callback in callbacks):
            raise PeftClipError(
                f"--ckpt_path last: there is no checkpoint to resume under "
                f"{self.trainer.default_root_dir} (no last*.ckpt: a ModelCheckpoint with "
                "save_last: true writes one); give a checkpoint file, or leave --ckpt_path out to "
                "start from scratch."
            )

    before_fit = _require_last_checkpoint

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        if self._lightning_subcommands:
            parser.add_argument(
                "--allow_untrained",
                type=bool,
                default=False,
                help="validate / test: evaluate adapters with trainable or fitted tensors at their "
                "initialisation, without --ckpt_path (fit ignores it)",
            )

    def _require_trained_adapters(self) -> None:
        """Evaluating a method without its checkpoint is refused unless asked for: it would
        report the untrained adapters' accuracy as the method's."""
        self._require_last_checkpoint()
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") is not None or config.get("allow_untrained"):
            return
        trainable = [
            adapter.name
            for adapter in self.model.adapters
            if any(p.requires_grad for p in adapter.parameters()) or adapter._fitted_names
        ]
        if trainable:
            raise PeftClipError(
                f"`peftclip {self.subcommand}` without --ckpt_path would evaluate "
                f"{', '.join(trainable)} at its initialisation, not trained. Give --ckpt_path "
                "CKPT (a checkpoint of `peftclip fit`), or --allow_untrained true to evaluate "
                "the untrained adapters on purpose."
            )

    before_validate = before_test = _require_trained_adapters

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """LightningCLI's parsing; a key no parser knows (``--data.datset``, ``datset:`` in a
        recipe) is one line naming the closest valid key instead of the usage text.

        Raises:
            PeftClipError: An unknown key.
        """
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            words = sys.argv[1:] if args is None else args
            command = _subcommand_parser(parser, [w for w in words if isinstance(w, str)])
            key = _unknown_key(str(error))
            if key is None:  # any other error: jsonargparse's own report (usage, exit 2)
                command.exit_on_error = True
                command.error(str(error), error)
            raise PeftClipError(_unknown_key_message(command, key)) from None

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """LightningCLI's core arguments, with two changes: ``model.frozen_backbone`` (a loaded
        module, for Python callers) is not a command-line option, and ``data.backbone`` is
        linked to ``model.backbone`` (the data module builds that backbone's transforms)."""
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        trainer_defaults = {
            f"trainer.{key}": value
            for key, value in self.trainer_defaults.items()
            if key != "callbacks"
        }
        parser.set_defaults(trainer_defaults)
        parser.add_class_arguments(
            self.model_class,
            "model",
            fail_untyped=False,
            sub_configs=True,
            skip={"frozen_backbone"},
        )
        parser.add_lightning_class_args(self.datamodule_class, "data")
        parser.link_arguments("model.backbone", "data.backbone")
