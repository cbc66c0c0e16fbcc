"""Benchmark: generated_solutions' filter and throughput (not a test).

    .venv/bin/python -m bench.solutions [--judge-items 40] [--problems 8] [--n 2] [--max-tokens 64]

1. Filter agreement with human labels: ../shared/data/gsm8k/example_model_solutions.jsonl has 1,319
   GSM8K test problems x 4 real model solutions (GPT-3 6B / 175B) with `is_correct`. ROC AUC of
   - math-verify alone (the final answer: '####', \\boxed{}, last number; unreadable = wrong),
   - the stage's filter (`judge_math: false`: math-verify decides what it can read, the judge the rest),
   - the judge alone (the configured `judge` model; the embedded 135M here) on the first
     `--judge-items` solutions (an unparseable verdict = not correct; also on the parsed ones only).
   Note: `is_correct` is OpenAI's final-answer match against the reference, so math-verify agreeing
   with it says that it reads the final answers as the labels did, not that it judges reasoning.
2. Generations/s of `solve_math_problem` on GSM8K questions: through the asset (dg.materialize, a
   fresh storage, wall time incl. Dagster, I/O and the engine start; and the asset's own
   `generations_per_s`, generation only) vs the bare session (same model spec, batch, decoding, chunk),
   the bare session run before and after the asset (the spread is the shared machine's noise).
Results: bench/results/solutions.json.
"""

import argparse
import json
import tempfile
import time

from .common import REPO, RESULTS, SHARED


def auc_part(judge_items: int) -> dict:
    from posttrain_assets.common.answers import answers_match, extract_final_answer
    from posttrain_assets.synthesis.solutions import Sample, judge, math_verdict, roc_auc
    from resources.llm import LLMCache, LLMResource

    rows = [json.loads(x) for x in (SHARED / "gsm8k/example_model_solutions.jsonl").read_text().splitlines()]
    models = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
    samples, labels, mv_alone = [], [], []
    for i, r in enumerate(rows):
        gold = extract_final_answer(r["ground_truth"])
        p = {"id": str(i), "source": "gsm8k", "prompt": r["question"], "gold": gold, "kind": "math", "language": "en"}
        for k, m in enumerate(models):
            text = r[m]["solution"]
            final = extract_final_answer(text)
            samples.append(Sample(p, k, text=text, final_answer=final, math_verify=math_verdict(final, gold)))
            labels.append(bool(r[m]["is_correct"]))
            mv_alone.append(answers_match(final, gold, True))
    out = {"solutions": len(samples), "positives": sum(labels),
           "auc_math_verify": roc_auc([float(v) for v in mv_alone], labels)}
    need = [s for s in samples if s.needs_judge]
    sub = samples[:judge_items]
    with tempfile.TemporaryDirectory() as tmp:
        llm = LLMResource()
        with llm.session(None, "judge", cache=LLMCache(f"{tmp}/c.sqlite")) as s:
            t0 = time.perf_counter()
            judge(need, s, max_chars=2000, max_tokens=128)
            filt = [float(bool(x.correct)) for x in samples]  # no verdict = not kept
            out["auc_filter"] = roc_auc(filt, labels)
            out["filter_judged"] = len(need)
            fresh = [Sample(x.problem, x.index, text=x.text, final_answer=x.final_answer) for x in sub]
            judge(fresh, s, max_chars=2000, max_tokens=128)
            out["judge_seconds"] = round(time.perf_counter() - t0, 1)
    sub_labels = labels[:judge_items]
    parsed = [(x.judge_correct, y) for x, y in zip(fresh, sub_labels) if x.judge_correct is not None]
    out.update(judge_items=len(fresh), judge_items_positives=sum(sub_labels),
               judge_parsed=len(parsed), judge_said_correct=sum(v for v, _ in parsed),
               auc_judge_alone=roc_auc([float(bool(x.judge_correct)) for x in fresh], sub_labels),
               auc_judge_parsed_only=roc_auc([float(v) for v, _ in parsed], [y for _, y in parsed]),
               auc_math_verify_same_items=roc_auc([float(v) for v in mv_alone[:judge_items]], sub_labels),
               judge_agreement_parsed=sum(v == y for v, y in parsed),
               judge_agreement_parsed_rate=round(sum(v == y for v, y in parsed) / len(parsed), 3) if parsed else None)
    out["mv_agreement"] = sum(a == b for a, b in zip(mv_alone, labels)) / len(labels)
    return out


def throughput_part(problems: int, n: int, max_tokens: int) -> dict:
    import dagster as dg

    from posttrain_assets.records.unify import COT_SCHEMA, SFT_SCHEMA
    from posttrain_assets.synthesis.solutions import SOLVE_MATH_PROBLEM
    from posttrain_assets.synthesis.assets import generated_solutions
    from resources.llm import LLMCache, LLMResource
    from resources.storage import ParquetStore
    from tests.helpers import mat_metadata, resources_for, upstream_specs

    import pyarrow as pa

    src = SHARED / "gsm8k/test.jsonl"
    if not src.exists():
        src = REPO / "posttrain_assets/sample_data/gsm8k/train_300.jsonl"
    rows = [json.loads(x) for x in src.read_text().splitlines()[:problems]]
    chunk = 8
    out = {"problems": len(rows), "n": n, "max_tokens": max_tokens}
    questions = [{"question": r["question"], "language": "en"} for r in rows]

    def bare(label: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            llm = LLMResource()
            t0 = time.perf_counter()
            llm.backend("generator")
            out[f"{label}_engine_start_s"] = round(time.perf_counter() - t0, 2)
            with llm.session(None, "generator", cache=LLMCache(f"{tmp}/c.sqlite"), chunk=chunk) as s:
                t0 = time.perf_counter()
                res = s.run(SOLVE_MATH_PROBLEM, questions, n=n, seed=0, temperature=0.7, max_tokens=max_tokens)
                dt = time.perf_counter() - t0
            gens = sum(len(r.values) for r in res)
            out[f"{label}_gen_per_s"] = round(gens / dt, 3)
            out[f"{label}_tok_per_s"] = round(s.stats.tokens_out / dt, 1)
            llm.close()

    bare("bare_session")
    # through the asset
    with tempfile.TemporaryDirectory() as tmp:
        root = f"{tmp}/storage"
        store = ParquetStore(root)
        seeds = pa.table({"all_prompt_id": [f"gsm8k:{i}" for i in range(len(rows))], "source": ["gsm8k"] * len(rows),
                          "prompt": [r["question"] for r in rows],
                          "answer": [r["answer"].split("####")[-1].strip() for r in rows],
                          "solution": [r["answer"] for r in rows]})
        store.write(seeds, store.path("selected_seeds", "gsm8k"))
        store.write(COT_SCHEMA.empty_table(), store.path("cot_records", "gsm8k"))
        store.write(SFT_SCHEMA.empty_table(), store.path("sft_records", "gsm8k"))
        with dg.DagsterInstance.ephemeral() as inst:
            inst.add_dynamic_partitions("source", ["gsm8k"])
            t0 = time.perf_counter()
            result = dg.materialize(
                upstream_specs("selected_seeds", "cot_records", "sft_records") + [generated_solutions],
                selection=[generated_solutions], partition_key="gsm8k", instance=inst,
                resources=resources_for(root, REPO / "partitions/sources.yaml"),
                run_config={"ops": {"generated_solutions": {"config": {"n": n, "max_tokens": max_tokens,
                                                                       "chunk": chunk}}}})
            wall = time.perf_counter() - t0
        md = mat_metadata(result, "solution_pass_rates")
        gens = md["funnel_json"]["generated"]
        out.update(asset_wall_s=round(wall, 2), asset_gen_per_s_wall=round(gens / wall, 3),
                   asset_gen_per_s_generation=md["generations_per_s"], asset_tok_per_s=md["llm_tokens_per_s"],
                   asset_judged=md["funnel_json"].get("verified_by_judge", 0), asset_llm_calls=md["llm_calls"])
    bare("bare_session_after")
    ref = (out["bare_session_gen_per_s"] + out["bare_session_after_gen_per_s"]) / 2
    out.update(ratio_asset_generation_vs_bare=round(out["asset_gen_per_s_generation"] / ref, 3),
               ratio_asset_wall_vs_bare=round(out["asset_gen_per_s_wall"] / ref, 3))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--judge-items", type=int, default=40)
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--skip-auc", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    out = {}
    if not args.skip_auc:
        out["filter"] = auc_part(args.judge_items)
        print(json.dumps(out["filter"], indent=1), flush=True)
    if not args.skip_throughput:
        out["throughput"] = throughput_part(args.problems, args.n, args.max_tokens)
        print(json.dumps(out["throughput"], indent=1), flush=True)
    out["args"] = vars(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "solutions.json").write_text(json.dumps(out, indent=1))
    print(f"written: {RESULTS / 'solutions.json'}")


if __name__ == "__main__":
    main()
