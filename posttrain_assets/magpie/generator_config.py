"""The `magpie` generator's `generator_config` as the sources registry validates it: the fields with
their defaults (MAGPIE_DEFAULTS), the checks (types, ranges, the family / variant against the
pre-query templates), and the columns magpie_instructions writes (MAGPIE_FIELDS). Registered with
the registry on import (partitions/registry.py register_generator). Pure."""

from __future__ import annotations

from typing import Any

from partitions.registry import EntryError, register_generator

from .templates import TemplateError, default_templates

#: `generator_config` of `generator: magpie`: field -> default (None: no default)
MAGPIE_DEFAULTS: dict[str, Any] = {
    "family": "smollm2",  # pre-query template family (posttrain_assets/magpie/templates/); smollm2 = the embedded model
    "variant": None,  # None (plain template) | a variant of the family: math, math.algebra, ..., code, translation, ja
    "model": "generator",  # the LLMResource model name that writes both instructions and responses
    "total_prompts": None,  # required: instructions requested (rows_in of magpie_instructions)
    "ins_temp": 1.0,  # instruction sampling (upstream gen_ins.py defaults)
    "ins_top_p": 1.0,
    "ins_max_tokens": 512,
    "res_temp": 0.0,  # response decoding (upstream gen_res.py defaults)
    "res_top_p": 1.0,
    "res_max_tokens": 2048,
    "n": 200,  # instructions per model call (samples of one seeded request)
    "seed": 0,  # base seed; call i samples with a seed derived from (seed, i)
}
#: the columns magpie_instructions writes, as the generic adapter would read them (see SourceSpec)
MAGPIE_FIELDS = {"prompt": "instruction", "response": "response", "id": "uuid"}


def validate_config(cfg: Any) -> dict[str, Any]:
    """`generator_config` of a magpie source, with the defaults filled in; EntryError names the field."""
    if not isinstance(cfg, dict):
        raise EntryError("generator_config",
                         f"required: a mapping with at least total_prompts (fields: {', '.join(MAGPIE_DEFAULTS)})")
    unknown = sorted(set(cfg) - set(MAGPIE_DEFAULTS), key=str)
    if unknown:
        raise EntryError(f"generator_config.{unknown[0]}", f"unknown field; allowed: {', '.join(MAGPIE_DEFAULTS)}")
    out = {k: cfg.get(k, d) for k, d in MAGPIE_DEFAULTS.items()}

    def bad(name: str, msg: str) -> EntryError:
        return EntryError(f"generator_config.{name}", msg)

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for name in ("family", "model"):
        if not isinstance(out[name], str) or not out[name].strip():
            raise bad(name, f"must be a non-empty string, got {out[name]!r}")
    if out["variant"] is not None and (not isinstance(out["variant"], str) or not out["variant"]):
        raise bad("variant", f"must be null or a variant name (math, math.algebra, code, ja, ...), got {out['variant']!r}")
    if "total_prompts" not in cfg:
        raise bad("total_prompts", "required: the number of instructions to generate (a positive integer)")
    for name in ("total_prompts", "ins_max_tokens", "res_max_tokens", "n"):
        if not is_int(out[name]) or out[name] < 1:
            raise bad(name, f"must be a positive integer, got {out[name]!r}")
    if not is_int(out["seed"]) or out["seed"] < 0:
        raise bad("seed", f"must be a non-negative integer, got {out['seed']!r}")
    for name in ("ins_temp", "res_temp"):
        v = out[name]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 5:
            raise bad(name, f"must be a number from 0 to 5, got {v!r}")
        out[name] = float(v)
    for name in ("ins_top_p", "res_top_p"):
        v = out[name]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 1:
            raise bad(name, f"must be a number in (0, 1], got {v!r}")
        out[name] = float(v)
    # the family and variant against the pre-query templates
    templates = default_templates()
    if out["family"] not in templates.families:
        raise bad("family", f"unknown pre-query template family {out['family']!r} "
                            f"(known: {', '.join(templates.families)})")
    if out["variant"] is not None:
        try:
            templates.system_prompt(out["family"], out["variant"])
        except TemplateError as exc:
            raise bad("variant", str(exc)) from None
    return out


register_generator("magpie", fields=MAGPIE_FIELDS, validate=validate_config)
