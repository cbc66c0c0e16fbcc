import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import dagster as dg
import pytest

from partitions.registry import load_registry
import posttrain_assets  # noqa: F401,E402 importing the package registers what the registry validates with

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BUNDLED_REGISTRY = REPO / "partitions" / "sources.yaml"
#: the graph the session runs once (`demo_run`): the bundled registry + one source per format + an all-rejected one
DEMO_REGISTRY = REPO / "tests" / "data" / "demo_registry.yaml"

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")


@pytest.fixture(scope="session")
def bundled():
    return load_registry(BUNDLED_REGISTRY)


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture
def storage_root(tmp_path):
    return str(tmp_path / "storage")


@dataclass
class DemoRun:
    """The README's main job (`python -m posttrain_assets.demo`) run once: its output and where it wrote."""

    base: Path
    returncode: int
    stdout: str
    stderr: str

    @property
    def storage(self) -> Path:
        return self.base / "storage"

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def table(self) -> dict[str, list[str]]:
        """The per-source summary table: key -> its columns (kind, raw rows, raw rejected, records in,
        kept, removed, rejected, reasons, after dedup, scored, seeds, evolved, solutions, hard)."""
        return {ln.split()[0]: ln.split() for ln in self.stdout.splitlines()
                if re.match(r"^[a-z0-9_]+\s+(cot|sft|prompt|preference|attributes|synthetic)\s", ln)}

    def catalog(self):
        import duckdb

        return duckdb.connect(str(self.storage / "catalog.duckdb"), read_only=True)

    def sql(self, query: str) -> list[tuple]:
        con = self.catalog()
        try:
            return con.execute(query).fetchall()
        finally:
            con.close()


def demo_kernels() -> dict[str, str]:
    """The CPU kernels the session's graph runs on: `POSTTRAIN_DEMO_KERNELS` ("NAME=VALUE ..."; `make
    test` passes its ALT_KERNELS, so the one graph run of a CI run is on kernels other than the default
    ones the other model tests run on first)."""
    return dict(kv.split("=", 1) for kv in os.environ.get("POSTTRAIN_DEMO_KERNELS", "").split())


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> DemoRun:
    """The whole graph once per session (every asset, every source of DEMO_REGISTRY, the embedded
    models), in a fresh instance and storage; tests/test_demo.py checks its tables in many small tests."""
    reuse = os.environ.get("POSTTRAIN_DEMO_RUN")  # a finished run's folder: check it without running again
    if reuse:
        return DemoRun(Path(reuse), 0, (Path(reuse) / "demo-stdout.txt").read_text(), "")
    base = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "DAGSTER_HOME": str(base / "home"), "POSTTRAIN_STORAGE": str(base / "storage"),
           **demo_kernels()}
    out = subprocess.run([sys.executable, "-m", "posttrain_assets.demo", "--registry", str(DEMO_REGISTRY)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    (base / "demo-stdout.txt").write_text(out.stdout)
    run = DemoRun(base, out.returncode, out.stdout, out.stderr)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


#: what `make test-fast` leaves out: servers, subprocess kill/resume runs, the whole demo
SLOW_MODULES = {"test_demo.py", "test_webserver.py", "test_pool.py", "test_embeddings_resume.py"}
SLOW_TESTS = {"test_openai_backend_against_transformers_serve",
              "test_generated_solutions_over_the_openai_backend_against_transformers_serve"}


#: the modules that run an LLM engine (the embedded CTranslate2 one, or transformers) whose outputs move
#: with the CPU's kernels: `make test` runs them a second time on other kernels (docs/tests.md "Tests on any CPU").
#: test_demo is not among them: its one graph run per session is already on the other kernels (demo_kernels)
MODEL_MODULES = {"test_llm.py", "test_scoring.py", "test_evolution.py", "test_magpie.py", "test_magpie_chain.py",
                 "test_solutions.py", "test_quality_tags.py", "test_preference_pairs.py", "test_reward.py",
                 "test_model_stages.py", "test_reliability_llm.py", "test_synthesis_openai.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_MODULES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        if item.path.name in MODEL_MODULES:
            item.add_marker(pytest.mark.model)
