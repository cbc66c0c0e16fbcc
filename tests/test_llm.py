"""The LLM client: every backend that can run here really runs (embedded, transformers on the same
weights, openai against a real `transformers serve` on loopback); the cache and failure accounting."""

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from resources.llm import (LLMError, LLMResource, LogprobsUnsupported, ModelSpec, embedded_model_dir,
                           vllm_engine_kwargs, vllm_sampling_kwargs)
from resources.llm_cache import CallStats, LLMCache, cached_calls

from .helpers import free_port, wait_until_up

Q = [{"role": "user", "content": "What is 2+3?"}]


@pytest.fixture(scope="module")
def embedded():
    return LLMResource().backend("generator")


@pytest.fixture(scope="module")
def served_model(tmp_path_factory):
    """`transformers serve` on loopback with the bundled SmolLM2 weights (a real OpenAI-compatible server)."""
    folder = embedded_model_dir()
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    log_path = tmp_path_factory.mktemp("serve") / "transformers-serve.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), folder],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, f"{url}/health", 120, log_path)
        yield f"{url}/v1", folder
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_embedded_chat_complete_and_logprob(embedded):
    (greedy,) = embedded.chat([Q], max_tokens=24)
    assert "5" in greedy[0].text and greedy[0].tokens_out > 0 and greedy[0].tokens_in > 20
    (two,) = embedded.chat([Q], n=2, temperature=0.9, max_tokens=12, seed=3)
    assert len(two) == 2
    ((paris,),) = embedded.complete(["The capital of France is"], max_tokens=8, stop=["."])
    assert paris.text.strip() == "Paris" and "." not in paris.text
    prompt = embedded.chat_prompt(Q)
    right, wrong = embedded.avg_logprob([prompt, prompt], ["2 + 3 = 5", "The answer is 7 bananas"])
    assert right[0] > wrong[0] and right[1] > 0


def test_batched_logprob_equals_unbatched():
    be1 = LLMResource(models={"g": ModelSpec(batch_size=1)}).backend("g")
    be4 = LLMResource(models={"g": ModelSpec(batch_size=4)}).backend("g")
    ps = [be1.chat_prompt([{"role": "user", "content": q}]) for q in ("Hi", "What is the capital of Peru?", "2+2?")]
    cs = ["Hello!", "The capital of Peru is Lima.", "4"]
    a, b = be1.avg_logprob(ps, cs), be4.avg_logprob(ps, cs)
    assert [x[1] for x in a] == [x[1] for x in b]
    assert all(abs(x[0] - y[0]) < 1e-4 for x, y in zip(a, b))


def test_transformers_backend_same_weights_same_answers(embedded):
    tf = LLMResource(models={"tf": ModelSpec(backend="transformers", model=embedded_model_dir())}).backend("tf")
    assert tf.chat([Q], max_tokens=24)[0][0].text == embedded.chat([Q], max_tokens=24)[0][0].text
    p = embedded.chat_prompt(Q)
    assert abs(tf.avg_logprob([p], ["2 + 3 = 5"])[0][0] - embedded.avg_logprob([p], ["2 + 3 = 5"])[0][0]) < 1e-5


def test_openai_backend_against_transformers_serve(served_model, embedded):
    url, folder = served_model
    llm = LLMResource(models={"srv": ModelSpec(backend="openai", model=folder, base_url=url, max_tokens=24)})
    be = llm.backend("srv")
    (answers,) = be.chat([Q])
    assert not isinstance(answers[0], LLMError), answers[0]
    assert answers[0].text == embedded.chat([Q], max_tokens=24)[0][0].text  # same weights, greedy
    assert answers[0].tokens_in > 0 and answers[0].tokens_out > 0
    ((paris,),) = be.complete(["The capital of France is"], max_tokens=3)
    assert "Paris" in paris.text
    # transformers serve ignores echo/logprobs: a clear, counted error rather than a made-up number
    (lp,) = be.avg_logprob(["The capital of France is"], [" Paris"])
    assert isinstance(lp, LogprobsUnsupported) and "no prompt logprobs" in str(lp)


class _Broken(BaseHTTPRequestHandler):
    """A deliberately broken server (errors and garbage cannot be provoked from a real one)."""
    hits = 0

    def do_POST(self):
        _Broken.hits += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        if text.startswith("500"):
            self.send_response(500); self.end_headers(); self.wfile.write(b"boom")  # noqa: E702
        elif text.startswith("garbage"):
            self.send_response(200); self.end_headers(); self.wfile.write(b"<html>not json")  # noqa: E702
        elif text.startswith("empty"):
            self.send_response(200); self.end_headers(); self.wfile.write(b'{"choices": []}')  # noqa: E702
        else:
            self.send_response(200); self.end_headers()  # noqa: E702
            self.wfile.write(json.dumps({"choices": [{"message": {"content": "ok " + text}, "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode())

    def log_message(self, *a):
        pass


def test_errors_and_garbage_become_counted_failed_rows(tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        llm = LLMResource(models={"b": ModelSpec(backend="openai", model="m",
                                                 base_url=f"http://127.0.0.1:{srv.server_port}/v1")},
                          max_retries=3)
        be = llm.backend("b")
        cache = LLMCache(str(tmp_path / "c.sqlite"))
        payloads = [[{"role": "user", "content": t}] for t in ("fine 1", "500 please", "garbage", "empty", "fine 2")]
        stats = CallStats()
        out = cached_calls(cache, identity=be.identity, op="chat", params={}, payloads=payloads, n=1, seed=0,
                           run=lambda ps: be.chat(ps), stats=stats)
        texts = [o[0].text if not isinstance(o[0], LLMError) else None for o in out]
        assert texts == ["ok fine 1", None, None, None, "ok fine 2"]
        assert "HTTP 500" in str(out[1][0]) and "not JSON" in str(out[2][0]) and "unexpected answer" in str(out[3][0])
        assert (stats.calls, stats.failures, stats.cache_hits) == (5, 3, 0)
        assert _Broken.hits == 5 + 2  # the 500 was retried (3 attempts), the rest sent once
        assert cache.count() == 2  # failures are not cached: the next run asks again
        again = CallStats()
        cached_calls(cache, identity=be.identity, op="chat", params={}, payloads=payloads, n=1, seed=0,
                     run=lambda ps: be.chat(ps), stats=again)
        assert (again.cache_hits, again.calls, again.failures) == (2, 3, 3)
    finally:
        srv.shutdown()


def test_vllm_request_mapping_without_vllm():
    spec = ModelSpec(backend="vllm", model="Qwen/Qwen2.5-7B-Instruct", quantization="awq", max_model_len=8192,
                     gpu_memory_utilization=0.85, tensor_parallel_size=2, dtype="bfloat16")
    assert vllm_engine_kwargs(spec) == {"model": "Qwen/Qwen2.5-7B-Instruct", "dtype": "bfloat16",
                                        "trust_remote_code": False, "gpu_memory_utilization": 0.85,
                                        "tensor_parallel_size": 2, "quantization": "awq", "max_model_len": 8192}
    assert vllm_sampling_kwargs(n=4, temperature=0.7, top_p=0.95, max_tokens=512, stop=["</s>"], seed=1) == \
        {"n": 4, "temperature": 0.7, "top_p": 0.95, "max_tokens": 512, "stop": ["</s>"], "seed": 1}
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(LLMError, match="backend 'vllm' needs vllm"):
            LLMResource(models={"v": spec}).backend("v")
        pytest.skip("vllm is not installed (GPU-only `gpu` extra): the engine itself is not run here")


def test_models_from_yaml_file(tmp_path):
    f = tmp_path / "models.yaml"
    f.write_text("models:\n  judge:\n    backend: openai\n    model: qwen\n    base_url: http://127.0.0.1:9/v1\n"
                 "    temperature: 0.2\n")
    llm = LLMResource(config_file=str(f))
    assert llm.spec("judge").temperature == 0.2 and llm.spec("judge").backend == "openai"
    assert llm.spec("generator").backend == "embedded"
    with pytest.raises(LLMError, match="backend must be one of"):
        LLMResource(models={"x": ModelSpec(backend="tgi")}).backend("x")
