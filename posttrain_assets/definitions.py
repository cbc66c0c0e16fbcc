"""The posttrain code location: every stage package's assets and checks, the jobs, the sensor and
the resources. A stage is a subpackage with an `assets` module; its asset group is its name."""

import importlib
import os
import pkgutil

import dagster as dg

from partitions import source_partitions
from resources.embeddings import EmbeddingClient
from resources.hub import HubResource
from resources.llm import LLMResource
from resources.reward import JudgeReward, RewardResource
from resources.sources import SourceRegistryResource
from resources.storage import ParquetIOManager, StorageResource

from .automation import automation_sensor, with_automation
from .common import asset_names as A
from .deployment import LLM_CACHE_DIR_ENV, select_deployment
from .sensors import sources_registry_sensor



def stage_packages() -> dict[str, object]:
    """{stage name: its `assets` module} for every subpackage of posttrain_assets that has one."""
    pkg = importlib.import_module(__package__)
    found = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.ispkg and importlib.util.find_spec(f"{__package__}.{info.name}.assets") is not None:
            found[info.name] = importlib.import_module(f"{__package__}.{info.name}.assets")
    return found


STAGES = stage_packages()
all_assets = dg.load_assets_from_modules(list(STAGES.values()))
all_checks = dg.load_asset_checks_from_modules(list(STAGES.values()))

#: The jobs follow the packages: a job runs whole asset groups (a stage package's assets), so a new asset
#: runs in its package's job without a change here. PHASES places the few assets whose package spans
#: run phases: a per-source step on either side of a global fan-in (dedup, steerlm), or a filter (selection,
#: hygiene) run right after the stage whose output it reads. tests/test_jobs.py keeps every job a union of
#: whole groups plus these placements, and every asset in exactly one job.
JOB_GROUPS: dict[str, tuple[str, ...]] = {
    "ingest_job": ("magpie", "ingest"),
    "dedup_job": ("dedup",),
    "benchmark_index_job": (),  # decontamination's global index (PHASES), before records_job checks against it
    "records_job": ("records",),
    "attribute_data_job": (),  # steerlm's per-source training data (PHASES), before the global model
    "scoring_job": ("scoring",),
    "tagging_job": ("tagging",),
    "synthesis_job": ("synthesis",),
    "attribute_model_job": (),  # steerlm's global model (PHASES)
    "steerlm_job": ("steerlm",),
    "export_job": ("export",),
}
#: asset -> the job it runs in, when that is not its group's job (above)
PHASES: dict[str, str] = {
    A.PROMPT_EMBEDDINGS: "ingest_job",  # per source, before the global dedup reads every source's
    A.DEDUPLICATED_PROMPTS: "records_job",  # per source, after the global dedup
    A.ATTRIBUTE_TRAINING_DATA: "attribute_data_job",  # per source, before the global attribute model
    A.ATTRIBUTE_MODEL: "attribute_model_job",  # global: every source's training data
    A.SELECTED_SEEDS: "scoring_job",  # selection: after the scores it selects by
    A.FILTERED_INSTRUCTIONS: "tagging_job",  # selection: after the tags it filters by
    A.HARD_PROBLEMS: "synthesis_job",  # selection: after the pass rates it selects by
    A.BENCHMARK_INDEX: "benchmark_index_job",  # global: every benchmark, before any source is checked
    A.CONTAMINATION: "records_job",  # per source, right after the records it checks
    A.CONTAMINATION_REPORT: "export_job",  # global: every source's check, its blocking check before the export
    # hygiene: each clean table right after the table it filters
    A.CLEAN_SFT_RECORDS: "records_job",
    A.CLEAN_COT_RECORDS: "records_job",
    A.CLEAN_PREFERENCE_RECORDS: "records_job",
    A.CLEAN_EVOLVED_INSTRUCTIONS: "synthesis_job",
    A.CLEAN_GENERATED_SOLUTIONS: "synthesis_job",
    A.CLEAN_PREFERENCE_PAIRS: "synthesis_job",
}


def job_selection(job: str) -> dg.AssetSelection:
    """The groups of `job` without the assets PHASES places in another job, plus those it places here."""
    elsewhere = [a for a, j in PHASES.items() if j != job]
    here = [a for a, j in PHASES.items() if j == job]
    return (dg.AssetSelection.groups(*JOB_GROUPS[job]) - dg.AssetSelection.assets(*elsewhere)) \
        | dg.AssetSelection.assets(*here)


def _job(name: str, description: str, per_source: bool = True):
    return dg.define_asset_job(name, selection=job_selection(name), description=description,
                               partitions_def=source_partitions if per_source else None)


PIPELINE = [  # the order the demo runs them in
    _job("ingest_job", "Per source: magpie_instructions (synthetic sources) -> raw_records -> merged_prompts -> "
                       "prompt_embeddings."),
    _job("dedup_job", "Global (fan-in) near-duplicate clustering over every source.", per_source=False),
    _job("benchmark_index_job", "Global: the benchmarks registry's items as an n-gram index (+ question "
                                "embeddings) that every source's records are checked against.", per_source=False),
    _job("records_job", "Per source: deduplicated_prompts -> sft_records, cot_records, preference_records -> "
                        "contamination (every record against the benchmark index) and the clean_* tables "
                        "(the hygiene rules)."),
    _job("attribute_data_job", "Per source: attribute_training_data (sources of kind attributes; an empty "
                               "partition for the others)."),
    _job("scoring_job", "Per source: difficulty_scores -> selected_seeds."),
    _job("tagging_job", "Per source: quality_tags -> filtered_instructions."),
    _job("synthesis_job", "Per source: generated_solutions + solution_pass_rates -> hard_problems; "
                          "evolved_instructions; preference_pairs (on the filtered instructions by default); their clean_* tables "
                          "(the hygiene rules)."),
    _job("attribute_model_job", "Global: train the SteerLM attribute model (CPU head by default) and save it under "
                                "the storage root.", per_source=False),
    _job("steerlm_job", "Per source: attribute_labelled_sft -> steerlm_sft (NeMo and llm-jp-sft formats)."),
    _job("export_job", "The contamination report (its blocking check stops the export), then every source's "
                       "records without the contaminated ones as a Hugging Face Parquet dataset (+ optional "
                       "Hub upload).",
         per_source=False),
]
ingest_job, dedup_job, benchmark_index_job, records_job, attribute_data_job, scoring_job, tagging_job, \
    synthesis_job, attribute_model_job, steerlm_job, export_job = PIPELINE


def build_resources() -> dict:
    storage = StorageResource()
    return {
        "storage": storage,
        "io_manager": ParquetIOManager(storage=storage),
        "registry": SourceRegistryResource(),
        # an openai-backend embedder's key only ever comes from the environment, as the LLM's
        "embeddings": EmbeddingClient(api_key=dg.EnvVar("EMBEDDINGS_API_KEY") if os.environ.get("EMBEDDINGS_API_KEY")
                                      else None),
        # the cache: POSTTRAIN_LLM_CACHE_DIR, else under a local storage root, else ~/.cache (k8s requires it)
        "llm": LLMResource(config_file=os.environ.get("POSTTRAIN_LLM_CONFIG", ""),
                           cache_dir=os.environ.get(LLM_CACHE_DIR_ENV, ""),
                           api_key=dg.EnvVar("LLM_API_KEY") if os.environ.get("LLM_API_KEY") else None),
        # reward scores (quality_tags' instruct_reward, preference_pairs): the judge on the embedded model
        # unless the launchpad says otherwise
        "reward": RewardResource(backend=JudgeReward(llm_config_file=os.environ.get("POSTTRAIN_LLM_CONFIG", ""))),
        # the token only ever comes from the environment
        "hub": HubResource(repo_id=os.environ.get("POSTTRAIN_HF_REPO", ""),
                           token=dg.EnvVar("HF_TOKEN") if os.environ.get("HF_TOKEN") else None),
    }


#: POSTTRAIN_DEPLOYMENT (local | k8s): the executor and the resources that differ (deployment.py)
DEPLOYMENT = select_deployment(all_assets)

defs = dg.Definitions(
    assets=with_automation(all_assets),  # the automation conditions, set in one place
    asset_checks=all_checks,
    jobs=PIPELINE,
    sensors=[sources_registry_sensor, automation_sensor],
    resources={**build_resources(), **DEPLOYMENT.resources},
    executor=DEPLOYMENT.executor,
)
