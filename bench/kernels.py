"""How much the embedded engine's outputs move with the CPU's kernels: the measurement behind the
tests' tolerances (docs/tests.md "Tests on any CPU").

    .venv/bin/python -m bench.kernels            # every variant below, one subprocess each
    .venv/bin/python -m bench.kernels --one      # the current environment only (one JSON line)

CTranslate2 picks an ISA family (GENERIC, AVX, AVX2, AVX512; `CT2_FORCE_CPU_ISA`) and an int8 GEMM
backend (Intel MKL on Intel CPUs, oneDNN elsewhere; `CT2_USE_MKL`), and oneDNN picks its own ISA
(`ONEDNN_MAX_CPU_ISA`). Per variant: the greedy answer to "What is 2+3?" (24 tokens), the greedy
completion of "The capital of France is", |batch-1 - batch-4| avg_logprob on 3 short and on 8 GSM8K
answers, and |int8 - transformers fp32| avg_logprob over the 8 GSM8K answers (max and mean)."""

import argparse
import json
import os
import subprocess
import sys

VARIANTS = [
    {},
    {"CT2_FORCE_CPU_ISA": "AVX2"},
    {"CT2_FORCE_CPU_ISA": "AVX"},
    {"CT2_FORCE_CPU_ISA": "GENERIC"},
    {"CT2_USE_MKL": "0"},
    {"CT2_USE_MKL": "0", "CT2_FORCE_CPU_ISA": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},  # an AVX2 CPU without MKL (AMD)
    {"CT2_USE_MKL": "0", "CT2_FORCE_CPU_ISA": "AVX", "ONEDNN_MAX_CPU_ISA": "AVX"},
]


def measure() -> dict:
    from resources.llm import Decoding, LLMResource, ModelSpec, embedded_model_dir

    from .common import REPO

    rows = [json.loads(x) for x in (REPO / "posttrain_assets/sample_data/gsm8k/train_300.jsonl").read_text().splitlines()[:8]]
    be1 = LLMResource(models={"g": ModelSpec(batch_size=1)}).backend("g")
    be4 = LLMResource(models={"g": ModelSpec(batch_size=4)}).backend("g")
    ps = [be1.chat_prompt([{"role": "user", "content": q}]) for q in ("Hi", "What is the capital of Peru?", "2+2?")]
    cs = ["Hello!", "The capital of Peru is Lima.", "4"]
    gp = [be1.chat_prompt([{"role": "user", "content": r["question"]}]) for r in rows]
    gc = [r["answer"] for r in rows]
    g1, g4 = be1.avg_logprob(gp, gc), be4.avg_logprob(gp, gc)
    tf = LLMResource(models={"tf": ModelSpec(backend="transformers", model=embedded_model_dir())}).backend("tf")
    d = [abs(x[0] - y[0]) for x, y in zip(g1, tf.avg_logprob(gp, gc))]
    q = [{"role": "user", "content": "What is 2+3?"}]
    return {
        "kernels": {k: os.environ[k] for k in ("CT2_FORCE_CPU_ISA", "CT2_USE_MKL", "ONEDNN_MAX_CPU_ISA") if k in os.environ},
        "greedy_2_plus_3": be1.chat([q], Decoding(max_tokens=24))[0][0].text,
        "greedy_capital_of_france": be1.complete(["The capital of France is"], Decoding(max_tokens=8))[0][0].text,
        "batch_diff_short": max(abs(x[0] - y[0]) for x, y in zip(be1.avg_logprob(ps, cs), be4.avg_logprob(ps, cs))),
        "batch_diff_gsm8k": max(abs(x[0] - y[0]) for x, y in zip(g1, g4)),
        "int8_vs_fp32_max": max(d), "int8_vs_fp32_mean": sum(d) / len(d),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", action="store_true", help="measure the current environment only")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(), ensure_ascii=False))
        return
    for variant in VARIANTS:
        env = {k: v for k, v in os.environ.items() if k not in ("CT2_FORCE_CPU_ISA", "CT2_USE_MKL", "ONEDNN_MAX_CPU_ISA")}
        out = subprocess.run([sys.executable, "-m", "bench.kernels", "--one"], env={**env, **variant},
                             capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
