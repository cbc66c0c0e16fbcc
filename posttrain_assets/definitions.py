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
from resources.reward import RewardResource
from resources.sources import SourceRegistryResource
from resources.storage import ParquetIOManager, StorageResource

from .automation import automation_sensor, with_automation
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

#: Per source: generate (synthetic sources only; the others get an empty magpie partition, no model),
#: load, merge, embed (one run per `source` partition).
ingest_job = dg.define_asset_job(
    "ingest_job", selection=dg.AssetSelection.assets("magpie_instructions", "prompt_embeddings")
    | dg.AssetSelection.groups("ingest"), partitions_def=source_partitions,
    description="Per source: magpie_instructions (synthetic sources) -> raw_records -> merged_prompts -> prompt_embeddings.")
#: Global: every source's prompts at once.
dedup_job = dg.define_asset_job(
    "dedup_job", selection=dg.AssetSelection.assets("dedup_clusters", "dedup_cluster_report", "dedup_summary"),
    description="Global (fan-in) near-duplicate clustering over every source.")
#: Per source again: survivors, then the three record schemas.
records_job = dg.define_asset_job(
    "records_job", selection=dg.AssetSelection.assets("deduplicated_prompts", "attribute_training_data")
    | dg.AssetSelection.groups("records"), partitions_def=source_partitions,
    description="Per source: deduplicated_prompts -> sft_records, cot_records, preference_records; "
                "attribute_training_data (sources of kind attributes).")
#: Per source: LLM difficulty scores, then seed selection.
scoring_job = dg.define_asset_job(
    "scoring_job", selection=dg.AssetSelection.groups("scoring") | dg.AssetSelection.assets("selected_seeds"),
    partitions_def=source_partitions, description="Per source: difficulty_scores -> selected_seeds.")
#: Per source: synthetic data from the seeds (generate-from-seed with an LLM filter, the hard problems
#: by our own pass rates, Evol-Instruct).
synthesis_job = dg.define_asset_job(
    "synthesis_job", selection=(dg.AssetSelection.groups("synthesis") - dg.AssetSelection.assets("preference_pairs"))
    | dg.AssetSelection.assets("hard_problems"), partitions_def=source_partitions,
    description="Per source: generated_solutions + solution_pass_rates -> hard_problems; evolved_instructions.")
#: Per source: Magpie's tags and filter, then preference pairs (on the filtered instructions by default).
tagging_job = dg.define_asset_job(
    "tagging_job", selection=dg.AssetSelection.assets("quality_tags", "filtered_instructions", "preference_pairs"),
    partitions_def=source_partitions,
    description="Per source: quality_tags -> filtered_instructions -> preference_pairs.")
#: Global: the SteerLM attribute model over every source's attribute_training_data.
attribute_model_job = dg.define_asset_job(
    "attribute_model_job", selection=dg.AssetSelection.assets("attribute_model"),
    description="Global: train the SteerLM attribute model (CPU head by default) and save it under the storage root.")
#: Per source: SFT rows labelled with the attribute model, then the SteerLM training formats.
steerlm_job = dg.define_asset_job(
    "steerlm_job", selection=dg.AssetSelection.assets("attribute_labelled_sft", "steerlm_sft"),
    partitions_def=source_partitions,
    description="Per source: attribute_labelled_sft -> steerlm_sft (NeMo and llm-jp-sft formats).")
#: Global: the Hugging Face export.
export_job = dg.define_asset_job(
    "export_job", selection=dg.AssetSelection.groups("export"),
    description="Every source's records as a Hugging Face Parquet dataset (+ optional Hub upload).")

PIPELINE = [ingest_job, dedup_job, records_job, scoring_job, synthesis_job, tagging_job, attribute_model_job,
            steerlm_job, export_job]  # the order the demo runs them in


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
        "reward": RewardResource(llm_config_file=os.environ.get("POSTTRAIN_LLM_CONFIG", "")),
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
