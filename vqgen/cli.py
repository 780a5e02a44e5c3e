"""Command lines built from config dataclasses, so each default and each help text is written once.

A field becomes `--name` (or `--<metadata["flag"]>`); its help comes from `metadata["help"]`.
bool fields are switches (`--x` / `--no-x`), `Literal` fields get choices,
`list[int]` fields take several values, `X | None` accepts `none`. `--config FILE` (YAML or JSON)
gives values for any flag; flags on the command line win.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from .fields import field_default

T = TypeVar("T")


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", f.name)


def _none_or(parse):
    def convert(text: str):
        return None if text.lower() == "none" else parse(text)

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def add_dataclass_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                            *, defaults: dict[str, Any] | None = None, exclude: tuple[str, ...] = ()) -> None:
    """One option per field of `cls` (minus `exclude`); `defaults` overrides a field's default for this script."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        kind = hints[f.name]
        default = (defaults or {}).get(f.name, field_default(f))
        name = "--" + flag_name(f)
        help_text = f.metadata.get("help", "")
        choices = f.metadata["choices"]() if "choices" in f.metadata else None
        args = typing.get_args(kind)
        optional = typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args
        if optional:
            kind = next(a for a in args if a is not type(None))
        if kind is bool:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(kind) is Literal:
            parser.add_argument(name, choices=list(typing.get_args(kind)), default=default, help=help_text)
        elif typing.get_origin(kind) is list:
            (item,) = typing.get_args(kind)
            parser.add_argument(name, nargs="*", type=item, default=default, help=help_text, choices=choices)
        elif kind in (int, float, str):
            parser.add_argument(name, type=_none_or(kind) if optional else kind, default=default, help=help_text,
                                choices=choices)
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line form for {kind}")


def dataclass_from_arguments(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """An instance of `cls` from the parsed options its fields made (plus `overrides`)."""
    values = {f.name: getattr(args, flag_name(f).replace("-", "_")) for f in dataclasses.fields(cls)
              if f.init and hasattr(args, flag_name(f).replace("-", "_"))}
    return cls(**{**values, **overrides})


def read_config_file(path: str) -> dict[str, Any]:
    """A run's options from a YAML or JSON file: `{flag_name: value}`."""
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise SystemExit(f"--config {path}: expected a mapping of option names to values, got {type(data).__name__}")
    return data


def config_file_tokens(parser: argparse.ArgumentParser, data: dict[str, Any], source: str) -> list[str]:
    """The file's values as command-line tokens, so argparse checks their types and choices as for flags."""
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    unknown = sorted(set(data) - set(actions))
    if unknown:
        parser.error(f"--config {source} has unknown option(s) {unknown}; see --help for the names")
    tokens: list[str] = []
    for name, value in data.items():
        action, flag = actions[name], actions[name].option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                parser.error(f"--config {source}: {name} must be true or false, got {value!r}")
            tokens.append(flag if value else f"--no-{flag[2:]}")
        elif action.nargs in ("*", "+"):
            if not isinstance(value, list):
                parser.error(f"--config {source}: {name} must be a list, got {value!r}")
            tokens += [flag, *map(str, value)]
        elif isinstance(value, (dict, list)):
            parser.error(f"--config {source}: {name} takes one value, got {value!r}")
        else:
            tokens += [flag, "none" if value is None else str(value)]
    return tokens


@contextlib.contextmanager
def exit_on(*errors: type[Exception]) -> Iterator[None]:
    """A command's entry point: these errors (about what the user passed: an unreadable dataset, a damaged
    image) end it with their one-line message and exit status 2, as argparse's own errors do, not a traceback."""
    try:
        yield
    except errors as e:
        print(f"{Path(sys.argv[0]).stem}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def import_plugins(argv: list[str] | None) -> list[str]:
    """`--plugins MODULE ...`: import modules before the parser is built, so that what they register
    (a quantiser, a loss, a data source, a prior architecture) is a choice of this run."""
    import importlib
    import sys

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugins", nargs="*", default=[])
    modules = pre.parse_known_args(sys.argv[1:] if argv is None else argv)[0].plugins
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise SystemExit(f"--plugins {name}: cannot import it ({e}); pass an importable module name") from None
    return modules


def command_line_tokens(parser: argparse.ArgumentParser, argv: list[str] | None) -> list[str]:
    """Add `--config` and `--plugins` to `parser`; `argv` with the `--config` file's values put first as flags."""
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML or JSON file of option values (flags on the command line take precedence)")
    parser.add_argument("--plugins", nargs="*", default=[], metavar="MODULE",
                        help="modules to import first: what they register (quantisers, losses, data sources, "
                             "prior architectures) becomes a choice of this run")
    argv = sys.argv[1:] if argv is None else list(argv)
    first, _ = parser.parse_known_args(argv)
    if first.config:
        argv = config_file_tokens(parser, read_config_file(first.config), first.config) + argv
    return argv


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`parser.parse_args`, with `--config FILE` supplying values that flags on the command line override."""
    return parser.parse_args(command_line_tokens(parser, argv))


def given_options(parser: argparse.ArgumentParser, tokens: list[str]) -> set[str]:
    """The options `tokens` set themselves (a flag, or a `--config` value), as opposed to the parser's defaults
    (a preset's included): a namespace holding a marker for every option keeps the marker where none is given."""
    unset = object()
    namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != argparse.SUPPRESS})
    parser.parse_known_args(tokens, namespace)
    return {name for name, value in vars(namespace).items() if value is not unset}
