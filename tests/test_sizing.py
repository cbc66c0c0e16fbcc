"""Work sizes resolved by backend (posttrain_assets/common/sizing.py): on the embedded CPU engine the
LLM steps default to the demo's sizes, on any other backend to the full sizes; a value in the run
config wins; the launchpad shows the fields as null with both sizes in their description."""

import dagster as dg
import pytest

from posttrain_assets.common.sizing import full_sizes, resolve_sizes
from posttrain_assets.records.unify import COT_SCHEMA, SFT_SCHEMA
from posttrain_assets.scoring.assets import DifficultyConfig, difficulty_scores
from posttrain_assets.synthesis.assets import EvolConfig, PairsConfig, SolutionsConfig, evolved_instructions
from posttrain_assets.tagging.assets import QualityTagsConfig
from resources.llm import LLMResource
from resources.storage import ParquetStore

from .conftest import BUNDLED_REGISTRY
from .helpers import resources_for, upstream_specs

#: the sizes the demo passed as run config before they became the embedded engine's defaults
CPU = {
    DifficultyConfig: {"max_new_tokens": 64, "max_items": 12, "max_input_chars": 1500, "max_gold_chars": 1000},
    EvolConfig: {"max_prompts": 2, "max_input_chars": 1500, "evolve_max_tokens": 64, "judge_max_tokens": 48,
                 "answer_max_tokens": 96},
    SolutionsConfig: {"n": 2, "max_tokens": 128, "judge_max_tokens": 48, "max_judge_failure_rate": 0.75,
                      "judge_max_chars": 1000, "max_input_chars": 1500, "max_problems": 3},
    QualityTagsConfig: {"max_tokens": 96},
    PairsConfig: {"max_tokens": 96, "max_prompts": 4, "max_reward_failure_rate": 0.9},
}
#: the defaults before (full size), still the defaults on any other backend
FULL = {
    DifficultyConfig: {"max_new_tokens": 256, "max_items": 0, "max_input_chars": 4000, "max_gold_chars": 2000},
    EvolConfig: {"max_prompts": 0, "max_input_chars": 4000, "evolve_max_tokens": 256, "judge_max_tokens": 128,
                 "answer_max_tokens": 512},
    SolutionsConfig: {"n": 4, "max_tokens": 512, "judge_max_tokens": 128, "max_judge_failure_rate": 0.2,
                      "judge_max_chars": 2000, "max_input_chars": 4000, "max_problems": 0},
    QualityTagsConfig: {"max_tokens": 0},
    PairsConfig: {"max_tokens": 256, "max_prompts": 0, "max_reward_failure_rate": 0.5},
}
SERVED = {"backend": "openai", "model": "some-served-model"}


def _sizes(config, fields):
    return {k: getattr(config, k) for k in fields}


@pytest.mark.parametrize("cls", list(CPU), ids=lambda c: c.__name__)
def test_sizes_by_backend(cls):
    assert full_sizes(cls) == FULL[cls]
    default = cls()
    assert all(getattr(default, k) is None for k in CPU[cls])  # "auto" until the step knows its models
    embedded = LLMResource()
    served = LLMResource(models={"generator": SERVED, "judge": SERVED})
    assert _sizes(resolve_sizes(default, embedded, ["generator", "judge"]), CPU[cls]) == CPU[cls]
    assert _sizes(resolve_sizes(default, served, ["generator", "judge"]), CPU[cls]) == FULL[cls]
    # one served model among the step's models: full sizes (the CPU sizes are for the 135M engine only)
    mixed = LLMResource(models={"judge": SERVED})
    assert _sizes(resolve_sizes(default, mixed, ["generator", "judge"]), CPU[cls]) == FULL[cls]
    # a value set in the run config wins on either backend
    field = next(iter(CPU[cls]))
    pinned = cls(**{field: 7})
    assert getattr(resolve_sizes(pinned, embedded, ["generator"]), field) == 7
    assert getattr(resolve_sizes(pinned, served, ["generator"]), field) == 7


def test_the_launchpad_schema_shows_null_with_both_sizes():
    fields = evolved_instructions.op.config_schema.config_type.fields
    f = fields["answer_max_tokens"]
    assert f.default_provided and f.default_value is None and not f.is_required
    assert f.description == ("new tokens per answer to an evolved instruction. Default null = auto: 96 when the step's "
                             "models run on the embedded CPU engine, 512 on any other backend")
    assert fields["rounds"].default_value == 2  # a plain field keeps its plain default


def test_a_run_logs_the_sizes_it_resolved(tmp_path, instance):
    """difficulty_scores with its default config on the embedded engine, over empty records (no
    model is loaded): the run's log says which sizes the step used."""
    root = str(tmp_path / "storage")
    store = ParquetStore(root)
    store.write(COT_SCHEMA.empty_table(), store.path("cot_records", "empty"))
    store.write(SFT_SCHEMA.empty_table(), store.path("sft_records", "empty"))
    instance.add_dynamic_partitions("source", ["empty"])
    res = dg.materialize(upstream_specs("cot_records", "sft_records") + [difficulty_scores],
                         selection=[difficulty_scores], partition_key="empty", instance=instance,
                         resources=resources_for(root, BUNDLED_REGISTRY))
    logs = [e.user_message for e in instance.all_logs(res.run_id) if "auto sizes" in e.user_message]
    assert logs == ["auto sizes (embedded CPU engine): max_new_tokens=64, max_items=12, max_input_chars=1500, "
                    "max_gold_chars=1000"]
