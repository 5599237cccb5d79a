"""``PeftClipCLI``: LightningCLI over PeftClipModule + PeftClipDataModule, adapter short names."""

from __future__ import annotations

import difflib
import json
import logging
import re
import sys
import typing
from argparse import ArgumentError
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser, Namespace, get_loader, set_loader
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from peftclip.adapters import Adapter, adapter_class_path, get_adapter_class, list_adapters
from peftclip.checkpoint_files import is_release, read_checkpoint
from peftclip.errors import PeftClipError
from peftclip.lightning.datamodule import PeftClipDataModule
from peftclip.lightning.module import PeftClipModule
from peftclip.lightning.results import (
    RecordResults,
    evaluation_records,
    store_records,
    trainable_parameters,
)
from peftclip.lightning.resume import CheckpointOnSigterm
from peftclip.runs import CHECKPOINTS, new_run_dir, resolve_run_checkpoint

PARSER_MODE = "peftclip"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: ``--ckpt_path`` values the trainer resolves to a file itself (``last`` is a run's, see
#: peftclip.runs).
LIGHTNING_CHECKPOINT_NAMES = ("best", "hpc")


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


def _plain(value: Any) -> Any:
    """A parsed config value as plain JSON-able data (a results cell)."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


def _log_to_file(path: Path) -> None:
    """Copies Lightning's and peftclip's log messages into the run's ``log.txt``."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("lightning.pytorch", "lightning.fabric", "peftclip"):
        logging.getLogger(name).addHandler(handler)
    # peftclip's INFO messages (image-feature cache hits and misses) belong in the run's log,
    # not on the console: the root logger's console handler (which the first warning on the
    # root logger would create with no level, e.g. open_clip's) keeps to warnings.
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    logging.basicConfig(handlers=[console])  # no-op where root has handlers already
    logging.getLogger("peftclip").setLevel(logging.INFO)


class PeftClipCLI(LightningCLI):
    """``peftclip fit|validate|test --config recipe.yaml`` (LightningCLI)."""

    def __init__(
        self,
        args=None,
        run: bool = True,
        prog: str = "peftclip",
        description=None,
        run_kind: str | None = None,
        **kwargs,
    ) -> None:
        """Args (besides LightningCLI's):
        prog: The command's name in its usage line.
        description: The command's help text.
        run_kind: The command that writes a run folder (peftclip.runs) when ``run`` is
            false, e.g. ``base2new``; the Lightning subcommands always do, and commands
            that only read (``export``) leave it ``None``.
        """
        _int_before_float()
        self._lightning_subcommands = run  # fit / validate / test: --allow_untrained
        self._run_kind = run_kind
        self._resumed_run: Path | None = None
        self._run_dir: Path | None = None
        self._recipe: str | None = None  # the resolved config of a run with a folder
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
            save_config_kwargs={"overwrite": False},
            # Logs, checkpoints and the resolved config.yaml go under runs/, not the cwd; a
            # pre-empted fit (SIGTERM) saves last.ckpt before it exits (docs/resuming.md).
            # use_distributed_sampler off: the training sampler splits each global batch over
            # the DDP processes itself (docs/multi_gpu.md).
            trainer_defaults={
                "default_root_dir": "runs",
                "callbacks": [CheckpointOnSigterm()],
                "use_distributed_sampler": False,
            },
            seed_everything_default=0,  # reproducible by default; recipes may override
            **kwargs,
        )

    def _parse_ckpt_path(self) -> None:
        """Refuses a ``--ckpt_path`` that is absent, unsafe or not a peftclip checkpoint.

        LightningCLI reads the file here first (for its hyperparameters), before the trainer
        reads it again; both only after it passed :func:`read_checkpoint`, so each refusal is
        one line and nothing in the file ever runs. Lightning's own names (``last``, ``best``,
        ``hpc``) are resolved by the trainer, after ``last`` and run ids were resolved to a run's
        checkpoint (:meth:`use_run_checkpoint`). A release
        folder (``peftclip export --format release``) takes the same hyper-parameters from its
        sidecar; :meth:`_prepare_subcommand_kwargs` loads its tensors.

        Raises:
            PeftClipError: The checkpoint cannot be read, or ``fit`` is given a release.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path is not None:
            run_dir = self.use_run_checkpoint(self.config[subcommand])
            if subcommand == "fit":  # a resumed fit continues in its run's own folder
                self._resumed_run = run_dir
            ckpt_path = self.config[subcommand].ckpt_path
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

    @staticmethod
    def use_run_checkpoint(config: Namespace) -> Path | None:
        """Replaces ``config.ckpt_path`` given as ``last`` / a run id / a run folder with that
        fit run's ``last.ckpt`` (peftclip.runs); returns the run's folder (None: not a run)."""
        root = config.trainer.default_root_dir
        found = resolve_run_checkpoint(config.ckpt_path, root, config.data.as_dict())
        if found is None:
            return None
        run_dir, checkpoint = found
        config.ckpt_path = str(checkpoint)
        return run_dir

    def before_instantiate_classes(self) -> None:
        """Gives the run a folder of its own (``trainer.default_root_dir``) with a CSV log of
        its metrics, unless the recipe turned logging off; a resumed fit keeps its folder and
        saves this invocation's config beside the first."""
        kind = self.subcommand or self._run_kind
        if kind is None:  # a Python caller's trainer (run=False): its own root, as before
            self.save_config_kwargs["overwrite"] = True
            return
        config = self.config[self.subcommand] if self.subcommand else self.config
        config_name = "config.yaml"
        if self._resumed_run is not None:
            run_dir = self._resumed_run
            config_name = f"config.resumed-{datetime.now(UTC):%Y%m%d-%H%M%S}.yaml"
        else:
            text = self.parser.dump(self.config, skip_validation=True)
            run_dir = new_run_dir(config.trainer.default_root_dir, kind, text)
        self._run_dir = run_dir
        config.trainer.default_root_dir = str(run_dir)
        # The config beside the checkpoints, whatever folder the logger picks (an absolute
        # file name survives SaveConfigCallback's join with the log folder).
        self.save_config_kwargs["config_filename"] = str((run_dir / config_name).absolute())
        if config.trainer.logger in (None, True):
            # logs/version_N/metrics.csv: a resumed fit logs beside, never over, the first.
            config.trainer.logger = Namespace(
                class_path="lightning.pytorch.loggers.CSVLogger",
                init_args=Namespace(save_dir=str(run_dir), name="logs"),
            )
        _log_to_file(run_dir / "log.txt")
        self._recipe = self.parser.dump(self.config, skip_validation=True)  # as the run has it

    def record_base_to_new(self, result, wall_time_s: float) -> None:
        """Stores a base-to-new run's four evaluations (zero-shot CLIP and the method, on the
        base and the new half) in the results database."""
        dataset, cell = self.config.data.dataset, self.cell("base2new")
        # The zero-shot baseline is evaluated in the same run folder, as a run of its own.
        runs = {
            "method": (
                self._run_dir.name,
                cell,
                trainable_parameters(self.model),
                self.model.selection_rule,
            ),
            "zero_shot": (f"{self._run_dir.name}/zero-shot", {**cell, "methods": []}, 0, "last"),
        }
        records = []
        for who, (run_id, run_cell, trainable, rule) in runs.items():
            halves = {(dataset, half): metrics for half, metrics in result.counts[who].items()}
            records += evaluation_records(
                halves,
                run_id=run_id,
                cell=run_cell,
                recipe=self._recipe,
                trainable_params=trainable,
                selection_rule=rule,
                wall_time_s=wall_time_s,
            )
        store_records(self.config.results_db, records)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        if self._lightning_subcommands or self._run_kind is not None:
            parser.add_argument(
                "--results_db",
                type=str | None,
                default=None,
                help="the results database the run's evaluations are recorded in (default: "
                "$PEFTCLIP_RESULTS_DB or runs/results.sqlite; docs/results.md)",
            )
            parser.add_argument(
                "--results_cell",
                type=str | None,
                default=None,
                help="the cell (JSON) the records belong to; `peftclip run` sets it (default: "
                "this run alone, protocol 'single')",
            )
        if self._lightning_subcommands:
            parser.add_argument(
                "--allow_untrained",
                type=bool,
                default=False,
                help="validate / test: evaluate adapters with trainable or fitted tensors at their "
                "initialisation, without --ckpt_path (fit ignores it)",
            )

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """LightningCLI's trainer, with checkpoints in the run's ``checkpoints/`` (a
        ``ModelCheckpoint`` of the recipe without a ``dirpath`` would follow the logger)."""
        trainer = super().instantiate_trainer(**kwargs)
        if self._run_dir is not None:
            for callback in trainer.checkpoint_callbacks:
                if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                    callback.dirpath = str(self._run_dir / CHECKPOINTS)
        if self._run_dir is not None and self.subcommand in SUBCOMMANDS:
            config = self.config[self.subcommand]
            trainer.callbacks.append(
                RecordResults(config.results_db, self._run_dir.name, self.cell(), self._recipe)
            )
        return trainer

    def cell(self, protocol: str = "single") -> dict:
        """What identifies this run in the results database (peftclip.results): the cell a
        protocol runner gave (``--results_cell``), else the methods with their settings, the
        backbone (with its weights' hash), the data and the seed."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("results_cell"):
            return json.loads(config.results_cell)
        entries = config.model.adapters or []
        methods = [
            {"name": adapter.name, "config": _plain(getattr(entry, "init_args", None))}
            for adapter, entry in zip(self.model.adapters, entries, strict=True)
        ]
        return {
            "protocol": protocol,
            "dataset": config.data.dataset,
            "methods": methods,
            "shots": config.data.shots,
            "seed": config.data.seed,
            "subsample": config.data.subsample,
            "backbone": self.model.backbone.identity.to_dict(),
            "profile": config.model.precision_profile,
            "seed_everything": self.config.get("seed_everything"),
        }

    def _require_trained_adapters(self) -> None:
        """Evaluating a method without its checkpoint is refused unless asked for: it would
        report the untrained adapters' accuracy as the method's."""
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
