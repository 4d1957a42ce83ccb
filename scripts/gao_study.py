"""Run the over-optimization study (configs/gao-hh.yaml) in the background on a shared machine.

Steps 1-2 (policy and proxy backbones) need no gold and start at once; the script then waits for a gold
reward model (the first of ``--gold`` folders whose ``ensemble.json`` exists, checked in order, e.g. the
section-2 MiniLM RM, then a stand-in), and runs the rest with ``pipeline.task.gold_path`` set to it.
Finished stages are skipped, so the same command continues an interrupted study.

    OMP_NUM_THREADS=1 nohup python scripts/gao_study.py configs/gao-hh.yaml \\
        --gold /work/artifacts/hh-gold-rm --fallback-gold /work/artifacts/gao-standin/run/gold-s0/reward/model \\
        > /work/artifacts/gao-study.log 2>&1 &
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rewardlab.runs import console
from rewardlab.studies.overopt import load_overopt_config, run_overopt, run_policy_stages


def first_gold(golds: list[Path], fallbacks: list[Path]) -> Path | None:
    """The first ``--gold`` whose ``<folder>.READY`` marker exists, else the first ``--fallback-gold`` folder
    that holds a reward model (a finished ``rewardlab reward`` stage is committed whole); ``None`` yet."""
    ready = [p for p in golds if Path(f"{p}.READY").exists() and (p / "ensemble.json").is_file()]
    done = [p for p in fallbacks if (p / "ensemble.json").is_file()]
    return (ready + done + [None])[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path)
    ap.add_argument(
        "--gold", type=Path, action="append", default=[], help="usable once <folder>.READY exists"
    )
    ap.add_argument("--fallback-gold", type=Path, action="append", default=[], help="usable once it exists")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--wait", type=float, default=7200, help="seconds to wait for a gold")
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    cfg = load_overopt_config(args.config, args.overrides)
    console.print(f"[bold]gao-study:[/] steps 1-2 (no gold needed): {run_policy_stages(cfg)}")
    while (gold := first_gold(args.gold, args.fallback_gold)) is None:
        if time.time() - t0 > args.wait:
            raise SystemExit(f"no gold among {args.gold + args.fallback_gold} after {args.wait:.0f}s")
        time.sleep(30)
    console.print(f"[bold]gao-study:[/] gold {gold} ({time.time() - t0:.0f}s in)")
    cfg = load_overopt_config(args.config, [*args.overrides, f"pipeline.task.gold_path={gold}"])
    console.print(
        f"[bold]gao-study:[/] {run_overopt(cfg, report=not args.no_report)} in {time.time() - t0:.0f}s"
    )


if __name__ == "__main__":
    main()
