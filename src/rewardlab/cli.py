"""The ``rewardlab`` command: one subcommand per stage, plus ``run`` for the whole pipeline.

Every subcommand takes an optional YAML config (default: the packaged ``configs/default.yaml``
equivalent, i.e. the built-in defaults) and ``--set key=value`` overrides with dotted keys.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rewardlab.utils import RewardlabError

STAGES = ("pretrain", "sft", "label", "reward", "ppo", "rloo", "grpo", "bon")
#: Direct-alignment stages (run on their own; not part of `rewardlab run --stages` yet).
DIRECT_STAGES = ("dpo", "dpo-iter", "modpo")
#: Offline RLHF from one proxy-scored dataset, and pretraining with human feedback (docs/offline.md).
OFFLINE_STAGES = ("filtered-mle", "rwr", "reward-conditioned", "alol", "phf")
STAGE_HELP = {
    "pretrain": "pretrain the base model from scratch on the task's mixed-quality corpus",
    "sft": "supervised fine-tuning on expert demonstrations (completion-only loss)",
    "label": "sample completion pairs from policies and label them with simulated raters",
    "reward": "train the proxy reward model (Bradley-Terry / Plackett-Luce / ensemble) and evaluate it",
    "ppo": "PPO against the proxy with a KL penalty, audited against the hidden gold",
    "rloo": "RLOO (leave-one-out baseline) against the proxy, same trainer as ppo",
    "grpo": "GRPO (group-normalized advantages) against the proxy, same trainer as ppo",
    "bon": "best-of-n against the proxy for n = 1, 2, 4, ... max_n",
    "dpo": "DPO (or IPO, cDPO, rDPO, hinge, SimPO) on the arm's rater labels; dpo.beta_sweep trains one "
    "run per beta; audited against the proxy and the hidden gold",
    "dpo-iter": "iterated (online) DPO: rounds of sampling pairs from the policy, rater labels, DPO",
    "modpo": "MODPO (rater preference + a second reward, e.g. brevity) for several weightings, with the "
    "Pareto front of gold vs length",
    "filtered-mle": "offline: SFT on the SFT samples the proxy ranks in its top fraction (filtered MLE)",
    "rwr": "offline: reward-weighted regression, SFT on samples weighted by exp(proxy / temperature)",
    "reward-conditioned": "offline: SFT with a reward-quantile token in the prompt; generate with the top token",
    "alol": "offline: A-LoL, advantage-weighted offline policy gradient with clipped importance weights",
    "phf": "pretraining with human feedback: conditional training on corpus documents tagged by the proxy",
    "run": "run the whole pipeline (pretrain -> sft -> label -> reward -> the config's methods) for the raters and "
    "their unbiased control, then write the report",
}


def _stage_fn(name: str) -> Callable:
    if name == "pretrain":
        from rewardlab.pipelines.pretrain import run_pretrain

        return run_pretrain
    if name == "sft":
        from rewardlab.pipelines.sft import run_sft

        return run_sft
    if name == "label":
        from rewardlab.distributed import main_process_only
        from rewardlab.pipelines.label import run_label

        return main_process_only(run_label)  # not a trainer: with several processes the main one labels
    if name == "reward":
        from rewardlab.pipelines.reward import run_reward

        return run_reward
    if name in ("ppo", "rloo", "grpo"):
        from rewardlab.pipelines.ppo import run_ppo

        def run_rl(cfg, quiet: bool = False):  # type: ignore[no-untyped-def]
            if name != "ppo":
                cfg.ppo.advantage = name
            return run_ppo(cfg, quiet=quiet, stage=name)

        return run_rl
    if name == "bon":
        from rewardlab.distributed import main_process_only
        from rewardlab.pipelines.bon import run_bon

        return main_process_only(run_bon)
    if name == "dpo":
        from rewardlab.pipelines.dpo import run_dpo_sweep

        return run_dpo_sweep
    if name == "dpo-iter":
        from rewardlab.pipelines.dpo import run_iterative_dpo

        return run_iterative_dpo
    if name == "modpo":
        from rewardlab.pipelines.dpo import run_modpo

        return run_modpo
    if name in OFFLINE_STAGES:
        from rewardlab.pipelines.offline import OFFLINE_RECIPES, run_phf

        return run_phf if name == "phf" else OFFLINE_RECIPES[name]
    raise KeyError(name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewardlab",
        description="Learn rewards from feedback, optimize policies against them, and measure the gap "
        "between the proxy and the hidden gold reward.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in (*STAGES, *DIRECT_STAGES, *OFFLINE_STAGES, "run"):
        p = sub.add_parser(name, help=STAGE_HELP[name], description=STAGE_HELP[name])
        p.add_argument("config", nargs="?", type=Path, help="YAML config (default: built-in defaults)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field by dotted key, e.g. --set pretrain.steps=200 (repeatable)")  # fmt: skip
        p.add_argument("--run-dir", type=str, default=None, help="run folder (overrides run_dir)")
        p.add_argument("--seed", type=int, default=None, help="seed (overrides seed)")
        p.add_argument("--quiet", action="store_true", help="no progress bars or console messages")
        p.add_argument("--resume", action="store_true",
                       help="continue each trainer from its last training-state checkpoint (<stage>/checkpoint)")  # fmt: skip
        if name == "run":
            p.add_argument("--stages", default=None, help="comma-separated subset of stages (default: all)")
            p.add_argument(
                "--seeds", default=None, help="comma-separated seeds, one set of arms each (e.g. 0,1,2)"
            )
            p.add_argument("--reuse", action="store_true", help="skip stages whose outputs already exist")
    rp = sub.add_parser("report", help="write report.html and plots for a run folder",
                        description="write report.html and plots for a run folder")  # fmt: skip
    rp.add_argument("run_dir", type=Path)
    cp = sub.add_parser("criteria", help="check the headline demonstration per seed (after `report`)",
                        description="print, per seed, whether the biased arm over-optimizes and the control does not")  # fmt: skip
    cp.add_argument("run_dir", type=Path)
    return parser


def _version() -> str:
    from rewardlab import __version__

    return f"rewardlab {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "criteria":
            from rewardlab.audit.criteria import report_text

            print(report_text(args.run_dir))
            return 0
        if args.command == "report":
            from rewardlab.report.build import build_report

            print(build_report(args.run_dir))
            return 0
        from rewardlab.config import load_config

        overrides = list(args.overrides)
        if args.run_dir is not None:
            overrides.append(f"run_dir={args.run_dir}")
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        if args.resume:
            overrides.append("resume=true")
        cfg = load_config(args.config, overrides)
        if args.command == "run":
            from rewardlab.pipelines.run import run_pipeline

            stages = None
            if args.stages:
                stages = [s.strip() for s in args.stages.split(",") if s.strip()]
                unknown = [s for s in stages if s not in (*STAGES, *DIRECT_STAGES, *OFFLINE_STAGES, "report")]
                if unknown:
                    raise RewardlabError(
                        f"--stages: unknown stage(s) {unknown}; choose from "
                        f"{[*STAGES, *DIRECT_STAGES, *OFFLINE_STAGES, 'report']}"
                    )
            seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
            run_pipeline(cfg, seeds=seeds, reuse=args.reuse, stages=stages, quiet=args.quiet)
        else:
            _stage_fn(args.command)(cfg, quiet=args.quiet)
    except RewardlabError as e:
        print(f"rewardlab: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
