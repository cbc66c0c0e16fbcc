"""Agreement of `avg_logprob` between the embedded CPU engine (CTranslate2 int8) and vLLM on a GPU
(the offline engine and `vllm serve` through the openai backend), on the same 16 (chat prompt of a
GSM8K question, gold solution) pairs; the GPU side comes from `bench/vllm_device.py` (its
results of 2026-11-22 on an H100: bench/vllm_results_h100.json).

    .venv/bin/python -m bench.vllm_compare [RESULTS.json]
"""

import json
import sys
from pathlib import Path

import numpy as np

from .common import table


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("vllm_results_h100.json"))
    data = json.loads(path.read_text())
    pairs = data["pairs"]
    from resources.llm import LLMResource

    emb = LLMResource().backend("generator")
    ours = emb.avg_logprob([p["prompt"] for p in pairs], [p["continuation"] for p in pairs])
    cols = {"vLLM engine bf16": [p["engine"][0] for p in pairs],
            "vllm serve (openai backend)": [p["serve"][0] for p in pairs],
            "vLLM engine fp32": [p["engine"][0] for p in data["engine32"]["pairs"]]}
    emb_v = np.array([o[0] for o in ours])
    rows = []
    for name, vals in cols.items():
        d = np.abs(emb_v - np.array(vals))
        rows.append([name, f"{d.mean():.4f}", f"{d.max():.4f}"])
    assert [o[1] for o in ours] == [p["engine"][1] for p in pairs], "token counts differ"
    print(f"{len(pairs)} pairs, {sum(o[1] for o in ours)} continuation tokens; per-item mean log-prob of the gold "
          "solution, embedded CTranslate2 int8 (CPU) vs:")
    print(table(["GPU side", "mean |diff| (nats)", "max |diff| (nats)"], rows))
    s = np.array(cols["vllm serve (openai backend)"])
    print(f"engine vs serve: mean |diff| {np.abs(np.array(cols['vLLM engine bf16']) - s).mean():.1e}")


if __name__ == "__main__":
    main()
