"""Shared test helpers: write registries, materialise assets in process."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import yaml

from posttrain_assets.ingest.assets import merged_prompts, raw_records
from resources.embeddings import EmbeddingClient
from resources.hub import HubResource
from resources.llm import LLMResource
from resources.reward import RewardResource
from resources.sources import SourceRegistryResource
from resources.storage import ParquetIOManager, StorageResource

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "posttrain_assets" / "sample_data"


class KillAfter:
    """A `resources.faults.Checkpoint` that SIGKILLs the process right after the k-th checkpoint of
    `unit`: a crash-recovery test knows exactly what was committed before the kill."""

    def __init__(self, k: int, unit: str):
        self.k, self.unit, self.seen = k, unit, 0

    def __call__(self, unit: str) -> None:
        if unit == self.unit:
            self.seen += 1
            if self.seen >= self.k:
                os.kill(os.getpid(), signal.SIGKILL)


def killed_after(resource_cls, k: int, unit: str, **fields):
    """`resource_cls(**fields)` whose checkpoint hook is a KillAfter(k, unit) (the injected hook)."""
    kill = KillAfter(k, unit)

    class Killing(resource_cls):
        def checkpoint(self, unit: str) -> None:
            kill(unit)

    Killing.__name__ = resource_cls.__name__
    return Killing(**fields)


def write_registry(path: Path, sources: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"version": 1, "sources": sources}, sort_keys=False))
    return path


def resources_for(storage_root: str, registry_path) -> dict:
    storage = StorageResource(root=storage_root)
    return {"storage": storage, "io_manager": ParquetIOManager(storage=storage),
            "registry": SourceRegistryResource(path=str(registry_path)),
            "embeddings": EmbeddingClient(), "hub": HubResource(), "llm": LLMResource(), "reward": RewardResource()}


def no_contamination(store, keys) -> None:
    """An empty contamination check for each source: what hf_parquet reads beside the records (a test
    of the export that is not about decontamination)."""
    from posttrain_assets.decontamination.contamination import CONTAMINATION_SCHEMA

    for key in keys:
        store.write(CONTAMINATION_SCHEMA.empty_table(), store.path("contamination", key))


def upstream_specs(*keys: str) -> list:
    """Partitioned upstream assets whose Parquet files a test wrote itself."""
    return [dg.AssetSpec(k, partitions_def=dg.DynamicPartitionsDefinition(name="source")) for k in keys]


def materialize_source(key: str, instance, storage_root: str, registry_path,
                       assets=(raw_records, merged_prompts), run_config=None, raise_on_error=True):
    if key not in instance.get_dynamic_partitions("source"):
        instance.add_dynamic_partitions("source", [key])
    return dg.materialize(list(assets), partition_key=key, instance=instance,
                          resources=resources_for(storage_root, registry_path),
                          run_config=run_config, raise_on_error=raise_on_error)


def mat_metadata(result, asset: str) -> dict:
    for ev in result.get_asset_materialization_events():
        if ev.asset_key.to_user_string() == asset:
            return {k: v.value for k, v in ev.materialization.metadata.items()}
    raise KeyError(asset)


def step_error(result) -> str:
    for ev in result.all_events:
        if ev.is_step_failure:
            data = ev.step_failure_data
            if data.user_failure_data is not None:  # a dagster.Failure: its description
                return data.user_failure_data.description
            return data.error.message
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(proc, url: str, timeout_s: float, log_path) -> None:
    """Poll `url` until it answers 200; fail with the server's log if it exits or never answers."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited:\n{Path(log_path).read_text()}")
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout_s:.0f} s:\n{Path(log_path).read_text()}")


@contextmanager
def transformers_serve(log_dir: Path, env: dict | None = None):
    """`transformers serve` on loopback with the bundled SmolLM2 weights (a real OpenAI-compatible
    server); yields (base url of /v1, the weights folder, the server's log path)."""
    from resources.llm import embedded_model_dir

    folder = embedded_model_dir()
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    log_path = Path(log_dir) / "transformers-serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), folder],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(proc, f"{url}/health", 120, log_path)
            yield f"{url}/v1", folder, log_path
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@contextmanager
def dagster_dev(tmp_path: Path, env: dict):
    """`dagster dev -w workspace.yaml` (webserver + daemon) on a free loopback port with the instance at
    env["DAGSTER_HOME"]; yields a `DevServer` (its `url`; `expect_line` blocks on its output). Its output
    is also written to tmp_path/webserver.log. Stopped as its Ctrl-C stops it: SIGTERM to the `dagster dev`
    process alone (it maps SIGTERM to SIGINT), which tells the webserver and the daemon to shut down, waits
    for them, then shuts its code server down; then SIGKILL to whatever of its process group is left.

    Not SIGTERM to the whole group: the code server then exits on its own, `dagster dev`'s code-server
    monitor (dagster/_cli/proxy_server_manager.py, every 5 s) starts a new one while the rest shuts
    down, and that new one, orphaned and holding the output pipe, outlived `dagster dev` by its 45 s
    heartbeat timeout (the 30 s teardowns of the UI and webserver tests)."""
    port = free_port()
    exe = Path(sys.executable).with_name("dagster")
    log_path = tmp_path / "webserver.log"
    proc = subprocess.Popen([str(exe), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=_sigint_default, text=True, errors="replace")
    dev = DevServer(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_until_up(proc, f"{dev.url}/server_info", 180, log_path)  # its "Serving ..." line comes before it listens
        yield dev
    finally:
        stop_dagster_dev(dev)


def _sigint_default() -> None:
    """In the child before exec: SIGINT back to its default. A test run started in the background by a
    shell without job control (`cmd &`, as CI may be) inherits SIGINT ignored, and so would dagster dev,
    which stops on SIGTERM by raising SIGINT at itself: ignored, it never stops (60 s teardowns)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_dagster_dev(dev: "DevServer") -> None:
    """SIGTERM to `dagster dev` itself; once it has exited, its output's end (every process of the group
    that holds the pipe has exited: normally within a second or two), then SIGKILL to the group for
    anything still there (a run it launched that is still going); each wait bounded."""
    proc = dev.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)  # dagster dev gives its webserver and daemon up to 60 s each
    except subprocess.TimeoutExpired:
        pass
    else:
        dev.reader.join(timeout=15)  # its code server's shutdown
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the whole group has exited
        pass
    proc.wait(timeout=30)
    dev.reader.join(timeout=30)


ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the colour codes of dagster's log lines


#: the backfill daemon's line once an asset backfill has reached a final status (dagster's asset_backfill.py)
BACKFILL_DONE = (r"Asset backfill (?P<id>\w+) completed (?:cancellation )?iteration with status "
                 r"BulkActionStatus\.(?P<status>COMPLETED_SUCCESS|COMPLETED_FAILED|COMPLETED|FAILED|CANCELED)\b")


class DevServer:
    """A running `dagster dev`: `url`, and its output lines (ANSI colours stripped) read by a thread
    into the log file and a queue, so a test waits for what the daemon reports instead of polling."""

    def __init__(self, url: str, proc: subprocess.Popen, log_path: Path):
        import queue
        import threading

        self.url, self.proc, self.log_path = url, proc, log_path
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with open(self.log_path, "w") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                self.lines.put(ANSI.sub("", line.rstrip("\n")))
        self.lines.put(None)  # the server's output ended

    def expect_line(self, pattern: str, timeout_s: float, on_line=None):
        """The `re.Match` of the first next output line that matches `pattern` (blocking on the next
        line, at most timeout_s in all); fails if the server's output ends first. `on_line` sees
        every line read."""
        import queue

        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout_s:.0f} s; "
                                     f"log: {self.log_path}") from None
            if line is None:
                raise AssertionError(f"dagster dev ended before a line matching {pattern!r}:\n"
                                     f"{self.log_path.read_text()[-4000:]}")
            if on_line is not None:
                on_line(line)
            match = rx.search(line)
            if match:
                return match


HH_SAMPLE = SAMPLE / "hh_rlhf_harmless_base" / "test_300.jsonl.gz"


def hh_pairs(n: int) -> list[tuple[list[dict], str, str]]:
    """The first n usable HH-RLHF rows (bundled slice) as (prompt messages, chosen, rejected), split as
    the hh_rlhf adapter does; a row whose transcripts do not parse or do not share the prompt is skipped."""
    import gzip
    import json

    from posttrain_assets.ingest.adapters import parse_hh_transcript

    out = []
    with gzip.open(HH_SAMPLE, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            try:
                chosen, rejected = parse_hh_transcript(row["chosen"]), parse_hh_transcript(row["rejected"])
            except ValueError:
                continue
            if chosen[:-1] != rejected[:-1] or chosen[-1]["role"] != "assistant":
                continue
            out.append((chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]))
            if len(out) == n:
                break
    return out


def load_export(path, config: str, split: str = "train"):
    """`datasets.load_dataset` on an export folder, with a cache of its own: `datasets` keys the cache of a
    local folder by its name and layout, not its absolute path, so a later export to another folder also
    named hf_export (another test, an earlier run) would be read back as the stale table it cached first."""
    import tempfile

    import datasets

    with tempfile.TemporaryDirectory(prefix="hf-datasets-") as cache:
        return datasets.load_dataset(str(path), config, split=split, cache_dir=cache, keep_in_memory=True)
