"""Benchmark: evolved_instructions (Evol-Instruct) on real prompts with the default models (not a test).

    .venv/bin/python -m bench.evolution [--gsm 12] [--ja 4] [--rounds 2] [--chain width>depth>flatten]
                                        [--evolve-tokens 96] [--judge-tokens 64] [--answer-tokens 128]

Input: `selected_seeds` for one source on a fresh temporary storage, written from real prompts: the
first `--gsm` GSM8K questions of the bundled slice (posttrain_assets/sample_data/gsm8k) and
`--ja` real Japanese user prompts: the first user turn of 15+ characters that asks a question
(？ / ?) of each dialogue of the bundled RealPersonaChat slice, plus the Japanese prompt of the
bundled oasst2 slice (the last of the `--ja`). The asset is materialised with Dagster (as
tests/test_evolution.py does) with the default `generator` and `judge` (the embedded SmolLM2-135M,
CTranslate2 int8) and a fresh LLM cache, so every request is really generated.

Reported from the asset's own metadata: the share of evolutions eliminated by each rule
(`eliminated_by_rule`, `funnel_json`), acceptance by language, judge failures (the equality judge's
and the seed judge's unparseable verdicts), and generations/s (model requests answered per second:
over the step's wall time incl. Dagster and the engine start, and over the model's own time).
Results: bench/results/evolution.json.
"""

import argparse
import json
import tempfile
import time

from .common import REPO, RESULTS, table

SAMPLE = REPO / "posttrain_assets" / "sample_data"
SOURCE = "bench_evol"
INSTRUCTION_RULES = ("template_words", "stopwords", "equal", "equal_judge_failed")
ANSWER_RULES = ("refusal", "answer_stopwords")


def seed_rows(gsm: int, ja: int) -> list[dict]:
    rows = []
    for i, line in enumerate((SAMPLE / "gsm8k" / "train_300.jsonl").read_text().splitlines()[:gsm]):
        r = json.loads(line)
        rows.append({"all_prompt_id": f"gsm8k:{i}", "source": SOURCE, "prompt": r["question"],
                     "answer": r["answer"].split("####")[-1].strip(), "solution": r["answer"]})
    ja_prompts = []
    if ja > 1:
        for line in (SAMPLE / "turns_realpersonachat" / "gpt4_user_turns_30.jsonl").read_text().splitlines():
            d = json.loads(line)
            turn = next((t for t in d["turns"] if len(t) >= 15 and ("？" in t or "?" in t)), None)
            if turn:
                ja_prompts.append((f"realpersonachat:{d['dialogue_id']}", turn))
            if len(ja_prompts) == ja - 1:
                break
    if ja > 0:
        for line in (SAMPLE / "oasst2_labelled" / "oasst2_filtered_60.jsonl").read_text().splitlines():
            d = json.loads(line)
            if d["prompt"]["lang"] == "ja":
                ja_prompts.append((f"oasst2:{d['prompt']['message_id']}", d["prompt"]["text"]))
                break
    rows += [{"all_prompt_id": pid, "source": SOURCE, "prompt": text, "answer": "", "solution": ""}
             for pid, text in ja_prompts[:ja]]
    return rows


def run(args) -> dict:
    import dagster as dg
    import pyarrow as pa
    import pyarrow.parquet as pq

    from posttrain_assets.synthesis.assets import evolved_instructions
    from resources.llm import LLMResource
    from resources.storage import ParquetStore
    from tests.helpers import mat_metadata, resources_for, upstream_specs

    seeds = seed_rows(args.gsm, args.ja)
    config = {"chain": args.chain.split(">"), "rounds": args.rounds, "evolve_max_tokens": args.evolve_tokens,
              "judge_max_tokens": args.judge_tokens, "answer_max_tokens": args.answer_tokens, "chunk": 8,
              "seed": args.seed}
    with tempfile.TemporaryDirectory() as tmp:
        root = f"{tmp}/storage"
        store = ParquetStore(root)
        store.write(pa.Table.from_pylist(seeds), store.path("selected_seeds", SOURCE))
        res = resources_for(root, REPO / "partitions" / "sources.yaml")
        res["llm"] = LLMResource(cache_dir=f"{tmp}/llm_cache")  # fresh: every request generated
        with dg.DagsterInstance.ephemeral() as inst:
            inst.add_dynamic_partitions("source", [SOURCE])
            t0 = time.perf_counter()
            result = dg.materialize(upstream_specs("selected_seeds", "deduplicated_prompts") + [evolved_instructions],
                                    selection=[evolved_instructions], partition_key=SOURCE, instance=inst,
                                    resources=res, run_config={"ops": {"evolved_instructions": {"config": config}}})
            wall = time.perf_counter() - t0
        md = mat_metadata(result, "evolved_instructions")
        out_table = pq.read_table(f"{root}/evolved_instructions/source={SOURCE}/data.parquet")
        examples = out_table.select(["id", "language", "evolution_path", "input", "output"]).slice(0, 4).to_pylist()

    funnel, elim = md["funnel_json"], md["eliminated_by_rule"]
    ops = [op for op in funnel if op != "round"]
    evolved = sum(funnel[op]["evolved"] for op in ops)
    answered = funnel["round"]["answered"]
    shares = {r: {"count": elim.get(r, 0), "of": "evolutions", "share": round(elim.get(r, 0) / evolved, 3) if evolved else None}
              for r in INSTRUCTION_RULES}
    shares.update({r: {"count": elim.get(r, 0), "of": "answers", "share": round(elim.get(r, 0) / answered, 3) if answered else None}
                   for r in ANSWER_RULES})
    model_s = md["llm_tokens_out"] / md["llm_tokens_per_s"] if md["llm_tokens_per_s"] else 0.0
    rnd = funnel["round"]
    return {
        "config": config, "inputs": len(seeds), "languages": md["acceptance_by_language_json"],
        "evolutions_requested": sum(funnel[op]["in"] for op in ops), "evolutions": evolved,
        "evolution_failures": sum(funnel[op]["failed"] for op in ops),
        "eliminated_by_rule": elim, "elimination_shares": shares,
        "survived_steps": sum(funnel[op]["survived"] for op in ops), "funnel": funnel,
        "judge": {"judged": rnd["judged"], "judge_failed": rnd["judge_failed"], "judge_rejected": rnd["judge_rejected"],
                  "accepted": rnd["accepted"],
                  "judge_failure_rate": round(rnd["judge_failed"] / rnd["judged"], 3) if rnd["judged"] else None,
                  "equal_judge_failed": elim.get("equal_judge_failed", 0),
                  "llm_parse_failures": md["llm_parse_failures"]},
        "output_rows": md["output_rows"], "inputs_with_output": md["inputs_with_output"],
        "rejected_by_reason": md["rejected_by_reason"], "removed_by_reason": md["removed_by_reason"],
        "depth_methods": md["depth_methods"],
        "llm": {k: md[k] for k in ("llm_requests", "llm_calls", "llm_cache_hits", "llm_failures", "llm_tokens_in",
                                   "llm_tokens_out", "llm_tokens_per_s", "llm_model")},
        "wall_s": round(wall, 1), "model_s": round(model_s, 1),
        "generations_per_s_wall": round(md["llm_calls"] / wall, 3),
        "generations_per_s_model": round(md["llm_calls"] / model_s, 3) if model_s else None,
        "examples": examples,
    }


def report(r: dict) -> str:
    langs = ", ".join(f"{k}: {v['inputs']}" for k, v in r["languages"].items())
    lines = [f"inputs {r['inputs']} ({langs}); "
             f"chain {'>'.join(r['config']['chain'])} x {r['config']['rounds']} rounds; "
             f"{r['evolutions']} evolutions of {r['evolutions_requested']} requested", ""]
    lines.append(table(["rule", "eliminated", "of", "share"],
                       [[k, v["count"], v["of"], "" if v["share"] is None else f"{v['share']:.1%}"]
                        for k, v in r["elimination_shares"].items()]))
    lines.append("")
    cols = ["in", "evolved", "failed", "eliminated_template_words", "eliminated_stopwords", "eliminated_equal",
            "eliminated_equal_judge_failed", "survived", "judged", "judge_failed", "accepted", "out"]
    lines.append(table(["op", *[c.replace("eliminated_", "el. ") for c in cols]],
                       [[op, *[f.get(c, "") for c in cols]] for op, f in r["funnel"].items()]))
    lines.append("")
    lines.append(table(["language", "inputs", "judged", "accepted", "acceptance", "output rows"],
                       [[k, v.get("inputs", 0), v.get("judged", 0), v.get("accepted", 0),
                         "" if v.get("acceptance_rate") is None else f"{v['acceptance_rate']:.0%}", v.get("out", 0)]
                        for k, v in r["languages"].items()]))
    j = r["judge"]
    lines += ["", f"seed judge: {j['judged']} judged, {j['judge_failed']} unparseable ({j['judge_failure_rate']}), "
                  f"{j['judge_rejected']} rejected, {j['accepted']} accepted; equality judge unparseable: "
                  f"{j['equal_judge_failed']}; parse failures in all: {j['llm_parse_failures']}",
              f"output rows {r['output_rows']} from {r['inputs_with_output']} inputs",
              f"model calls {r['llm']['llm_calls']} ({r['llm']['llm_tokens_out']} tokens out), wall {r['wall_s']} s, "
              f"model time {r['model_s']} s: {r['generations_per_s_wall']} generations/s over the wall, "
              f"{r['generations_per_s_model']} over the model's time, {r['llm']['llm_tokens_per_s']} tokens/s"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gsm", type=int, default=12)
    ap.add_argument("--ja", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--chain", default="width>depth>flatten")
    ap.add_argument("--evolve-tokens", type=int, default=96)
    ap.add_argument("--judge-tokens", type=int, default=64)
    ap.add_argument("--answer-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    r = run(args)
    print(report(r), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "evolution.json").write_text(json.dumps({"args": vars(args), **r}, indent=1, ensure_ascii=False))
    print(f"written: {RESULTS / 'evolution.json'}")


if __name__ == "__main__":
    main()
