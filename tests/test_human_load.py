"""Load and crash tests of the labeling app over real HTTP on loopback (benchmarks/bench_labeling.py).

Fast: 5 annotators and 200 labels against a server in a thread; the crash test kills a forked server process
with SIGKILL mid-load and restarts it. Slow: the full size, 20 annotators and 2,000 labels. Timings are
reported by the benchmark script, never asserted here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_labeling as bench


def test_concurrent_annotators_every_acknowledged_label_exported_once(tmp_path):
    db = tmp_path / "load.sqlite"
    tokens = bench.make_db(db, n_labels=200, n_annotators=5)
    results = bench.Results()
    with bench.ThreadServer(db, bench.QUEUE) as server:
        for t in bench.run_load(server.port, tokens, results, timeout=120):
            t.join()
    out = bench.check(db, results, tokens)
    assert out == {"acknowledged": 200, "exported": 200, "missing": 0, "duplicated": 0, "integrity": "ok"}
    assert len({i for i, _, _ in results.acked}) == 200  # each item labeled once, by one annotator
    assert results.errors == 0


def test_sigkill_during_load_loses_no_acknowledged_label(tmp_path):
    out = bench.bench(
        tmp_path, n_annotators=5, n_labels=200, crash=True, crash_at=0.3, server=bench.ForkServer
    )
    assert out["restarts"] == 1 and 0 < out["acknowledged_at_kill"] < 200
    assert out["missing"] == 0 and out["duplicated"] == 0 and out["integrity"] == "ok"
    # every item got answered in the end; a label committed while its answer was cut off counts once
    assert out["exported"] == 200 and out["acknowledged"] <= 200


@pytest.mark.slow
@pytest.mark.parametrize("crash", [False, True])
def test_full_size_load_and_crash(tmp_path, crash):
    out = bench.bench(
        tmp_path, n_annotators=20, n_labels=2000, crash=crash
    )  # `rewardlab label serve` processes
    assert out["missing"] == 0 and out["duplicated"] == 0 and out["integrity"] == "ok"
    assert out["exported"] == 2000
    if not crash:
        assert out["acknowledged"] == 2000
