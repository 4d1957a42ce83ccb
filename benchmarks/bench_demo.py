"""Time `make demo`'s pipeline (configs/demo.yaml: time-pressed raters + unbiased control), stage by stage.

    python benchmarks/bench_demo.py [CONFIG] [--repeats 3] [--run-dir runs/bench] [--set key=value ...]

Runs `rewardlab run CONFIG` (each repeat in a fresh run folder) and prints one row per stage with its
wall time in every repeat, plus the wall-clock total; the median total is the figure to quote. The arms
(time-pressed raters and the unbiased control) train side by side in worker processes (`arm_processes`),
so the sum of the stage times exceeds the total; `--set arm_processes=1` times them one after another.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from rewardlab.config import load_config
from rewardlab.pipelines.run import run_pipeline


def one_run(config: str | None, run_dir: Path, overrides: list[str]) -> dict[str, float]:
    """``rewardlab run CONFIG`` in a fresh folder (quiet); each stage's seconds and the wall-clock total."""
    cfg = load_config(config, [*overrides, f"run_dir={run_dir}"])
    t = time.perf_counter()
    run_pipeline(cfg, quiet=True)
    wall = time.perf_counter() - t
    times = json.loads((run_dir / "timings.json").read_text(encoding="utf-8"))[-1]["seconds"]
    times.pop("total", None)
    # arms run side by side in worker processes, so the stages' sum can exceed the wall time
    return {**times, "sum of stages": sum(times.values()), "TOTAL": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default="configs/demo.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--run-dir", default="runs/bench")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    results = []
    for r in range(args.repeats):
        d = Path(args.run_dir) / f"rep{r}"
        shutil.rmtree(d, ignore_errors=True)
        results.append(one_run(args.config, d, args.overrides))
        print(f"repeat {r}: {results[-1]['TOTAL']:.0f} s", flush=True)
    names = list(results[0])
    print(f"\n| stage | {' | '.join(f'repeat {i} (s)' for i in range(len(results)))} | median (s) |")
    print("|---|" + "---|" * (len(results) + 1))
    for n in names:
        vals = [res[n] for res in results]
        print(f"| {n} | {' | '.join(f'{v:.1f}' for v in vals)} | {statistics.median(vals):.1f} |")
    med = statistics.median(res["TOTAL"] for res in results)
    print(f"\nmedian total: {med / 60:.1f} min over {len(results)} repeat(s)")


if __name__ == "__main__":
    main()
