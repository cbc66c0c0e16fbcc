"""Loaded by every Python process whose PYTHONPATH holds this folder (tests/test_ui.py puts it there for
`dagster dev` and what it starts); acts only in the daemon (`python -m dagster._daemon ...`) and only
when POSTTRAIN_TEST_BACKFILL_INTERVAL_S is set: the backfill daemon's pause between iterations, a
constant in Dagster (dagster/_daemon/controller.py DEFAULT_DAEMON_INTERVAL_SECONDS, 30 s, read by
dagster/_daemon/backfill.py when its loop starts), becomes that many seconds.

An asset backfill submits the runs of a step of the graph only at its next iteration after the
previous step's runs end, so at 30 s most of a small backfill is the daemon waiting. The interval
decides when runs start, never what they do or what the backfill ends with. Fails the daemon's start
(the test then fails with its log) if Dagster no longer has the constant, rather than silently waiting."""

import os
import sys

_interval = os.environ.get("POSTTRAIN_TEST_BACKFILL_INTERVAL_S")
if _interval and sys.orig_argv[1:3] == ["-m", "dagster._daemon"]:
    import dagster._daemon.controller as _controller

    if not hasattr(_controller, "DEFAULT_DAEMON_INTERVAL_SECONDS"):
        raise RuntimeError("tests/daemon_site: dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS is gone")
    _controller.DEFAULT_DAEMON_INTERVAL_SECONDS = float(_interval)
