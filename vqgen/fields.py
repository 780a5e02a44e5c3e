"""Config dataclass fields that carry their own help text, so a config states each default and its
meaning once: the command line (`vqgen.cli`) reads both from here, and model code needs no CLI."""

from __future__ import annotations

import dataclasses
from typing import Any


def option(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING,
           flag: str | None = None, choices: Any = None) -> Any:
    """A dataclass field with its command-line help (and flag name, when it differs from the field's;
    `choices`, a callable, when they come from a registry filled at import time)."""
    metadata = {"help": help, **({"flag": flag} if flag else {}), **({"choices": choices} if choices else {})}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def field_default(f: dataclasses.Field) -> Any:
    """The value a field takes when none is given (None for a required field)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None
