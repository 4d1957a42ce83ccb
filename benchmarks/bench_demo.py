"""Time `make demo`'s pipeline (the default config: time-pressed raters + unbiased control), stage by stage.

    python benchmarks/bench_demo.py [CONFIG] [--repeats 3] [--run-dir runs/bench] [--set key=value ...]

Runs the same stages as `rewardlab run CONFIG` (each repeat in a fresh run folder) and prints one row
per stage with its wall time in every repeat, plus the total; the median total is the figure to quote.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from rewardlab.config import load_config
from rewardlab.feedback.raters import RaterConfig
from rewardlab.pipelines.bon import run_bon
from rewardlab.pipelines.label import run_label
from rewardlab.pipelines.ppo import run_ppo
from rewardlab.pipelines.pretrain import run_pretrain
from rewardlab.pipelines.reward import run_reward
from rewardlab.pipelines.sft import run_sft
from rewardlab.report.build import build_report


def one_run(config: str | None, run_dir: Path, overrides: list[str]) -> dict[str, float]:
    cfg = load_config(config, [*overrides, f"run_dir={run_dir}"])
    times: dict[str, float] = {}

    def timed(name: str, fn, c) -> None:  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        fn(c, quiet=True)
        times[name] = time.perf_counter() - t

    timed("pretrain", run_pretrain, cfg)
    timed("sft", run_sft, cfg)
    for preset in dict.fromkeys([cfg.label.rater.preset, *cfg.controls]):
        arm = cfg.model_copy(deep=True)
        arm.label.rater = RaterConfig.from_preset(preset)
        timed(f"{preset}/label", run_label, arm)
        timed(f"{preset}/reward", run_reward, arm)
        if "ppo" in cfg.methods:
            timed(f"{preset}/ppo", run_ppo, arm)
        if "bon" in cfg.methods:
            timed(f"{preset}/bon", run_bon, arm)
    t = time.perf_counter()
    build_report(run_dir)
    times["report"] = time.perf_counter() - t
    times["TOTAL"] = sum(times.values())
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default="configs/default.yaml")
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
