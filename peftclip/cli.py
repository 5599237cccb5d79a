"""The ``peftclip`` command: one jsonargparse parser over every subcommand in ``COMMANDS``.

Adding a subcommand is two steps:

1. Write a typed function in the module that does the work. Its Google-style docstring is its
   help: the first line is its one line in ``peftclip --help``, the rest is the description of
   ``peftclip NAME --help``, and ``Args:`` documents each option. How a signature becomes the
   command line:

   * a parameter without a default before ``*`` is a positional (a ``list[...]`` one takes any
     number of values, none included); every other parameter is an option, spelled with dashes
     (``cache_dir`` → ``--cache-dir``; the underscore spelling is accepted too, and a config file
     uses the parameter name);
   * a ``bool`` is a pair of flags (``force`` → ``--force`` / ``--no-force``);
   * every command also takes ``--config FILE`` (its options as YAML) and ``--print_config``;
   * it returns the exit status (``None`` is 0). A ``PeftClipError`` it raises is printed as one
     line ``peftclip: error: ...`` with exit status 2 (``PEFTCLIP_TRACEBACK=1``: the traceback).

   A dataclass with ``__call__`` works too (its fields are the options; the instance is called),
   for a command that extends a settings class (``world pretrain``).
2. Add it to ``COMMANDS`` in this module by its import path, e.g.
   ``"check": Lazy("peftclip.data.check:data_check_command"),`` (a nested dict is a command
   group: ``"data": {"check": ...}`` is ``peftclip data check``). ``Lazy`` imports the module
   only when the command runs; ``peftclip --help`` reads the summaries from the source files.

A command whose arguments are a *recipe* (``--config RECIPE.yaml``, ``--model.*``, ``--data.*``,
``--trainer.*``, as for ``peftclip fit``) is a ``RecipeCommand`` instead: ``peftclip`` lists it
and hands every argument after its name, unparsed, to its function, which parses them once with
``PeftClipCLI`` (LightningCLI), so ``--config``, ``--print_config``, ``--help`` and overrides work
exactly as in ``peftclip fit``. The protocol runner is meant to be one: ``"run": RecipeCommand(
run_protocol_command),``.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import logging
import os
import sys
import time
import types
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

from docstring_parser import parse as parse_docstring
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

from peftclip.errors import PeftClipError

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Lazy:
    """A command named by its import path ``module:name``, imported only when it runs.

    The commands import torch, Lightning and open_clip (seconds); ``peftclip --help`` reads
    each command's summary from its source file instead, so it answers at once.
    """

    path: str

    def load(self) -> Callable:
        module, _, name = self.path.partition(":")
        return getattr(importlib.import_module(module), name)

    def summary(self) -> str:
        """The first line of the command's docstring, read without importing its module."""
        module, _, name = self.path.partition(":")
        source = _PACKAGE_ROOT.joinpath(*module.split(".")).with_suffix(".py").read_text()
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name:
                return ast.get_docstring(node).splitlines()[0].rstrip(".")
        raise LookupError(f"{self.path} is not a function or class of its module")


def _loaded(entry):
    return entry.load() if isinstance(entry, Lazy) else entry


@dataclass(frozen=True)
class RecipeCommand:
    """A subcommand that parses its own arguments with ``PeftClipCLI`` (LightningCLI).

    Attributes:
        run: Called with every argument after the subcommand's name; returns the exit status.
        help: Its line in ``peftclip --help`` (default: the first line of ``run``'s docstring).
    """

    run: Callable[[list[str]], int | None] | Lazy
    help: str | None = None


def lightning_command(subcommand: str, args: list[str]) -> int:
    """Runs one of LightningCLI's own subcommands (fit, validate, test) on a recipe."""
    from peftclip.lightning.cli import PeftClipCLI

    PeftClipCLI(args=[subcommand, *args])
    return 0


def base_to_new_command(args: list[str]) -> int:
    """Runs the base-to-new protocol of a recipe (one seed).

    Trains on the base classes, then tests zero-shot CLIP and the trained model on the base and
    the new classes and prints the table (top-1 %, harmonic mean).
    """
    from peftclip.lightning.cli import PeftClipCLI
    from peftclip.protocols.base_to_new import run_base_to_new

    cli = PeftClipCLI(
        args=args,
        run=False,
        prog="peftclip base2new",
        description=inspect.getdoc(base_to_new_command),
        run_kind="base2new",
    )
    started = time.perf_counter()
    result = run_base_to_new(cli.model, cli.datamodule, cli.trainer)
    cli.record_base_to_new(result, time.perf_counter() - started)
    method = "+".join(a.name for a in cli.model.adapters) or "no adapter"
    print(
        f"\nbase-to-new on {cli.datamodule.dataset_name}, seed {cli.datamodule.seed} "
        f"(top-1 %)\n{result.table(method)}"
    )
    return 0


def list_command(kind: Literal["adapters", "datasets", "models"]) -> int:
    """Lists the adapters, datasets or models a recipe can name.

    Args:
        kind: adapters (model.adapters), datasets (data.dataset) or models, the open_clip
            configs (model.backbone.model_name).
    """
    from peftclip.names_index import registered_names

    print("\n".join(registered_names(kind)) or f"(no {kind} registered yet)")
    return 0


Command = Callable[..., int | None] | Lazy | RecipeCommand
#: Every subcommand of ``peftclip``, in the order ``peftclip --help`` lists them. Adding one is
#: one entry here (see the module docstring); the protocol runner ``run`` will join them.
COMMANDS: dict[str, Command | dict[str, Command]] = {
    "fit": RecipeCommand(partial(lightning_command, "fit"), "Trains the adapters of a recipe"),
    "validate": RecipeCommand(
        partial(lightning_command, "validate"), "Evaluates a recipe on its val split"
    ),
    "test": RecipeCommand(
        partial(lightning_command, "test"), "Evaluates a recipe on its test split"
    ),
    "base2new": RecipeCommand(base_to_new_command),
    "run": RecipeCommand(
        Lazy("peftclip.protocols.runner:run_command"),
        "Runs a protocol's grid (datasets × shots × seeds) and records every result",
    ),
    "export": RecipeCommand(Lazy("peftclip.export:export_command")),
    "import-checkpoint": RecipeCommand(
        Lazy("peftclip.official_checkpoints:import_checkpoint_command")
    ),
    "list": list_command,
    "data": {
        "check": Lazy("peftclip.data.check:data_check_command"),
        "import-pkl": Lazy("peftclip.data.dassl_pkl:import_pkl_command"),
        "mtil-manifest": Lazy("peftclip.data.mtil_splits:mtil_manifest_command"),
    },
    "world": {
        "pretrain": Lazy("peftclip.world.command:WorldPretrainCommand"),
        "evaluate": Lazy("peftclip.world.command:world_evaluate_command"),
    },
    "results": {
        "list": Lazy("peftclip.results.commands:results_list_command"),
        "show": Lazy("peftclip.results.commands:results_show_command"),
        "export": Lazy("peftclip.results.commands:results_export_command"),
    },
    "leaderboard": Lazy("peftclip.leaderboard.command:leaderboard_command"),
    "cache": {
        "info": Lazy("peftclip.image_cache:cache_info_command"),
        "clear": Lazy("peftclip.image_cache:cache_clear_command"),
    },
}

EXAMPLES = """\
examples:
  peftclip test --config recipes/zeroshot/tiny_random.yaml
  peftclip base2new --config recipes/quickstart.yaml
  peftclip fit --config RECIPE.yaml --print_config       the resolved recipe
  peftclip test --config recipes/zeroshot/image_folder.yaml --data.root /data/my_classes \\
      --model.backbone.pretrained /weights/ViT-B-16.pt

Recipes are YAML files (see recipes/); any key can be overridden on the command line.
`peftclip COMMAND --help` lists every option of a command."""


def _summary(entry: Command) -> str:
    """A command's line in ``peftclip --help``: the first line of its docstring."""
    if isinstance(entry, RecipeCommand):
        return entry.help or _summary(entry.run)
    if isinstance(entry, Lazy):
        return entry.summary()
    return inspect.getdoc(entry).splitlines()[0].rstrip(".")


def leaf_commands(
    table: dict = COMMANDS, prefix: tuple[str, ...] = ()
) -> dict[tuple[str, ...], Command]:
    """Every runnable command by its words, e.g. ``("data", "check")``, in table order."""
    leaves = {}
    for name, entry in table.items():
        if isinstance(entry, dict):
            leaves.update(leaf_commands(entry, (*prefix, name)))
        else:
            leaves[(*prefix, name)] = entry
    return leaves


def overview() -> str:
    """``peftclip --help``: every command with its one line, then examples."""
    leaves = {" ".join(words): entry for words, entry in leaf_commands().items()}
    width = max(map(len, leaves)) + 2
    lines = [
        "peftclip — parameter-efficient fine-tuning of a frozen CLIP.",
        "",
        "usage: peftclip COMMAND [options]",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}{_summary(entry)}" for name, entry in leaves.items()]
    return "\n".join([*lines, "", EXAMPLES])


class CommandParser(ArgumentParser):
    """jsonargparse's parser with peftclip's spelling of the options made from a signature.

    ``--cache-dir`` for the parameter ``cache_dir`` (``--cache_dir`` is accepted too; a config
    file says ``cache_dir``), and a ``bool`` as a flag pair ``--force`` / ``--no-force`` instead
    of jsonargparse's ``--force true``. jsonargparse's own ``--print_config`` keeps its name, as
    in every LightningCLI command.
    """

    def add_argument(self, *args, **kwargs):
        if not any(arg.startswith("--") for arg in args) or "--print_config" in args:
            return super().add_argument(*args, **kwargs)  # positionals, -h, --print_config
        if kwargs.get("type") is bool and kwargs.get("action") is None:
            del kwargs["type"]
            kwargs["action"] = ActionYesNo(no_prefix="no-")
        action = super().add_argument(*(arg.replace("_", "-") for arg in args), **kwargs)
        for arg in args:  # argparse names the destination after the first option: cache_dir
            if "_" in arg and not isinstance(action, ActionYesNo):
                self._option_string_actions.setdefault(arg, action)  # unlisted in --help
        return action


def _description(command: Callable) -> str:
    """A command's docstring without its ``Args:`` section: the text of its ``--help``."""
    doc = parse_docstring(inspect.getdoc(command))
    return "\n\n".join(filter(None, [doc.short_description, doc.long_description]))


def _optional_list_item(hint) -> type | None:
    """``X`` for the hint ``list[X] | None``, else None."""
    members = typing.get_args(hint)
    if typing.get_origin(hint) not in (typing.Union, types.UnionType) or type(None) not in members:
        return None
    lists = [member for member in members if typing.get_origin(member) is list]
    return typing.get_args(lists[0])[0] if len(lists) == 1 and len(members) == 2 else None


def _command_parser(command: Callable) -> CommandParser:
    """The parser of one command, made from its signature and docstring."""
    parser = CommandParser(description=_description(command))
    parser.add_argument("--config", action=ActionConfigFile, help="options as a YAML file")
    if inspect.isclass(command):
        parser.add_class_arguments(command, as_group=False, fail_untyped=True)
        return parser
    # jsonargparse reads a list argument as one JSON/YAML list ("[a, b]"); a command line wants
    # `data check --root R a b` and `leaderboard --methods a b`, so a list positional is added
    # here with nargs="*" and an optional list option (`list[X] | None = None`) with nargs="+".
    hints = typing.get_type_hints(command)
    docs = {p.arg_name: p.description for p in parse_docstring(inspect.getdoc(command)).params}
    lists = []
    for name, parameter in inspect.signature(command).parameters.items():
        positional = parameter.kind is parameter.POSITIONAL_OR_KEYWORD
        if positional and parameter.default is parameter.empty:
            if typing.get_origin(hints[name]) is list:
                (item,) = typing.get_args(hints[name])
                parser.add_argument(name, nargs="*", type=item, default=[], help=docs.get(name))
                lists.append(name)
        elif parameter.default is None and (item := _optional_list_item(hints[name])):
            parser.add_argument(
                f"--{name}", nargs="+", type=item, default=None, help=docs.get(name)
            )
            lists.append(name)
    parser.add_function_arguments(
        command, as_group=False, as_positional=True, fail_untyped=True, skip=set(lists)
    )
    return parser


def build_parser(
    table: dict = COMMANDS, parser: ArgumentParser | None = None, words: tuple[str, ...] = ()
) -> ArgumentParser:
    """The jsonargparse parser of ``peftclip`` (a ``RecipeCommand`` appears by name only)."""
    parser = parser or ArgumentParser(prog="peftclip")
    subcommands = parser.add_subcommands(required=True, dest="command")
    for name, entry in table.items():
        if isinstance(entry, dict):
            subparser = ArgumentParser()
            subcommands.add_subcommand(name, subparser, help=" | ".join(entry))
        elif isinstance(entry, RecipeCommand):
            subparser = ArgumentParser(add_help=False)
            subcommands.add_subcommand(name, subparser, help=_summary(entry))
        else:
            subparser = _command_parser(_loaded(entry))
            subcommands.add_subcommand(name, subparser, help=_summary(entry))
        subparser.prog = " ".join(["peftclip", *words, name])
        if isinstance(entry, dict):
            build_parser(entry, subparser, (*words, name))
    return parser


def _resolve(argv: list[str]) -> tuple[list[str], Command | dict]:
    """The command words at the start of ``argv`` and the table entry they name.

    Raises:
        PeftClipError: A word names no command (with the closest names).
    """
    words: list[str] = []
    entry: Command | dict = COMMANDS
    while isinstance(entry, dict) and len(argv) > len(words):
        word = argv[len(words)]
        if word.startswith("-"):
            break
        if word not in entry:
            where = " ".join(["peftclip", *words])
            close = difflib.get_close_matches(word, list(entry), n=3)
            hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
            raise PeftClipError(
                f"'{where}' has no command '{word}'; {hint}`{where} --help` lists them all."
            )
        words.append(word)
        entry = entry[word]
    return words, entry


def _run(argv: list[str]) -> int:
    words, entry = _resolve(argv)
    prog = " ".join(["peftclip", *words])
    if isinstance(entry, RecipeCommand):
        return _loaded(entry.run)(argv[len(words) :]) or 0
    if isinstance(entry, dict):  # a group: its parser knows (and imports) only its commands
        build_parser(entry, ArgumentParser(prog=prog), tuple(words)).parse_args(argv[len(words) :])
        return 0  # not reached: a group without a command is an error, its --help exits
    command = _loaded(entry)
    parser = _command_parser(command)
    parser.prog = prog
    options = parser.parse_args(argv[len(words) :]).as_dict()
    options.pop("config", None)
    if inspect.isclass(command):
        return command(**options)() or 0
    return command(**options) or 0


class _DropLightningTips(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger / litmodels" log records, and its
    "Loading `train_dataloader` to estimate number of stepping batches" (peftclip asks for the
    run length to set schedules; the loader is the one the fit then uses)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith("💡 Tip:")
            or message.startswith("Loading `train_dataloader` to estimate number of stepping")
        )


def quiet_third_party_messages() -> None:
    """Silences third-party messages that tell a peftclip user nothing; peftclip's own stay.

    Each is matched by its message (and module), so anything else still shows:

    * Lightning's "💡 Tip: ..." advertisements for its cloud services (log records of the logger
      that ``rank_zero_info`` writes to; getting it by name works before Lightning is imported).
    * Lightning 2.6's ``_pytree`` helper builds torch's deprecated ``LeafSpec`` (a FutureWarning
      since torch 2.14, raised inside Lightning: nothing a user can change).
    * torch's "`torch.jit.load` is deprecated": OpenAI ships its CLIP weights only as TorchScript
      archives, which backbone/loading.py reads once for their state dict; nothing else reads
      them, so the advice ("switch to torch.export") has nothing to switch to.
    * "Precision 16-mixed is not supported by the model summary": mixed precision keeps the
      weights in float32, which is what the summary then assumes.
    * "does not have many workers": the recipes state ``data.num_workers`` on purpose (0 for the
      in-memory world datasets, where worker processes only add start-up time).
    * "LightningCLI's args parameter is intended ...": peftclip hands LightningCLI its
      arguments itself, by design.
    """
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLightningTips) for f in tips.filters):
        tips.addFilter(_DropLightningTips())
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    warnings.filterwarnings(
        "ignore",
        message=r"`torch\.jit\.load` is deprecated",
        category=FutureWarning,
        module=r"torch\.jit\._serialization",
    )
    warnings.filterwarnings(
        "ignore", message=r"Precision \S+-mixed is not supported by the model summary"
    )
    warnings.filterwarnings("ignore", message=r"The '\w+' does not have many workers")
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")


def main(argv: list[str] | None = None) -> int:
    """``peftclip COMMAND ...``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(overview())
        return 0
    quiet_third_party_messages()
    try:
        return _run(argv)
    except PeftClipError as error:
        if os.environ.get("PEFTCLIP_TRACEBACK"):
            raise
        print(f"peftclip: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
