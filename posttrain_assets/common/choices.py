"""Choice types for `dg.Config` fields whose values are a list or optional (Dagster refuses
`list[Literal]` and `Optional[Literal]`): a `StrEnum` whose member names are the values, so the
launchpad shows a drop-down of the values, YAML writes the values, and a value outside the list is
refused before the run starts, naming the field. Members compare equal to their strings."""

from __future__ import annotations

import enum
from typing import Iterable


def choice_enum(name: str, values: Iterable[str]) -> type[enum.StrEnum]:
    """A `StrEnum` named `name` with one member per value (the member's name is the value)."""
    return enum.StrEnum(name, {v: v for v in values})


def plain(value):
    """A config value as plain strings: a member -> its value, a list of members -> a list of str
    (defaults arrive as plain strings, chosen values as members)."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value.value if isinstance(value, enum.Enum) else value
