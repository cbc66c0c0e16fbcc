"""The house rules, enforced: a package per stage (`assets.py` = Dagster only, beside pure modules
that import no dagster), no stage imports another stage, the asset group is the package, model
work only through sessions, GPU steps in the gpu pool, every task template versioned with en + ja."""

import ast
from pathlib import Path

import yaml

from posttrain_assets.common.pools import GPU_POOL
from posttrain_assets.definitions import STAGES, defs
from resources.reasons import Reason

PKG = Path(__file__).resolve().parents[1] / "posttrain_assets"
CODE_ROOTS = ("posttrain_assets", "resources", "partitions")
SHARED = "common"


def _imports(path: Path) -> list[str]:
    """Absolute module names a file imports (relative imports resolved)."""
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(parts[:-node.level])
                mod = ".".join(base + ([node.module] if node.module else []))
                out += [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            else:
                out.append(node.module)
    return out


def _stage_files():
    for stage in sorted(p for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        for f in sorted(stage.glob("*.py")):
            yield stage.name, f


def test_every_stage_is_a_package_with_assets():
    stages = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "assets.py").exists()}
    assert stages == set(STAGES) == {"ingest", "dedup", "records", "scoring", "selection", "synthesis", "decontamination",
                                          "magpie", "tagging", "steerlm", "export", "hygiene"}
    assert not (PKG / SHARED / "assets.py").exists()


def test_pure_modules_import_no_dagster():
    offenders = []
    for stage, f in _stage_files():
        if f.name in ("assets.py", "__init__.py") or (stage, f.name) == (SHARED, "metadata.py"):
            continue  # assets.py is the Dagster module; common/metadata.py builds Dagster metadata
        if any(m == "dagster" or m.startswith("dagster.") for m in _imports(f)):
            offenders.append(f"{stage}/{f.name}")
    assert offenders == []


def test_no_stage_imports_another_stage():
    offenders = []
    for stage, f in _stage_files():
        for m in _imports(f):
            parts = m.split(".")
            if parts[0] == "posttrain_assets" and len(parts) > 1 and parts[1] in STAGES and parts[1] != stage:
                offenders.append(f"{stage}/{f.name} imports {m}")
    assert offenders == []


LOWER_LAYERS = ("resources", "partitions")


def test_lower_layers_import_no_stage():
    """The model layer (resources/) and the sources registry (partitions/) import no stage and not the
    shared stage code (`posttrain_assets.<stage>` or `posttrain_assets.common`), in any of their files,
    imports inside functions included: stages depend on them, never the other way round. The one
    exception: `partitions/__main__.py` (a command-line entry, a composition root like definitions.py)
    imports `posttrain_assets.plugins` to load the owners' registrations; that is not a stage."""
    offenders = []
    for layer in LOWER_LAYERS:
        for f in sorted((PKG.parent / layer).rglob("*.py")):
            for m in _imports(f):
                parts = (m or "").split(".")
                if parts[0] == "posttrain_assets" and len(parts) > 1 and (parts[1] in STAGES or parts[1] == SHARED):
                    offenders.append(f"{f.relative_to(PKG.parent)} imports {m}")
    assert offenders == []


def test_asset_group_is_the_package():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        module = STAGES[node.group_name]
        assert key.to_user_string() in {a.key.to_user_string() for a in _assets_of(module)}, key


def _assets_of(module):
    import dagster as dg

    return [k for a in dg.load_assets_from_modules([module]) for k in a.specs]


def test_model_work_only_through_sessions():
    """No asset module builds a backend, opens the LLM cache or imports a backend module."""
    for stage, f in _stage_files():
        tree = ast.parse(f.read_text())
        calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        assert "backend" not in calls, f"{stage}/{f.name} calls .backend(): use llm.session(...)"
        banned = [m for m in _imports(f) if m.startswith("resources.llm.") and m not in ("resources.llm.tasks",)]
        assert banned == [], f"{stage}/{f.name} imports {banned}"


def test_model_steps_run_in_the_gpu_pool():
    graph = defs.resolve_asset_graph()
    using_models = {k.to_user_string(): graph.get(k).pools for k in graph.get_all_asset_keys()
                    if {"llm", "embeddings", "reward"} & set(graph.get(k).assets_def.required_resource_keys)}
    assert set(using_models) == {"prompt_embeddings", "difficulty_scores", "evolved_instructions",
                                "generated_solutions", "solution_pass_rates", "magpie_instructions",
                                "quality_tags", "preference_pairs", "attribute_model", "attribute_labelled_sft",
                                "benchmark_index"}
    assert all(pools == {GPU_POOL} for pools in using_models.values()), using_models
    cfg = yaml.safe_load((PKG.parent / "deploy" / "dagster.yaml").read_text())
    assert cfg["concurrency"]["pools"] == {"default_limit": 1, "granularity": "op", "op_granularity_run_buffer": 1}


def test_task_templates_are_versioned_with_en_and_ja():
    files = sorted(PKG.glob("*/templates/*.yaml"))
    assert files
    for f in files:
        data = yaml.safe_load(f.read_text(encoding="utf-8"))
        assert data["task"] == f.stem and str(data["version"])
        assert {"en", "ja"} <= set(data["templates"]), f


# ------------------------------------------------------------------ reason codes: one enum
#: where a reject / removal reason is written: `reason=` / `why=` keywords, the first argument of the
#: row-issue types, a local helper's `reason` parameter, comparisons with `reason`, `*_REASONS` sets
REASON_NAMES = {"reason", "why", "removed_reason"}
REASON_CALLS = {"RowIssue", "RowReject", "TaskFailure", "RewardFailure"}
REASON_SETS = ("_REASONS", "_REJECTS", "_FAILURES")


def _name(node):
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def _strings(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    if isinstance(node, ast.Call) and _name(node.func) in ("frozenset", "set", "tuple") and node.args:
        return _strings(node.args[0])
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return []


def reason_literals(tree):
    """String literals written where a reject / removal reason goes."""
    params = {}
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
            names = names[1:] if names[:1] == ["self"] else names  # a method: called as obj.name(...)
            hit = [i for i, a in enumerate(names) if a in REASON_NAMES]
            if hit:
                params[fn.name] = hit[0]
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            fname = _name(n.func)
            out += [c for kw in n.keywords if kw.arg in REASON_NAMES for c in _strings(kw.value)]
            if fname in REASON_CALLS and n.args:
                out += _strings(n.args[0])
            elif fname in params and len(n.args) > params[fname]:
                out += _strings(n.args[params[fname]])
        elif isinstance(n, ast.Compare):
            sides = [n.left, *n.comparators]
            if any(_name(s) in REASON_NAMES for s in sides):
                out += [c for s in sides for c in _strings(s)]
        elif isinstance(n, ast.Subscript) and (_name(n.value) or "").endswith("_by_reason"):
            out += _strings(n.slice)
        elif isinstance(n, ast.Dict):
            out += [c for k, v in zip(n.keys, n.values)
                    if isinstance(k, ast.Constant) and k.value in REASON_NAMES for c in _strings(v)]
        elif isinstance(n, (ast.Assign, ast.AnnAssign)):
            targets = n.targets if isinstance(n, ast.Assign) else [n.target]
            if any(isinstance(t, ast.Name) and t.id.endswith(REASON_SETS) for t in targets) and n.value:
                out += _strings(n.value)
    return out


def _code_files():
    for root in CODE_ROOTS:
        yield from sorted((PKG.parent / root).rglob("*.py"))


def test_reason_literals_are_the_enum():
    """Every reject / removal reason is a `resources.reasons.Reason` member, written as the member:
    a new literal (or a typo of an old one) fails here, naming file and line."""
    offenders = []
    for f in _code_files():
        for node in reason_literals(ast.parse(f.read_text())):
            known = node.value in {r.value for r in Reason}
            offenders.append(f"{f.relative_to(PKG.parent)}:{node.lineno} {node.value!r}: "
                             + (f"write Reason.{Reason(node.value).name}" if known else "add it to resources/reasons.py"))
    assert offenders == []


def test_reason_scan_sees_a_literal():
    """The scan itself: each kind of reason position is found (so an empty result means something)."""
    src = ("def reject(i, reason, fld): pass\nclass S:\n    def fail(self, i, tag, reason): pass\nst.fail(1, 't', 'f')\n"
           "RowIssue(reason='a')\nRowReject('b', 'f')\nreject(1, 'c', 'fld')\nx.reason == 'd'\n"
           "FAILURE_REASONS = frozenset({'e'})\nacc.removed_by_reason['g'] += 1\nTaskFailure(Reason.LLM_FAILED, 'detail')\n")
    assert sorted(n.value for n in reason_literals(ast.parse(src))) == ["a", "b", "c", "d", "e", "f", "g"]


# ------------------------------------------------------------------ functions a reader can follow
MAX_FUNCTION_LINES = 80
#: functions allowed to be longer, each with why (empty is the goal)
LONG_FUNCTIONS: dict[str, str] = {}  # "path:function": why it stays long


def test_functions_are_short_named_steps():
    """A function over ~80 lines becomes named steps (issue 21: run_evolution was 176 lines)."""
    long = {}
    for f in _code_files():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long[f"{f.relative_to(PKG.parent)}:{node.name}"] = size
    assert set(long) <= set(LONG_FUNCTIONS), {k: v for k, v in long.items() if k not in LONG_FUNCTIONS}
    assert set(LONG_FUNCTIONS) <= set(long), f"no longer long, drop from LONG_FUNCTIONS: {set(LONG_FUNCTIONS) - set(long)}"
