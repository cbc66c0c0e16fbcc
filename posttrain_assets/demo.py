"""The main job: materialise every per-source asset for every registry source, then summarise.

    python -m posttrain_assets.demo [--registry FILE] [--source KEY ...]

Runs go into the Dagster instance at $DAGSTER_HOME (default ./.dagster_home), so `make ui`
shows them; tables go to $POSTTRAIN_STORAGE (default ./storage) and the DuckDB catalogue.
"""

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import dagster as dg

from partitions import sync_partitions
from partitions.registry import RegistryError, load_registry
from resources.storage import StorageResource

from .common import asset_names as A

REPO = Path(__file__).resolve().parents[1]
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
#: the demo's own choices. Its LLM work sizes (scoring 12 items per source, 2 samples, short answers;
#: synthesis 2 seeds per source evolved for 2 rounds, 3 problems x 2 solutions; pairs for 4 prompts x 3
#: candidates) are the defaults on the embedded engine (posttrain_assets/common/sizing.py), as in the UI
DEMO_RUN_CONFIG = {
    "scoring_job": {"ops": {A.SELECTED_SEEDS: {"config": {"method": {"length": {"total_samples": 60}}}}}},
    # Magpie's tags over the magpie source's instructions and its filter. The 135M tagger's quality
    # ratings do not parse (null, counted: docs/stages/tagging.md), so the demo turns the quality rule
    # off; the colon and near-duplicate rules stay
    "tagging_job": {"ops": {A.FILTERED_INSTRUCTIONS: {"config": {"qualities": []}}}},
    # the 135M judge writes an unparseable verdict for about a third of free-form answers
    # (counted judge_failed rejects, never accepted): the demo allows that many; one preference-pair
    # pass on what the tagging filter kept
    "synthesis_job": {"ops": {A.GENERATED_SOLUTIONS: {"config": {"max_judge_failure_rate": 0.75}},
                              A.PREFERENCE_PAIRS: {"config": {"max_reward_failure_rate": 0.9}}}},
}


#: per-source jobs the demo runs for a few sources only: the SteerLM labelling of one SFT source
DEMO_ONLY = {"steerlm_job": ("oasst_en",)}
STEERLM_JOBS = ("attribute_data_job", "attribute_model_job", "steerlm_job")
#: the model stages (registry `model_stages`) of each per-source model job: the demo skips a job for a
#: source that takes none of them (by default the `attributes` sources' scoring, synthesis and tagging:
#: their assets would only count the rows removed, as "Materialize all" in the UI does). tagging_job
#: runs for the synthesis sources too: its filtered_instructions are preference_pairs' default input
JOB_STAGES = {"scoring_job": ("scoring",), "synthesis_job": ("synthesis",),
              "tagging_job": ("tagging", "synthesis"), "steerlm_job": ("steerlm",)}


def ensure_instance() -> dg.DagsterInstance:
    home = os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").resolve()))
    os.makedirs(home, exist_ok=True)
    cfg = Path(home) / "dagster.yaml"
    template = REPO / "deploy" / "dagster.yaml"
    if not cfg.exists() and template.exists():
        shutil.copy(template, cfg)
    return dg.DagsterInstance.get()


def _meta(event, key, default=None):
    value = event.materialization.metadata.get(key)
    return default if value is None else value.value


def collect(res, results: dict[str, dict], global_stats: dict) -> None:
    """Pull the numbers the summary needs out of a run's materialisation events."""
    for ev in res.get_asset_materialization_events():
        name = ev.asset_key.to_user_string()
        key = ev.partition
        r = results.get(key, {}) if key else None
        if key and _meta(ev, "all_rejected"):
            r.setdefault("all_rejected", _meta(ev, "all_rejected"))
        if name == "raw_records":
            r["raw_in"] = _meta(ev, "rows_in")
            r["raw_rejected"] = _meta(ev, "rejected")
            r["raw_rejected_by"] = _meta(ev, "rejected_by_reason", {})
        elif name == "merged_prompts":
            for k in ("rows_in", "rows_out", "removed", "rejected"):
                r[k] = _meta(ev, k)
            r["rejected_by"] = _meta(ev, "rejected_by_reason", {})
            r["removed_by"] = _meta(ev, "removed_by_reason", {})
        elif name == "deduplicated_prompts":
            r["dedup_kept"] = _meta(ev, "rows_out")
        elif name in ("sft_records", "cot_records", "preference_records"):
            r[name] = _meta(ev, "rows_out", 0)
            if name == "preference_records":
                r["ties"] = _meta(ev, "ties", 0)
        elif name == "dedup_summary":
            global_stats["dedup_summary"] = _meta(ev, "summary")
        elif name == "difficulty_scores":
            r["scored"] = _meta(ev, "rows_out")
            r["llm_calls"] = _meta(ev, "llm_calls")
        elif name == "selected_seeds":
            r["selected"] = _meta(ev, "rows_out")
        elif name == "magpie_instructions":
            if _meta(ev, "synthetic"):
                r["magpie_funnel"] = _meta(ev, "funnel_line")
        elif name in ("quality_tags", "filtered_instructions", "preference_pairs") and _meta(ev, "rows_in"):
            r[name] = {k: _meta(ev, k) for k in ("rows_in", "rows_out", "removed_by_reason", "rejected_by_reason",
                                                  "tag_failures", "funnel_json", "reward_model")}
        elif name == "evolved_instructions":
            r["evolved"] = _meta(ev, "output_rows", 0)
            r["evol_funnel"] = _meta(ev, "funnel_json", {})
            r["evol_eliminated"] = _meta(ev, "eliminated_by_rule", {})
        elif name == "generated_solutions":
            r["solutions"] = _meta(ev, "rows_out")
            r["solutions_funnel"] = _meta(ev, "funnel_json", {})
        elif name == "hard_problems":
            r["hard"] = _meta(ev, "rows_out")
        elif name == "attribute_training_data" and _meta(ev, "applies"):
            r["attribute_rows"] = {k: _meta(ev, k) for k in ("rows_out", "train_rows", "val_rows")}
        elif name == "attribute_model":
            global_stats["attribute_model"] = {k: _meta(ev, k) for k in ("version", "backend", "validation",
                                                                         "beats_mean_baseline", "train_seconds",
                                                                         "rows_train", "rows_val")}
        elif name == "attribute_labelled_sft":
            r["labelled"] = {k: _meta(ev, k) for k in ("rows_out", "predicted", "rows_per_s", "histograms")}
        elif name == "hf_parquet":
            global_stats["export"] = {k: _meta(ev, k) for k in ("rows_sft", "rows_cot", "rows_preference",
                                                                "rows_evol", "rows_generated", "rows_preference_synthetic", "rows_steerlm",
                                                                "ties_excluded", "contaminated_left_out",
                                                                "export_dir", "hub_status")}
        elif name.startswith("clean_") and _meta(ev, "rows_in"):
            r.setdefault("hygiene", {})[name] = {k: _meta(ev, k) for k in ("rows_in", "rows_out", "removed_by_reason",
                                                                          "flagged")}
        elif name == "contamination_report":
            global_stats["contamination"] = {k: _meta(ev, k) for k in ("report", "rows_checked", "rows_contaminated")}
        elif name == "dedup_clusters":
            global_stats["dedup"] = {k: _meta(ev, k) for k in ("method", "search", "threshold",
                                                               "distinct_prompts", "clusters_multi")}


def summarise(results: dict[str, dict]) -> str:
    head = ["source", "kind", "raw rows", "raw rejected", "records in", "kept", "removed",
            "rejected", "reasons", "after dedup", "scored", "seeds", "evolved", "solutions", "hard",
            "sft/cot/pref/ties", "seconds"]
    rows = []
    for key, r in results.items():
        reasons = {**r.get("raw_rejected_by", {}), **r.get("rejected_by", {}), **r.get("removed_by", {})}
        rows.append([key, r.get("kind", "?"), r.get("raw_in", "-"), r.get("raw_rejected", "-"),
                     r.get("rows_in", "-"), r.get("rows_out", "-"), r.get("removed", "-"),
                     r.get("rejected", "-"),
                     ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())) or "-",
                     r.get("dedup_kept", "-"), r.get("scored", "-"), r.get("selected", "-"),
                     r.get("evolved", "-"), r.get("solutions", "-"), r.get("hard", "-"),
                     "/".join(str(r.get(n, "-")) for n in ("sft_records", "cot_records", "preference_records", "ties")),
                     f"{r['seconds']:.1f}" if "seconds" in r else "-"])
        if r.get("error"):
            rows[-1][8] = "FAILED (see below)"
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def synthesis_funnels(results: dict[str, dict]) -> str:
    """One line per source and synthetic asset: the funnel the asset's metadata holds."""
    lines = []
    for key, r in results.items():
        if r.get("magpie_funnel"):
            lines.append(f"  {key} magpie_instructions: {r['magpie_funnel']}")
        f = r.get("evol_funnel") or {}
        if f:
            steps = {op: c for op, c in f.items() if op != "round"}
            rnd = f.get("round", {})
            evolved = " ".join(f"{op} {c.get('in', 0)}->{c.get('survived', 0)}" for op, c in steps.items())
            elim = ", ".join(f"{k}={v}" for k, v in sorted((r.get("evol_eliminated") or {}).items()) if v) or "none"
            lines.append(f"  {key} evolved_instructions: {evolved}; eliminated: {elim}; judged "
                         f"{rnd.get('judged', 0)} -> accepted {rnd.get('accepted', 0)} -> answered "
                         f"{rnd.get('answered', 0)} -> rows {rnd.get('out', 0)}")
        lines += magpie_funnels(key, r)
        g = r.get("solutions_funnel") or {}
        if g.get("problems"):
            lines.append(f"  {key} generated_solutions: problems {g.get('problems', 0)}, solutions "
                         f"{g.get('requested', 0)} -> generated {g.get('generated', 0)} -> verdicts "
                         f"{g.get('verdicts', 0)} (math-verify {g.get('verified_by_math_verify', 0)}, judge "
                         f"{g.get('verified_by_judge', 0)}) -> correct {g.get('correct', 0)} -> kept "
                         f"{g.get('kept', 0)}; judge failures {g.get('judge_failures', 0)}")
    return "\n".join(lines)


def _reasons(counts: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((counts or {}).items()) if v) or "none"


def magpie_funnels(key: str, r: dict) -> list[str]:
    """quality_tags, filtered_instructions and preference_pairs lines (sources where they had rows)."""
    lines = []
    if r.get("quality_tags"):
        t = r["quality_tags"]
        failed = "; ".join(f"{tag} {sum(c.values())}" for tag, c in (t["tag_failures"] or {}).items() if sum(c.values()))
        lines.append(f"  {key} quality_tags: rows {t['rows_in']} -> tagged {t['rows_out']}; "
                     f"tags the model failed (null, counted): {failed or 'none'}")
    if r.get("filtered_instructions"):
        f = r["filtered_instructions"]
        lines.append(f"  {key} filtered_instructions: {f['rows_in']} -> kept {f['rows_out']}; "
                     f"removed: {_reasons(f['removed_by_reason'])}")
    if r.get("preference_pairs"):
        p = r["preference_pairs"]
        c = p["funnel_json"] or {}
        lines.append(f"  {key} preference_pairs: prompts {c.get('prompts', 0)} -> candidates "
                     f"{c.get('candidates_requested', 0)} -> unique {c.get('candidates_unique', 0)} -> scored "
                     f"{c.get('candidates_scored', 0)} ({p['reward_model']}) -> pairs {p['rows_out']}; no pair: "
                     f"{_reasons({**(p['removed_by_reason'] or {}), **(p['rejected_by_reason'] or {})})}")
    return lines


def hygiene_summary(results: dict[str, dict]) -> str:
    """One line per source and clean table where a hygiene rule dropped or flagged a row."""
    lines = []
    for key, r in results.items():
        for name, h in sorted(r.get("hygiene", {}).items()):
            dropped, flagged = h.get("removed_by_reason") or {}, h.get("flagged") or {}
            if dropped or flagged:
                lines.append(f"  {key} {name}: {h['rows_in']} -> {h['rows_out']}; dropped {_reasons(dropped)}"
                             + (f"; flagged {_reasons(flagged)}" if flagged else ""))
    return "\n".join(lines)


def steerlm_summary(results: dict[str, dict], global_stats: dict) -> str:
    """The attribute data per source, the model's validation table, the labelled sources."""
    lines = [f"  {k} attribute_training_data: {r['attribute_rows']['rows_out']} labelled replies "
             f"(train {r['attribute_rows']['train_rows']}, val {r['attribute_rows']['val_rows']})"
             for k, r in results.items() if r.get("attribute_rows")]
    m = global_stats.get("attribute_model")
    if m:
        lines.append(f"  attribute_model {m['version']} ({m['backend']}; {m['rows_train']} train / {m['rows_val']} val "
                     f"rows; {m['train_seconds']}s): beats the training-mean baseline on {m['beats_mean_baseline']}")
        lines += ["    " + line for line in (m["validation"] or "").splitlines()]
    for k, r in results.items():
        lab = r.get("labelled")
        if lab:
            hist = ", ".join(f"{a} {h}" for a, h in (lab["histograms"] or {}).items() if a in ("quality", "helpfulness"))
            lines.append(f"  {k} attribute_labelled_sft: {lab['rows_out']} rows ({lab['predicted']} predicted, "
                         f"{lab['rows_per_s']} rows/s); {hist}")
    return "\n".join(lines)


def _job_keys(job, reg, keys: list[str]) -> list:
    """The partitions the demo runs `job` for ([None] for an unpartitioned job)."""
    if job.partitions_def is None:
        return [None]
    return [k for k in keys if k in DEMO_ONLY.get(job.name, keys) and (job.name not in JOB_STAGES or any(
        reg.get(k).runs_stage(st) for st in JOB_STAGES[job.name]))]


def _failure_message(res) -> str:
    """What a failed run says: the step's Failure description, else the user code's own error."""
    failure = next((e for e in res.all_events if e.is_step_failure), None)
    if failure is None:
        return "run failed"
    data = failure.step_failure_data
    err = data.error
    while err is not None and err.cause is not None:  # the user code's own error
        err = err.cause
    return data.user_failure_data.description if data.user_failure_data else (err.message.strip() if err else "step failed")


def _run_jobs(reg, keys: list[str], instance, results: dict, global_stats: dict) -> int:
    """Every pipeline job in order, per partition; stops after the first job with a failed run.
    Returns the number of failed runs."""
    from .definitions import PIPELINE, defs

    failed = 0
    for unresolved in PIPELINE:
        job = defs.resolve_job_def(unresolved.name)
        if job.name in STEERLM_JOBS and not any(reg.get(k).kind == "attributes" for k in keys):
            print(f"  {job.name}: skipped (no source of kind attributes to train the attribute model on)")
            continue
        for key in _job_keys(job, reg, keys):
            t0 = time.monotonic()
            res = job.execute_in_process(partition_key=key, instance=instance,
                                         run_config={**QUIET, **DEMO_RUN_CONFIG.get(job.name, {})},
                                         raise_on_error=False, tags={"posttrain/launched_by": "demo"})
            dt = time.monotonic() - t0
            if key:
                results[key]["seconds"] += dt
            collect(res, results, global_stats)
            if not res.success:
                failed += 1
                (results[key] if key else global_stats)["error"] = _failure_message(res)
            print(f"  {job.name}{'[' + key + ']' if key else ''}: {'ok' if res.success else 'FAILED'} "
                  f"in {dt:.1f}s (run {res.run_id[:8]})")
        if failed:
            break
    return failed


def _print_report(results: dict, global_stats: dict) -> None:
    """The summary tables: per source, global dedup, synthesis funnels, SteerLM, failures, export."""
    print()
    print(summarise(results))
    if global_stats.get("dedup_summary"):
        d = global_stats.get("dedup", {})
        print(f"\nGlobal dedup ({d.get('method')}, {d.get('search') or ''} search, cosine >= {d.get('threshold')}; "
              f"{d.get('distinct_prompts')} distinct prompts, {d.get('clusters_multi')} clusters with duplicates):")
        print(global_stats["dedup_summary"])
    funnels = synthesis_funnels(results)
    if funnels:
        print("\nSynthesis funnels (demo-sized: 8 Magpie instructions; 2 seeds evolved for 2 rounds, 3 problems x 2 "
              "solutions per source; pairs for 4 prompts x 3 candidates):")
        print(funnels)
    steer = steerlm_summary(results, global_stats)
    if steer:
        print("\nSteerLM:")
        print(steer)
    for key, r in results.items():
        if r.get("all_rejected"):
            print(f"\n{key}: {r['all_rejected']} (its later steps ran on an empty table)")
        if r.get("error"):
            print(f"\n{key} FAILED: {r['error']}")
    hygiene = hygiene_summary(results)
    if hygiene:
        print("\nHygiene (rows each rule dropped / flagged, per clean table; docs/stages/hygiene.md):")
        print(hygiene)
    if global_stats.get("contamination"):
        c = global_stats["contamination"]
        print(f"\nDecontamination ({c['rows_checked']} records checked, {c['rows_contaminated']} contaminated):")
        print(c["report"])
    if global_stats.get("export"):
        e = global_stats["export"]
        print(f"\nHugging Face export: sft {e['rows_sft']}, cot {e['rows_cot']}, preference "
              f"{e['rows_preference']}, evol {e['rows_evol']}, generated {e['rows_generated']}, preference_synthetic "
              f"{e['rows_preference_synthetic']}, steerlm {e['rows_steerlm']} rows "
              f"(ties excluded: {e['ties_excluded']}; contaminated left out: {e['contaminated_left_out']}) -> "
              f"{e['export_dir']}")
        print(f"  hub: {e['hub_status']}")
    if global_stats.get("error"):
        print(f"\nglobal step FAILED: {global_stats['error']}")


def _print_where(keys: list[str], results: dict, failed: int, seconds: float) -> None:
    """The totals and where the outputs are (Parquet, rejects, DuckDB, Dagster)."""
    storage = StorageResource()
    store, catalog = storage.store(), storage.catalog()
    total = sum(r.get("rows_out") or 0 for r in results.values())
    print(f"{len(keys)} sources, {total:,} merged prompts in {seconds:.1f}s"
          + (f"; {failed} FAILED" if failed else ""))
    print(f"Parquet:   {store.uri(store.base)}/<asset>/source=<key>/data.parquet")
    print(f"Rejects:   {store.uri(store.base)}/_rejects/<asset>/source=<key>/data.parquet")
    print(f"DuckDB:    {catalog.path}  (a view per asset, plus rejects)")
    print("  query:   .venv/bin/python -m resources \"SELECT source, count(*) FROM merged_prompts GROUP BY 1\"")
    print(f"Dagster:   DAGSTER_HOME={os.environ['DAGSTER_HOME']}; `make ui` -> http://127.0.0.1:3000")


def run(registry_path: str | None = None, only: list[str] | None = None) -> int:
    """The whole pipeline over the registry's sources (or `only`): sync the partitions, run every
    job, print the report. Returns the exit status (1 when a run failed)."""
    reg = load_registry(registry_path)
    if registry_path:
        os.environ["POSTTRAIN_SOURCES"] = str(Path(registry_path).resolve())
    instance = ensure_instance()
    plan = sync_partitions(instance, reg)
    global_stats: dict = {}
    print(f"registry {reg.path}: {len(reg.keys)} sources "
          f"({len(plan.added)} new partitions, {len(plan.present)} present)")
    keys = only or reg.keys
    results: dict[str, dict] = {k: {"kind": reg.get(k).kind, "seconds": 0.0} for k in keys}
    t_all = time.monotonic()
    failed = _run_jobs(reg, keys, instance, results, global_stats)
    _print_report(results, global_stats)
    print()
    _print_where(keys, results, failed, time.monotonic() - t_all)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m posttrain_assets.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", default=None)
    ap.add_argument("--source", action="append", default=None, help="only this source (repeatable)")
    args = ap.parse_args(argv)
    try:
        return run(args.registry, args.source)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
