"""Work sizes that depend on where the models run. A size field declared with `auto(cpu, full, ...)`
defaults to null ("auto") in the launchpad and resolves at run time: to `cpu` when every model the
step uses runs on the embedded engine (SmolLM2-135M on the CPU: the demo's sizes, so "Materialize
all" on the bundled sources takes about the demo's time on 2 cores), else to `full`. A value set in
the run config always wins."""

from __future__ import annotations

from typing import Any, Iterable, TypeVar

from pydantic import BaseModel, Field

C = TypeVar("C", bound=BaseModel)  # a dagster Config (a pydantic model)


def auto(cpu: Any, full: Any, doc: str) -> Any:
    """A Config field default: null = `cpu` on the embedded engine, `full` on any other backend."""
    return Field(default=None, description=f"{doc}. Default null = auto: {cpu} when the step's models run on "
                                           f"the embedded CPU engine, {full} on any other backend",
                 json_schema_extra={"auto": {"cpu": cpu, "full": full}})


def on_cpu(llm, models: Iterable[str]) -> bool:
    """Whether every named model of the LLM resource runs on the embedded engine."""
    return all(llm.spec(m).backend == "embedded" for m in models if m)


def resolve_sizes(config: C, llm, models: Iterable[str], log=None) -> C:
    """`config` with every auto field left null replaced by its size for these models' backend."""
    which = "cpu" if on_cpu(llm, models) else "full"
    sizes = {name: both[which] for name, both in _auto_fields(type(config)).items() if getattr(config, name) is None}
    if sizes and log is not None:
        log(f"auto sizes ({'embedded CPU engine' if which == 'cpu' else 'full size'}): "
            + ", ".join(f"{k}={v}" for k, v in sizes.items()))
    return config.model_copy(update=sizes)


def _auto_fields(config_cls: type[BaseModel]) -> dict[str, dict]:
    return {name: field.json_schema_extra["auto"] for name, field in config_cls.model_fields.items()
            if isinstance(field.json_schema_extra, dict) and "auto" in field.json_schema_extra}


def full_sizes(config_cls: type[BaseModel]) -> dict[str, Any]:
    """The full size of every auto field of a Config class (run config that pins them on any backend)."""
    return {name: both["full"] for name, both in _auto_fields(config_cls).items()}
