"""Magpie instructions/s: the stage (`generation.generate` through a cached LLM session: rejects,
de-duplication, the response task, the table) vs the bare engine doing the same model work (the same
raw-completion calls with the same seeds, then one chat answer per instruction the stage answered),
measured in one run on one engine, plus a cached re-run of the stage; then the share of the generated
instructions each rule of Magpie's filter that needs no model tag removes (instruction ending in ':',
a later near-duplicate by gen_dis over the default embedder's vectors).

    .venv/bin/python -m bench.magpie [--total 64] [--n 16] [--ins-tokens 64] [--res-tokens 96] [--variant math]

Writes bench/results/magpie.json. The embedded SmolLM2-135M-Instruct (CTranslate2 int8), a fresh
LLM cache: every request of the first stage run is really generated."""

import argparse
import json
import tempfile
import time
from collections import Counter

from .common import RESULTS, table

SOURCE = "bench_magpie"


def run(args) -> dict:
    from partitions.registry import parse_registry
    from posttrain_assets.magpie import generation as G
    from resources.llm import Decoding, LLMResource

    entry = {"key": SOURCE, "kind": "synthetic", "generator": "magpie", "licence": "Apache-2.0",
             "generator_config": {"family": "smollm2", "variant": args.variant or None, "total_prompts": args.total,
                                  "n": args.n, "ins_max_tokens": args.ins_tokens, "res_max_tokens": args.res_tokens,
                                  "seed": args.seed}}
    spec = parse_registry({"sources": [entry]}).get(SOURCE)
    with tempfile.TemporaryDirectory() as tmp:
        llm = LLMResource(cache_dir=f"{tmp}/cache")
        settings = G.MagpieSettings.from_source(spec, llm.spec("generator"))
        backend = llm.backend("generator")
        backend.complete([settings.pre_query], Decoding(max_tokens=4))  # load + warm up once, for both

        t0 = time.perf_counter()
        with llm.session(None, "generator") as session:
            res = G.generate(session, settings, SOURCE, model="embedded")
            stats = session.metadata()
        stage_s = time.perf_counter() - t0

        # the bare engine: the same instruction calls (same seeds), then one answer per answered instruction
        t0 = time.perf_counter()
        bare_samples = 0
        for _, _, k, seed in G.call_plan(settings.total_prompts, settings.n, settings.seed):
            out = backend.complete([settings.pre_query], Decoding(
                temperature=settings.ins_temp, top_p=settings.ins_top_p, max_tokens=settings.ins_max_tokens,
                stop=tuple(settings.stop), n=k, seed=seed))
            bare_samples += len(out[0])
        instructions = res.table["instruction"].to_pylist()
        system = settings.response_system
        convs = [([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q}]
                 for q in instructions]
        if convs:
            backend.chat(convs, Decoding(temperature=settings.res_temp, top_p=settings.res_top_p,
                                         max_tokens=settings.res_max_tokens, seed=settings.seed))
        bare_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        with llm.session(None, "generator") as session:
            again = G.generate(session, settings, SOURCE, model="embedded")
            cached = session.metadata()
        cached_s = time.perf_counter() - t0
        llm.close()

    rules = filter_shares(res.table)
    f = res.funnel
    rejected = Counter({k: f[k] for k in ("llm_failed", "empty", "truncated", "template_echo")})
    return {
        "config": entry["generator_config"], "requested": f["requested"], "calls": f["calls"],
        "funnel": {k: f[k] for k in G.FUNNEL}, "rows": res.table.num_rows,
        "instruction_reject_shares": {k: round(v / f["requested"], 3) for k, v in rejected.items()},
        "duplicate_share": round(f["duplicate_instruction"] / f["requested"], 3),
        "stage_s": round(stage_s, 2), "bare_s": round(bare_s, 2), "cached_s": round(cached_s, 3),
        "bare_samples": bare_samples,
        "stage_instructions_per_s": round(f["requested"] / stage_s, 2),
        "bare_instructions_per_s": round(f["requested"] / bare_s, 2),
        "stage_over_bare_time": round(stage_s / bare_s, 3),
        "cached_rerun_calls": cached["llm_calls"], "cached_rerun_equal": again.table.equals(res.table),
        "llm": {k: stats[k] for k in ("llm_requests", "llm_calls", "llm_cache_hits", "llm_tokens_out")},
        "filter_rules": rules,
        "examples": res.table.select(["instruction", "response"]).slice(0, 5).to_pylist(),
    }


def filter_shares(generated) -> dict:
    """Per rule (colon, near_duplicate; the model-tag rules off): rows it alone removes, share."""
    import pyarrow as pa

    from posttrain_assets.selection.tag_filter import FilterRules, apply_filter
    from posttrain_assets.tagging.neighbors import gen_dis
    from resources.embeddings import EmbeddingClient

    ids, texts = generated["uuid"].to_pylist(), generated["instruction"].to_pylist()
    tags = gen_dis(EmbeddingClient().encode(texts), ids) if ids else []
    table = pa.table({"id": ids, "instruction": texts, "min_similar_id": [t.min_similar_id for t in tags],
                      "repeat_count": pa.array([t.repeat_count for t in tags], pa.int64())})
    out = apply_filter(table, FilterRules(qualities=()))
    return {"rows": table.num_rows, "kept": out.kept.num_rows, "per_rule": out.per_rule}


def report(r: dict) -> str:
    f = r["funnel"]
    lines = [f"{r['requested']} instructions requested in {r['calls']} calls -> {f['generated']} generated -> "
             f"{f['unique']} unique -> {r['rows']} rows", ""]
    lines.append(table(["reject", "count", "share of requested"],
                       [[k, f[k], f"{v:.1%}"] for k, v in r["instruction_reject_shares"].items()]
                       + [["duplicate_instruction", f["duplicate_instruction"], f"{r['duplicate_share']:.1%}"]]))
    lines.append("")
    lines.append(table(["path", "seconds", "instructions/s"],
                       [["stage (cache, rejects, answers, table)", r["stage_s"], r["stage_instructions_per_s"]],
                        ["bare engine (same calls, same answers)", r["bare_s"], r["bare_instructions_per_s"]],
                        ["stage, cached re-run", r["cached_s"], ""]]))
    fr = r["filter_rules"]
    lines.append("")
    lines.append(table(["filter rule (no model tag)", "removes alone", "share of rows"],
                       [[k, v["removes"], f"{v['share']:.1%}"] for k, v in fr["per_rule"].items()]))
    lines.append(f"kept {fr['kept']} of {fr['rows']} rows")
    lines.append(f"\nstage / bare time: {r['stage_over_bare_time']}; cached re-run: {r['cached_rerun_calls']} model calls, "
                 f"same table: {r['cached_rerun_equal']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--total", type=int, default=64)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--ins-tokens", type=int, default=64)
    ap.add_argument("--res-tokens", type=int, default=96)
    ap.add_argument("--variant", default="")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    r = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "magpie.json").write_text(json.dumps(r, indent=2, ensure_ascii=False))
    print(report(r))


if __name__ == "__main__":
    main()
