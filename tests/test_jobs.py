"""Jobs follow packages: each job runs whole asset groups (stage packages) plus the few assets
`PHASES` places because their package spans run phases; every asset runs in exactly one job, in the
job of its own package unless placed; a per-source job holds only per-source assets, a global job
only global ones."""

from posttrain_assets.definitions import JOB_GROUPS, PHASES, PIPELINE, defs

GRAPH = defs.resolve_asset_graph()


def _resolved(job) -> set[str]:
    return {k.to_user_string() for k in job.selection.resolve(GRAPH)}


def _group_of() -> dict[str, str]:
    return {k.to_user_string(): GRAPH.get(k).group_name for k in GRAPH.get_all_asset_keys()}


def test_each_job_is_whole_groups_plus_its_placements():
    group_of = _group_of()
    assert [j.name for j in PIPELINE] == list(JOB_GROUPS)
    for job in PIPELINE:
        whole = {a for a, g in group_of.items() if g in JOB_GROUPS[job.name]}
        expected = {a for a in whole if PHASES.get(a, job.name) == job.name} | \
            {a for a, j in PHASES.items() if j == job.name}
        assert _resolved(job) == expected, job.name


def test_every_asset_runs_in_one_job_its_packages_unless_placed():
    group_of = _group_of()
    runs_in: dict[str, list[str]] = {}
    for job in PIPELINE:
        for a in _resolved(job):
            runs_in.setdefault(a, []).append(job.name)
    assert {a: js for a, js in runs_in.items() if len(js) != 1} == {}
    assert set(runs_in) == set(group_of)
    home = {g: j for j, gs in JOB_GROUPS.items() for g in gs}
    assert len(home) == sum(len(gs) for gs in JOB_GROUPS.values())  # a group has one job
    strays = {a: js[0] for a, js in runs_in.items() if a not in PHASES and home.get(group_of[a]) != js[0]}
    assert strays == {}
    # the two the review found: each now runs in its own package's job
    assert runs_in["preference_pairs"] == [home["synthesis"]] and "preference_pairs" not in PHASES
    (data_job,) = runs_in["attribute_training_data"]
    assert {group_of[a] for a, js in runs_in.items() if js == [data_job]} == {"steerlm"}


def test_placements_are_only_phase_splits():
    """A placed asset is one whose package spans phases: a package with a global (fan-in) asset, or
    a filter package (selection, hygiene: each filter runs right after the stage whose table it reads)."""
    group_of = _group_of()
    spans = {group_of[k.to_user_string()] for k in GRAPH.get_all_asset_keys() if GRAPH.get(k).partitions_def is None}
    assert {a: group_of[a] for a in PHASES if group_of[a] not in spans | {"selection", "hygiene"}} == {}
    assert set(PHASES.values()) <= set(JOB_GROUPS)


def test_per_source_jobs_hold_per_source_assets_and_global_jobs_global_ones():
    for job in PIPELINE:
        per_source = defs.resolve_job_def(job.name).partitions_def is not None
        parts = {GRAPH.get(k).partitions_def is not None for k in job.selection.resolve(GRAPH)}
        assert parts == {per_source}, job.name
