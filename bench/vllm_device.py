"""vLLM on a GPU machine, through the project's own backends (not part of CI; run by hand).

    python bench/vllm_device.py convert            # embedded_model_dir() into $POSTTRAIN_MODEL_CACHE
    python bench/vllm_device.py engine OUT.json    # VLLMBackend (offline vllm.LLM)
    python bench/vllm_device.py serve OUT.json     # `vllm serve` on loopback + OpenAIBackend
    python bench/vllm_device.py merge OUT.json PART.json...

`engine` writes the 16 (chat prompt of a GSM8K question, gold answer) pairs and the engine's
avg_logprob per pair; `serve` scores the same pairs through /v1/completions echo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

Q = [{"role": "user", "content": "What is 2+3?"}]
QUESTIONS = ["What is 2+3?", "Name a fruit.", "What is the capital of France?", "Write a haiku about rain.",
             "Who wrote Hamlet?", "Explain gravity in one sentence.", "What is 7*8?", "Translate 'cat' to French."]
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}, "confident": {"type": "boolean"}},
          "required": ["answer", "confident"]}
SCHEMA_Q = [{"role": "user", "content": "Capital of France? JSON."}]
GSM = REPO / "posttrain_assets" / "sample_data" / "gsm8k" / "train_300.jsonl"


def schema_check(be, res: dict) -> None:
    """A JSON-schema request through the backend: the text, whether it parses, whether it has the keys."""
    from resources.llm.base import Decoding

    (v,) = be.chat([SCHEMA_Q], Decoding(max_tokens=40), SCHEMA)
    res["schema_text"] = texts(v)[0]
    try:
        obj = json.loads(v[0].text)
        res["schema_parses"] = True
        res["schema_has_keys"] = set(obj) >= {"answer", "confident"}
    except Exception as exc:  # noqa: BLE001
        res["schema_parses"] = f"no: {exc}"


def gsm(n: int) -> list[dict]:
    return [json.loads(line) for line in GSM.read_text().splitlines()[:n]]


def spec(**kw):
    base = dict(backend="vllm", model="", revision=None, quantization=None, gpu_memory_utilization=None,
                tensor_parallel_size=1, max_model_len=2048, dtype="auto", trust_remote_code=False, temperature=0.0,
                top_p=1.0, max_tokens=256, batch_size=8, batch_invariant=True, threads=0,
                base_url="http://127.0.0.1:8000/v1")
    base.update(kw)
    return types.SimpleNamespace(**base)


def dump(path: str, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=1, default=str))


def texts(answers) -> list:
    return [a.text if hasattr(a, "text") else f"ERROR: {a}" for a in answers]


def lp(x):
    return list(x) if isinstance(x, tuple) else f"ERROR: {x}"


def versions() -> dict:
    import importlib.metadata as md

    v = {"python": sys.version.split()[0]}
    for name in ("vllm", "torch", "transformers", "tokenizers", "dagster", "xgrammar", "llguidance", "gguf"):
        try:
            v[name] = md.version(name)
        except md.PackageNotFoundError:
            v[name] = None
    try:  # no CUDA initialisation here: vLLM forks its engine process afterwards
        v["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                  capture_output=True, text=True).stdout.strip()
    except OSError as exc:
        v["gpu"] = repr(exc)
    return v


def cmd_convert() -> None:
    from resources.llm.embedded import embedded_model_dir

    t = time.time()
    folder = embedded_model_dir()
    print("converted", folder, f"{time.time() - t:.1f}s", sorted(os.listdir(folder)))


def cmd_engine(out: str, dtype: str = "auto") -> None:
    from resources.llm.base import Completion, Decoding
    from resources.llm.embedded import embedded_model_dir
    from resources.llm.vllm_backend import VLLMBackend

    folder = embedded_model_dir()
    res: dict = {"versions": versions(), "folder": folder, "dtype_requested": dtype}
    t = time.time()
    be = VLLMBackend(spec(model=folder, gpu_memory_utilization=0.5, dtype=dtype))
    res["engine_start_s"] = round(time.time() - t, 1)
    res["engine_kwargs"] = be.engine_kwargs
    try:
        res["dtype_used"] = str(be.llm.llm_engine.model_config.dtype)
    except Exception as exc:  # noqa: BLE001
        res["dtype_used"] = repr(exc)
    dump(out, res)

    (ans,) = be.chat([Q], Decoding(max_tokens=24))
    res["greedy_2plus3"] = texts(ans)[0]

    d = Decoding(n=2, temperature=0.9, max_tokens=12, seed=3)
    batch = [[{"role": "user", "content": q}] for q in QUESTIONS]
    in_batch = be.chat(batch, d)
    alone = [be.chat([b], d)[0] for b in batch]
    res["sampled_alone_q4"] = texts(alone[4])
    res["sampled_in_batch_q4"] = texts(in_batch[4])
    res["sampled_q4_identical"] = texts(alone[4]) == texts(in_batch[4])
    res["sampled_identical_of_8"] = sum(texts(a) == texts(b) for a, b in zip(alone, in_batch))

    schema_check(be, res)
    dump(out, res)

    p = be.chat_prompt(Q)
    res["chat_prompt_2plus3"] = p
    right, wrong = be.avg_logprob([p, p], ["2 + 3 = 5", "The answer is 7 bananas"])
    res["avg_logprob_right_wrong"] = [lp(right), lp(wrong)]

    rows = gsm(64)
    msgs = [[{"role": "user", "content": r["question"]}] for r in rows]
    be.chat(msgs[:8], Decoding(max_tokens=8))  # warm-up
    t = time.time()
    outs = be.chat(msgs, Decoding(max_tokens=128))
    dt = time.time() - t
    toks = sum(o[0].tokens_out for o in outs if isinstance(o[0], Completion))
    res["gsm64"] = {"seconds": round(dt, 3), "tokens_out": toks, "tokens_per_s": round(toks / dt, 1),
                    "requests_per_s": round(64 / dt, 2), "first_answer": texts(outs[0])[0]}
    dump(out, res)

    prompts = [be.chat_prompt([{"role": "user", "content": r["question"]}]) for r in rows[:16]]
    conts = [r["answer"] for r in rows[:16]]
    t = time.time()
    vals = be.avg_logprob(prompts, conts)
    res["pairs_logprob_s"] = round(time.time() - t, 3)
    # alone vs batch for scoring too
    alone0 = be.avg_logprob(prompts[:1], conts[:1])[0]
    res["logprob_item0_alone_vs_batch"] = [lp(alone0), lp(vals[0])]
    res["pairs"] = [{"prompt": p, "continuation": c, "engine": lp(x)} for p, c, x in zip(prompts, conts, vals)]
    dump(out, res)
    be.close()
    print(json.dumps({k: v for k, v in res.items() if k not in ("pairs", "chat_prompt_2plus3")}, indent=1))


def start_server(folder: str, log_path: str, eager: bool):
    args = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", folder, "--host", "127.0.0.1", "--port",
            "8000", "--max-model-len", "2048", "--gpu-memory-utilization", "0.5"]
    if eager:
        args.append("--enforce-eager")
    log = open(log_path, "a")
    log.write(f"\n=== {' '.join(args)}\n")
    log.flush()
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    Path(log_path).with_suffix(".pid").write_text(str(proc.pid))
    return args, proc


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait_up(proc, timeout: float) -> bool:
    import requests

    t = time.time()
    while time.time() - t < timeout:
        if proc.poll() is not None:
            return False
        try:
            if requests.get("http://127.0.0.1:8000/health", timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(1)
    return False


def cmd_serve(out: str, engine_json: str, log_path: str) -> None:
    from resources.llm.base import Completion, Decoding
    from resources.llm.embedded import embedded_model_dir
    from resources.llm.openai_backend import OpenAIBackend

    folder = embedded_model_dir()
    eng = json.loads(Path(engine_json).read_text()) if Path(engine_json).exists() else {}
    res: dict = {}
    t = time.time()
    args, proc = start_server(folder, log_path, eager=False)
    ok = wait_up(proc, 170)
    if not ok:
        stop(proc)
        res["compiled_start_failed"] = True
        args, proc = start_server(folder, log_path, eager=True)
        ok = wait_up(proc, 110)
    res["serve_cmd"] = " ".join(args)
    res["serve_up"] = ok
    res["serve_start_s"] = round(time.time() - t, 1)
    dump(out, res)
    if not ok:
        stop(proc)
        raise SystemExit("vllm serve did not come up; see serve log")
    try:
        be = OpenAIBackend(spec(backend="openai", model=folder), api_key=None, max_concurrency=16, timeout_s=120,
                           max_retries=3)
        (ans,) = be.chat([Q], Decoding(max_tokens=24))
        res["greedy_2plus3"] = texts(ans)[0]
        res["greedy_same_as_engine"] = res["greedy_2plus3"] == eng.get("greedy_2plus3")
        d = Decoding(n=2, temperature=0.9, max_tokens=12, seed=3)
        batch = [[{"role": "user", "content": q}] for q in QUESTIONS]
        in_batch = be.chat(batch, d)
        alone = be.chat([batch[4]], d)[0]
        res["sampled_q4_alone"], res["sampled_q4_in_batch"] = texts(alone), texts(in_batch[4])
        res["sampled_q4_identical"] = texts(alone) == texts(in_batch[4])
        schema_check(be, res)
        res["schema_supported_flag"] = be.schema_supported
        dump(out, res)
        if eng.get("chat_prompt_2plus3"):
            p = eng["chat_prompt_2plus3"]
            res["avg_logprob_right_wrong"] = [lp(x) for x in be.avg_logprob([p, p], ["2 + 3 = 5",
                                                                                   "The answer is 7 bananas"])]
        pairs = eng.get("pairs") or []
        if pairs:
            t = time.time()
            vals = be.avg_logprob([x["prompt"] for x in pairs], [x["continuation"] for x in pairs])
            res["pairs_logprob_s"] = round(time.time() - t, 3)
            res["pairs_serve"] = [lp(x) for x in vals]
        rows = gsm(64)
        msgs = [[{"role": "user", "content": r["question"]}] for r in rows]
        be.pool = 64
        t = time.time()
        outs = be.chat(msgs, Decoding(max_tokens=128))
        dt = time.time() - t
        toks = sum(o[0].tokens_out for o in outs if isinstance(o[0], Completion))
        res["gsm64_concurrency64"] = {"seconds": round(dt, 3), "tokens_out": toks, "tokens_per_s": round(toks / dt, 1),
                                      "errors": sum(not isinstance(o[0], Completion) for o in outs),
                                      "first_answer": texts(outs[0])[0],
                                      "first_answer_same_as_engine": texts(outs[0])[0] ==
                                      (eng.get("gsm64") or {}).get("first_answer")}
        dump(out, res)
    finally:
        stop(proc)
    print(json.dumps({k: v for k, v in res.items() if k != "pairs_serve"}, indent=1))


def cmd_merge(out: str, engine_json: str, serve_json: str, *extra: str) -> None:
    load = lambda p: json.loads(Path(p).read_text()) if Path(p).exists() else {}  # noqa: E731
    eng, srv = load(engine_json), load(serve_json)
    pairs = eng.pop("pairs", [])
    sv = srv.pop("pairs_serve", [None] * len(pairs))
    diffs = []
    for x, s in zip(pairs, sv):
        x["serve"] = s
        if isinstance(x.get("engine"), list) and isinstance(s, list):
            x["abs_diff"] = abs(x["engine"][0] - s[0])
            diffs.append(x["abs_diff"])
    res = {"engine": eng, "serve": srv, "pairs": pairs,
           "pairs_mean_abs_diff_engine_vs_serve": sum(diffs) / len(diffs) if diffs else None,
           "pairs_max_abs_diff_engine_vs_serve": max(diffs) if diffs else None}
    for p in extra:
        res[Path(p).stem] = load(p)
    dump(out, res)
    print("merged", out, "mean_abs_diff", res["pairs_mean_abs_diff_engine_vs_serve"])


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    {"convert": cmd_convert, "engine": cmd_engine, "serve": cmd_serve, "merge": cmd_merge}[cmd](*rest)
