"""Every LLM stage as a small, fully specified case (inputs written here, every size explicit in the
run config), materialised in process: used by the reliability tests and by `tests/stage_worker.py`
(the subprocess a test SIGKILLs mid-stage). Sizes are passed explicitly so that the counts do not
depend on the Configs' defaults."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import dagster as dg
import pyarrow as pa

from posttrain_assets.ingest.loaders import load_rows, rows_to_table
from posttrain_assets.ingest.merging import merge_prompts
from posttrain_assets.magpie.assets import magpie_instructions
from posttrain_assets.magpie.generation import OUTPUT_SCHEMA as MAGPIE_SCHEMA
from posttrain_assets.records.unify import COT_SCHEMA, SFT_SCHEMA, cot_from
from posttrain_assets.scoring.assets import difficulty_scores
from posttrain_assets.synthesis.assets import EVOL_INPUTS, evolved_instructions, generated_solutions, preference_pairs
from posttrain_assets.synthesis.evolution import DEPTH_METHODS
from posttrain_assets.synthesis.pairs import INPUTS as PAIR_INPUTS
from posttrain_assets.tagging.assets import quality_tags
from posttrain_assets.tagging.tags import TAG_INPUTS
from partitions.registry import load_registry
from resources.llm import LLMResource
from resources.reward import JudgeReward, RewardResource
from resources.storage import ParquetStore

from .helpers import REPO, SAMPLE, resources_for, upstream_specs, write_registry

BUNDLED_REGISTRY = REPO / "partitions" / "sources.yaml"
#: the cache file a case's LLMResource() writes (default cache_dir: under the storage root)
CACHE = Path("_llm_cache") / "llm_cache.sqlite"


def gsm8k_seeds(k: int) -> list[dict]:
    """The first k bundled GSM8K problems as selected_seeds rows."""
    rows = [json.loads(x) for x in (SAMPLE / "gsm8k" / "train_300.jsonl").read_text().splitlines()[:k]]
    return [{"all_prompt_id": f"gsm8k:{i}", "source": "gsm8k", "prompt": r["question"],
             "answer": r["answer"].split("####")[-1].strip(), "solution": r["answer"]} for i, r in enumerate(rows)]


def write_seeds(root: str, rows: list[dict], key: str = "gsm8k") -> None:
    """selected_seeds rows + empty cot / sft records (what generated_solutions and evolution read)."""
    store = ParquetStore(root)
    cols = ["all_prompt_id", "source", "prompt", "answer", "solution"]
    store.write(pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in cols}),
                store.path("selected_seeds", key))
    store.write(COT_SCHEMA.empty_table(), store.path("cot_records", key))
    store.write(SFT_SCHEMA.empty_table(), store.path("sft_records", key))


def _gsm_records(root: str) -> None:
    spec = load_registry(BUNDLED_REGISTRY).get("gsm8k")
    cot, _ = cot_from(merge_prompts(rows_to_table(load_rows(spec)), spec).table)
    store = ParquetStore(root)
    store.write(cot, store.path("cot_records", "gsm8k"))
    store.write(SFT_SCHEMA.empty_table(), store.path("sft_records", "gsm8k"))


def _magpie_rows(root: str, key: str, rows: list[tuple[str, str, Optional[str]]]) -> None:
    table = pa.Table.from_pylist(
        [{"uuid": u, "index": i, "instruction": text, "response": resp, "model": "embedded:m", "family": "smollm2",
          "language": "en", "settings_hash": "h", "version": 1, "finish_reason": "stop"}
         for i, (u, text, resp) in enumerate(rows)], schema=MAGPIE_SCHEMA)
    store = ParquetStore(root)
    store.write(table, store.path("magpie_instructions", key))


SHORT_SEEDS = [{"all_prompt_id": "s:0", "source": "gsm8k", "prompt": "What is 12 + 7?", "answer": "19", "solution": "19"},
               {"all_prompt_id": "s:1", "source": "gsm8k", "prompt": "Name a primary colour.", "answer": "Red",
                "solution": "Red"}]
PROMPTS = [("u1", "Give me three tips for staying focused while studying.", "Put the phone away and take breaks."),
           ("u2", "Name the largest planet in the solar system.", "Jupiter."),
           ("u3", "Write a haiku about autumn rain.", None)]
MAGPIE_ENTRY = {"key": "magpie_rel", "kind": "synthetic", "generator": "magpie", "licence": "Apache-2.0",
                "generator_config": {"family": "smollm2", "total_prompts": 4, "n": 2, "ins_max_tokens": 48,
                                     "res_max_tokens": 24, "seed": 1}}


@dataclass(frozen=True)
class StageCase:
    asset: object  # the asset (or multi-asset) definition
    op: str  # its op name (run config)
    outputs: tuple[str, ...]  # the tables it writes
    row_id: tuple[str, ...]  # the columns that identify a row of outputs[0] (unique)
    upstream: tuple[str, ...]  # asset keys the test writes itself (specs in the materialisation)
    config: dict
    key: str  # the partition
    write_inputs: Callable[[str], None]
    registry: Optional[list] = None  # entries of a registry written beside the storage; None = the bundled one

    def materialise(self, root: str, instance, *, llm: Optional[LLMResource] = None, config: Optional[dict] = None,
                    raise_on_error: bool = True):
        if self.key not in instance.get_dynamic_partitions("source"):
            instance.add_dynamic_partitions("source", [self.key])
        registry = BUNDLED_REGISTRY if self.registry is None else \
            write_registry(Path(root).parent / f"{Path(root).name}-registry.yaml", self.registry)
        resources = resources_for(root, registry)
        resources["llm"] = llm or LLMResource()
        # the judge on the embedded model (64: some ratings parse)
        resources["reward"] = RewardResource(backend=JudgeReward(max_tokens=64, chunk=1))
        return dg.materialize(upstream_specs(*self.upstream) + [self.asset], selection=[self.asset],
                              partition_key=self.key, instance=instance, resources=resources,
                              run_config={"ops": {self.op: {"config": {**self.config, **(config or {})}}}},
                              raise_on_error=raise_on_error)


def model_calls(md: dict) -> int:
    """Requests a materialisation sent to models: its sessions' calls + the reward judge's."""
    return md["llm_calls"] + md.get("reward_llm_calls", 0)


#: chunk = 1 everywhere: one committed cache chunk per prompt (the kill point counts chunks)
STAGES: dict[str, StageCase] = {
    "scoring": StageCase(
        difficulty_scores, "difficulty_scores", ("difficulty_scores",), ("all_prompt_id",), ("cot_records", "sft_records"),
        {"max_items": 3, "samples": 2, "max_new_tokens": 24, "chunk": 1, "ensemble": ["generator"],
         "max_input_chars": 4000, "max_gold_chars": 2000, "temperature": 0.7, "seed": 0},
        "gsm8k", _gsm_records),
    "evolution": StageCase(
        evolved_instructions, "evolved_instructions", ("evolved_instructions",), ("id",),
        EVOL_INPUTS,
        {"input_asset": "selected_seeds", "chain": ["width", "depth"], "rounds": 1, "depth_methods": list(DEPTH_METHODS),
         "max_prompts": 0, "max_input_chars": 4000, "evolve_max_tokens": 24, "judge_max_tokens": 24,
         "answer_max_tokens": 24, "evolve_temperature": 0.7, "answer_temperature": 0.0, "chunk": 1, "seed": 0},
        "gsm8k", lambda root: write_seeds(root, SHORT_SEEDS)),
    "generation": StageCase(
        generated_solutions, "generated_solutions", ("generated_solutions", "solution_pass_rates"),
        ("all_prompt_id", "sample"),
        ("selected_seeds", "cot_records", "sft_records"),
        {"input": "selected_seeds", "n": 2, "max_tokens": 32, "temperature": 0.7, "max_problems": 0, "keep": "all",
         "judge_max_tokens": 24, "judge_max_chars": 2000, "max_input_chars": 4000, "max_judge_failure_rate": 1.0,
         "chunk": 1, "seed": 0},
        "gsm8k", lambda root: write_seeds(root, gsm8k_seeds(3))),
    "magpie": StageCase(
        magpie_instructions, "magpie_instructions", ("magpie_instructions",), ("uuid",), (), {"chunk": 1},
        MAGPIE_ENTRY["key"], lambda root: None, registry=[MAGPIE_ENTRY]),
    "tagging": StageCase(
        quality_tags, "quality_tags", ("quality_tags",), ("id",), tuple(TAG_INPUTS),
        {"input_asset": "magpie_instructions", "tags": ["input_quality", "difficulty", "instruct_reward"],
         "max_tokens": 32, "guard_max_tokens": 16, "chunk": 1, "seed": 0},
        "magpie_rel", lambda root: _magpie_rows(root, "magpie_rel", PROMPTS)),
    "pairs": StageCase(
        preference_pairs, "preference_pairs", ("preference_pairs",), ("id",), tuple(PAIR_INPUTS),
        {"input_asset": "magpie_instructions", "models": ["generator"], "temperatures": [0.0, 1.0],
         "samples_per_setting": 1, "max_tokens": 24, "max_prompts": 0, "max_input_chars": 4000,
         "max_reward_failure_rate": 1.0, "min_margin": 0.0, "chunk": 1, "seed": 0},
        "magpie_rel", lambda root: _magpie_rows(root, "magpie_rel", PROMPTS[:2])),
}
