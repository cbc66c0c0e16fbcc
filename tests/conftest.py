import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import dagster as dg
import pytest

from partitions.registry import load_registry

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BUNDLED_REGISTRY = REPO / "partitions" / "sources.yaml"

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


#: what `make test-fast` leaves out: servers, subprocess kill/resume runs, the whole demo
SLOW_MODULES = {"test_demo.py", "test_demo_formats.py", "test_webserver.py", "test_pool.py", "test_embeddings_resume.py"}
SLOW_TESTS = {"test_openai_backend_against_transformers_serve",
              "test_generated_solutions_over_the_openai_backend_against_transformers_serve"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_MODULES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
