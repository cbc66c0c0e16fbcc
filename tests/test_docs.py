"""README is the front door and docs/ holds the rest: README's layout table lists every package and
top-level folder that exists (and nothing that does not), every relative link of README.md, docs/ and
bench/README.md resolves to a file (and its #anchor to a heading of that file), README stays short."""

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the code roots whose packages (folders with an __init__.py) each need a row of the layout table
CODE_ROOTS = ("posttrain_assets", "resources", "partitions")
MAX_README_LINES = 200

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~)")


def _ignored(root: Path) -> list[str]:
    """.gitignore's patterns, without slashes (enough for top-level folder names)."""
    f = root / ".gitignore"
    lines = f.read_text().splitlines() if f.exists() else []
    return [ln.strip().strip("/") for ln in lines if ln.strip() and not ln.startswith("#")]


def expected_dirs(root: Path) -> set[str]:
    """Every top-level folder (not hidden, not ignored) and every package under the code roots, as 'a/b/'."""
    ignored = _ignored(root)
    out = {f"{p.name}/" for p in root.iterdir()
           if p.is_dir() and not p.name.startswith(".") and not any(fnmatch.fnmatch(p.name, g) for g in ignored)}
    for code in CODE_ROOTS:
        for init in (root / code).rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                out.add(init.parent.relative_to(root).as_posix() + "/")
    return out


def layout_rows(readme: str) -> list[str]:
    """The paths in the first column of the table under README's '## Layout' heading."""
    section = readme.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)


def layout_problems(root: Path) -> list[str]:
    rows = layout_rows((root / "README.md").read_text())
    missing = sorted(expected_dirs(root) - set(rows))
    stale = sorted(r for r in rows if not (root / r).exists() or (r.endswith("/") and not (root / r).is_dir()))
    return ([f"no row in README's layout table for {d}" for d in missing]
            + [f"README's layout table names {r}, which does not exist" for r in stale])


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped (not - and _), spaces -> '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(md: str) -> set[str]:
    out, seen, fenced = set(), {}, False
    for line in md.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        m = re.match(r"^#{1,6} (.+?)\s*#*\s*$", line)
        if m and not fenced:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def link_problems(files: list[Path]) -> list[str]:
    bad = []
    for f in files:
        text, fenced = [], False
        for line in f.read_text().splitlines():  # links inside code blocks are code, not links
            if _FENCE.match(line):
                fenced = not fenced
            elif not fenced:
                text.append(re.sub(r"`[^`]*`", "", line))
        for target in _LINK.findall("\n".join(text)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (f.parent / path).resolve() if path else f
            where = f"{f.relative_to(ROOT)}: ({target})"
            if not dest.exists():
                bad.append(f"{where}: no file {dest}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
                bad.append(f"{where}: no heading #{anchor} in {dest.name}")
    return bad


def doc_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_layout_table_lists_every_package_and_folder():
    assert layout_problems(ROOT) == []


def test_layout_check_fails_for_a_package_without_a_row(tmp_path):
    """The check itself can fail: a new package without a row, and a row for a folder that is gone."""
    (tmp_path / "README.md").write_text("# x\n\n## Layout\n\n| path | what |\n|---|---|\n"
                                        "| `posttrain_assets/` | code |\n| `resources/` | models |\n"
                                        "| `partitions/` | registry |\n| `posttrain_assets/gone/` | removed |\n\n## Next\n")
    for pkg in ("posttrain_assets", "posttrain_assets/newstage", "resources", "partitions"):
        (tmp_path / pkg).mkdir(parents=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / ".gitignore").write_text("/storage/\n")
    (tmp_path / "storage").mkdir()
    assert layout_problems(tmp_path) == ["no row in README's layout table for posttrain_assets/newstage/",
                                         "README's layout table names posttrain_assets/gone/, which does not exist"]


def test_relative_links_resolve():
    assert link_problems(doc_files()) == []


def test_anchor_slugs():
    assert slug("Tests on any CPU") == "tests-on-any-cpu"
    assert slug('The UI: "Materialize all", CPU sizes, the run queue') == "the-ui-materialize-all-cpu-sizes-the-run-queue"
    assert slug("Preference pairs (`preference_pairs`)") == "preference-pairs-preference_pairs"


def test_readme_is_the_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines: move detail into docs/"
    # the two commands that do everything on a fresh machine come first (.ci/run runs `make test`)
    assert lines[2:6] == ["```bash",
                          "make demo   # the main job: every asset for every bundled source (CPU), then a per-source summary",
                          "make test   # the tests (what CI runs: .ci/run calls exactly this)",
                          "```"]
