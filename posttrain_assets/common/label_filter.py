"""Label filters: keep a source's rows by numeric label columns of the rows themselves, no model.

A condition is text, as written in the registry (`label_filter`):

    pass_rate_72b_tir <= 0.1        COLUMN OP NUMBER   (OP: <=, <, >=, >, ==, !=)
    0.2 <= pass_rate < 0.8          LOW OP COLUMN OP HIGH   (OP: <=, <)

A row passes when every condition holds. The value is read from the row's column: a number, or text
that parses as one ("0.03125"; a bool is not a label). Rows that cannot be judged are never kept and
are counted apart from the rows a condition rejects:

- `label_missing`: the column is absent or null;
- `label_not_available`: text that says so ("n/a", "na", "none", "null", "nan", "-", "") or a NaN;
- `label_unparsable`: any other text, or a value that is not a number (a list, a bool, ...);
- `label_rule_failed`: a number that fails the condition.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
import operator
import re
from typing import Any, Optional

from resources.reasons import Reason

OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq,
       "!=": operator.ne}
NOT_AVAILABLE = frozenset({"n/a", "na", "none", "null", "nan", "-", ""})
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_COL = r"[A-Za-z_][\w.\-]*"
_OP = r"<=|<|>=|>|==|!="
_SIMPLE = re.compile(rf"^\s*(?P<col>{_COL})\s*(?P<op>{_OP})\s*(?P<num>{_NUM})\s*$")
_RANGE = re.compile(rf"^\s*(?P<lo>{_NUM})\s*(?P<op1><=|<)\s*(?P<col>{_COL})\s*(?P<op2><=|<)\s*(?P<hi>{_NUM})\s*$")


class LabelFilterError(ValueError):
    """A condition that cannot be parsed; the message shows the accepted forms."""


@dataclass(frozen=True)
class Condition:
    text: str
    column: str
    checks: tuple[tuple[str, float], ...]  # (op, number): value OP number for each

    def holds(self, value: float) -> bool:
        return all(OPS[op](value, num) for op, num in self.checks)


def parse_condition(text: str) -> Condition:
    m = _SIMPLE.match(text)
    if m:
        return Condition(text.strip(), m["col"], ((m["op"], float(m["num"])),))
    m = _RANGE.match(text)
    if m:
        lo, hi = float(m["lo"]), float(m["hi"])
        if lo > hi:
            raise LabelFilterError(f"{text!r}: the range is empty ({lo} > {hi})")
        flip = {"<=": ">=", "<": ">"}
        return Condition(text.strip(), m["col"], ((flip[m["op1"]], lo), (m["op2"], hi)))
    raise LabelFilterError(f"cannot parse condition {text!r}: write 'COLUMN OP NUMBER' (OP one of "
                           f"{', '.join(OPS)}) or 'LOW <= COLUMN <= HIGH' (< or <=), e.g. "
                           f"'pass_rate_72b_tir <= 0.1'")


def label_value(value: Any) -> tuple[Optional[float], Optional[str]]:
    """(the number, None) or (None, the reason it is not one: label_missing / label_not_available /
    label_unparsable)."""
    if value is None:
        return None, Reason.LABEL_MISSING
    if isinstance(value, bool):
        return None, Reason.LABEL_UNPARSABLE
    if isinstance(value, (int, float)):
        return (None, Reason.LABEL_NOT_AVAILABLE) if isinstance(value, float) and math.isnan(value) else (float(value), None)
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in NOT_AVAILABLE:
            return None, Reason.LABEL_NOT_AVAILABLE
        try:
            number = float(text)
        except ValueError:
            return None, Reason.LABEL_UNPARSABLE
        return (None, Reason.LABEL_NOT_AVAILABLE) if math.isnan(number) else (number, None)
    return None, Reason.LABEL_UNPARSABLE


class LabelFilter:
    """The conditions of one source; `judge(row)` -> None (kept) or (reason, column, detail)."""

    def __init__(self, conditions: tuple[str, ...] | list[str]):
        self.conditions = [parse_condition(c) for c in conditions]

    def __bool__(self) -> bool:
        return bool(self.conditions)

    def judge(self, row: dict) -> Optional[tuple[str, str, str]]:
        for cond in self.conditions:
            raw = row.get(cond.column)
            number, why = label_value(raw)
            if why is not None:
                shown = "absent" if cond.column not in row else repr(raw)[:80]
                return why, cond.column, f"{cond.column} = {shown}: not a number ({cond.text})"
            if not cond.holds(number):
                return "label_rule_failed", cond.column, f"{cond.column} = {raw!r} fails {cond.text}"
        return None


# the sources registry checks `label_filter` conditions with this parser (partitions/registry.py)
from partitions.registry import register_label_filter_parser  # noqa: E402 - registration after the definitions

register_label_filter_parser(parse_condition)
