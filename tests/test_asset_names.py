"""Asset names are said once (posttrain_assets/common/asset_names.py): every constant names an asset
of `defs`, and no configuration, job or automation module spells an asset name as a string (a
renamed asset would otherwise leave a silent default, job or condition behind)."""

import ast
from pathlib import Path

from posttrain_assets.common import asset_names
from posttrain_assets.definitions import STAGES, defs

PKG = Path(__file__).resolve().parents[1] / "posttrain_assets"
#: whole modules: the jobs, the automation, the sensors, the deployment switch
WIRING = ["definitions.py", "automation.py", "sensors.py", "deployment.py"]


def _asset_names() -> set[str]:
    return {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}


def _constants() -> dict[str, str]:
    return {k: v for k, v in vars(asset_names).items() if k.isupper() and isinstance(v, str)}


def test_every_constant_names_an_asset_and_every_asset_has_one():
    names = _asset_names()
    consts = _constants()
    assert sorted(v for v in consts.values() if v not in names) == []
    assert sorted(names - set(consts.values())) == []
    assert all(k == v.upper() for k, v in consts.items())  # the constant is the name, upper case


def _literal_strings(tree: ast.AST) -> set[int]:
    """ids of the string nodes exempt from the scan: docstrings and `Literal[...]` choices (a type
    annotation needs the literal)."""
    exempt = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body \
                and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            exempt.add(id(node.body[0].value))
        if isinstance(node, ast.Subscript) and getattr(node.value, "id", getattr(node.value, "attr", None)) == "Literal":
            exempt |= {id(n) for n in ast.walk(node.slice)}
    return exempt


def _named_strings(nodes, exempt: set[int], names: set[str]) -> list[tuple[int, str]]:
    return [(n.lineno, n.value) for root in nodes for n in ast.walk(root)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in names and id(n) not in exempt]


def _config_classes(tree: ast.AST) -> list[ast.ClassDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
            and any((getattr(b, "attr", None) or getattr(b, "id", None)) == "Config" for b in n.bases)]


def _asset_selections(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and getattr(n.func.value, "attr", None) == "AssetSelection"]


def test_no_asset_name_as_a_string_in_configs_jobs_and_automation():
    names = _asset_names()
    found = []
    for f in WIRING:
        tree = ast.parse((PKG / f).read_text())
        found += [(f, *hit) for hit in _named_strings([tree], _literal_strings(tree), names)]
    for stage in STAGES:  # the Configs' defaults and any AssetSelection of a stage package
        for path in sorted((PKG / stage).glob("*.py")):
            tree = ast.parse(path.read_text())
            nodes = [*_config_classes(tree), *_asset_selections(tree)]
            found += [(f"{stage}/{path.name}", *hit) for hit in _named_strings(nodes, _literal_strings(tree), names)]
    assert found == []


def test_the_scan_finds_a_name_and_spares_literal_choices():
    """The scan itself: a default spelled as a string is found; a `Literal` choice and a docstring are not."""
    src = ('class C(dg.Config):\n    """sft_records"""\n    a: str = "sft_records"\n'
           '    b: Literal["sft_records", "x"] = A.SFT_RECORDS\n'
           'job = dg.define_asset_job("j", selection=dg.AssetSelection.assets("hf_parquet"))\n')
    tree = ast.parse(src)
    nodes = [*_config_classes(tree), *_asset_selections(tree)]
    assert _named_strings(nodes, _literal_strings(tree), _asset_names()) == [(3, "sft_records"), (5, "hf_parquet")]
