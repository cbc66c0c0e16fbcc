"""The seed's (Magpie's) filter over a `quality_tags` table, as a selection method. Pure: pyarrow only.

Rules, checked in this fixed order; a dropped row is counted under the FIRST rule it fails:

    1 input_quality    input_quality in `qualities` (default good, excellent)      low_input_quality | input_quality_missing
    2 instruct_reward  instruct_reward > `min_reward` (off when None, the default)   low_instruct_reward | instruct_reward_missing
    3 colon            the instruction does not end with ':' or '：' (trailing whitespace ignored)   ends_with_colon
    4 near_duplicate   not a later near-duplicate: min_similar_id null or the row's own id
                       (neighbors.gen_dis: only the first row of a group names itself)   near_duplicate | neighbors_missing
    5 length           min_length <= length <= max_length (each off when None): characters for
                       ja / zh, whitespace words otherwise                      too_short | too_long
    6 difficulty       min_difficulty <= difficulty <= max_difficulty (very easy..very hard; off when None)
                                                                                too_easy | too_hard | difficulty_missing
    7 safety           safety == safe (off unless `safe_only`)                  unsafe | safety_missing

A null tag under an active rule is its own reason (`*_missing`): a row the tagger failed on is not
silently kept or silently judged. `near_duplicate` reads `repeat_count` to tell "no neighbour
within the threshold" (0, min_similar_id null) from "not computed" (null).

Besides the first-failing-rule counts, `per_rule` counts for every active rule, over ALL rows, how
many rows it alone would remove (and of those, how many for a missing tag): the share each rule
removes on its own.

Why `min_reward` defaults to None: a reward threshold only means something on one reward scale.
Magpie's released sets kept `instruct_reward > -10` on its reward model's scale (FsfairX-LLaMA3-RM /
ArmoRM-class scalar rewards); this project's CPU default reward is the 1-5 judge (mean of
UltraFeedback's four aspects) on the embedded 135M model, which carries no signal (resources/reward/judge.py).
Set it to the scale of the configured reward: e.g. -10 with a FsfairX-style classifier as Magpie did,
or 3.0 for the judge on a real model.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

import pyarrow as pa

from resources.reasons import Reason

from ..common.text import length_units as instruction_length

DIFFICULTY_ORDER = ("very easy", "easy", "medium", "hard", "very hard")
QUALITY_LEVELS = ("very poor", "poor", "average", "good", "excellent")
COLONS = (":", "：")
RULES = ("input_quality", "instruct_reward", "colon", "near_duplicate", "length", "difficulty", "safety")
#: the table's columns each rule reads
RULE_COLUMNS = {"input_quality": ("input_quality",), "instruct_reward": ("instruct_reward",),
                "colon": ("instruction",), "near_duplicate": ("min_similar_id", "repeat_count"),
                "length": ("instruction", "language"), "difficulty": ("difficulty",), "safety": ("safety",)}
#: the reason each rule gives for a missing tag
MISSING = {"input_quality": Reason.INPUT_QUALITY_MISSING, "instruct_reward": Reason.INSTRUCT_REWARD_MISSING,
           "near_duplicate": Reason.NEIGHBORS_MISSING, "difficulty": Reason.DIFFICULTY_MISSING, "safety": Reason.SAFETY_MISSING}


@dataclass(frozen=True)
class FilterRules:
    qualities: tuple[str, ...] = ("good", "excellent")  # empty: the rule is off
    min_reward: Optional[float] = None  # keep instruct_reward > min_reward (see the module docstring)
    no_trailing_colon: bool = True
    drop_near_duplicates: bool = True
    min_length: Optional[int] = None
    max_length: Optional[int] = None
    min_difficulty: Optional[str] = None
    max_difficulty: Optional[str] = None
    safe_only: bool = False

    def check(self) -> None:
        bad = [q for q in self.qualities if q not in QUALITY_LEVELS]
        if bad:
            raise ValueError(f"qualities: unknown level(s) {', '.join(map(repr, bad))} (levels: {', '.join(QUALITY_LEVELS)})")
        for name in ("min_difficulty", "max_difficulty"):
            v = getattr(self, name)
            if v is not None and v not in DIFFICULTY_ORDER:
                raise ValueError(f"{name}: must be one of {', '.join(DIFFICULTY_ORDER)} or null, got {v!r}")
        if self.min_difficulty and self.max_difficulty and \
                DIFFICULTY_ORDER.index(self.min_difficulty) > DIFFICULTY_ORDER.index(self.max_difficulty):
            raise ValueError(f"min_difficulty {self.min_difficulty!r} is above max_difficulty {self.max_difficulty!r}")
        for name in ("min_length", "max_length"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name}: must be >= 0 or null, got {v}")
        if self.min_length is not None and self.max_length is not None and self.min_length > self.max_length:
            raise ValueError(f"min_length {self.min_length} is above max_length {self.max_length}")

    def active(self) -> list[str]:
        on = {"input_quality": bool(self.qualities), "instruct_reward": self.min_reward is not None,
              "colon": self.no_trailing_colon, "near_duplicate": self.drop_near_duplicates,
              "length": self.min_length is not None or self.max_length is not None,
              "difficulty": self.min_difficulty is not None or self.max_difficulty is not None,
              "safety": self.safe_only}
        return [r for r in RULES if on[r]]


def rule_verdict(rule: str, row: dict, rules: FilterRules) -> Optional[str]:
    """Why `rule` drops `row` (a reason), or None when the row passes it."""
    if rule == "input_quality":
        q = row["input_quality"]
        return MISSING[rule] if q is None else (None if q in rules.qualities else Reason.LOW_INPUT_QUALITY)
    if rule == "instruct_reward":
        r = row["instruct_reward"]
        return MISSING[rule] if r is None else (None if r > rules.min_reward else Reason.LOW_INSTRUCT_REWARD)
    if rule == "colon":
        return Reason.ENDS_WITH_COLON if (row["instruction"] or "").rstrip().endswith(COLONS) else None
    if rule == "near_duplicate":
        if row["repeat_count"] is None:
            return MISSING[rule]
        sim = row["min_similar_id"]
        return Reason.NEAR_DUPLICATE if sim is not None and sim != row["id"] else None
    if rule == "length":
        n = instruction_length(row["instruction"] or "", row["language"])
        if rules.min_length is not None and n < rules.min_length:
            return Reason.TOO_SHORT
        if rules.max_length is not None and n > rules.max_length:
            return Reason.TOO_LONG
        return None
    if rule == "difficulty":
        d = row["difficulty"]
        if d is None:
            return MISSING[rule]
        if d not in DIFFICULTY_ORDER:
            raise ValueError(f"row {row['id']!r}: field 'difficulty': {d!r} is not one of {', '.join(DIFFICULTY_ORDER)}")
        i = DIFFICULTY_ORDER.index(d)
        if rules.min_difficulty is not None and i < DIFFICULTY_ORDER.index(rules.min_difficulty):
            return Reason.TOO_EASY
        if rules.max_difficulty is not None and i > DIFFICULTY_ORDER.index(rules.max_difficulty):
            return Reason.TOO_HARD
        return None
    if rule == "safety":
        s = row["safety"]
        return MISSING[rule] if s is None else (None if s == "safe" else Reason.UNSAFE)
    raise ValueError(f"unknown rule {rule!r}")


@dataclass
class FilterResult:
    kept: pa.Table
    dropped: list[tuple[int, str, str]]  # (row position, rule, reason) of every dropped row, first failing rule
    removed_by_reason: Counter
    per_rule: dict  # rule -> {"removes": n, "missing": m, "share": n / rows}
    active: list[str]


def apply_filter(table: pa.Table, rules: FilterRules) -> FilterResult:
    """Keep the rows that pass every active rule (see the module docstring)."""
    rules.check()
    active = rules.active()
    need = {"id"} | {c for r in active for c in RULE_COLUMNS[r]}
    missing = sorted(c for c in need if c not in table.column_names)
    if missing:
        raise ValueError(f"the tags table has no column {', '.join(map(repr, missing))} needed by the active rules "
                         f"({', '.join(active)})")
    rows = table.select(sorted(need)).to_pylist()
    keep, dropped, first = [], [], Counter()
    alone = {r: Counter() for r in active}
    for i, row in enumerate(rows):
        verdicts = [(r, rule_verdict(r, row, rules)) for r in active]
        for r, why in verdicts:
            if why is not None:
                alone[r][why] += 1
        failing = [(r, why) for r, why in verdicts if why is not None]
        if failing:
            r, why = failing[0]
            first[why] += 1
            dropped.append((i, r, why))
        else:
            keep.append(i)
    n = len(rows)
    per_rule = {r: {"removes": sum(c.values()), "missing": c.get(MISSING.get(r, ""), 0),
                    "share": round(sum(c.values()) / n, 4) if n else 0.0, "by_reason": dict(sorted(c.items()))}
                for r, c in alone.items()}
    return FilterResult(kept=table.take(pa.array(keep, pa.int64())), dropped=dropped, removed_by_reason=first,
                        per_rule=per_rule, active=active)


def per_rule_markdown(res: FilterResult, rows: int) -> str:
    lines = ["| order | rule | removes alone | share | of which missing tag | dropped here (first failing) |",
             "|---|---|---|---|---|---|"]
    first_by_rule = Counter(r for _, r, _ in res.dropped)
    for k, r in enumerate(res.active, 1):
        p = res.per_rule[r]
        lines.append(f"| {k} | {r} | {p['removes']} | {p['share']:.1%} | {p['missing']} | {first_by_rule.get(r, 0)} |")
    lines.append(f"| | **kept** | {res.kept.num_rows} of {rows} | | | |")
    return "\n".join(lines)
