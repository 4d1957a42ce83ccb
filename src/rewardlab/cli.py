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

STAGES = ("pretrain", "sft", "label", "reward")
STAGE_HELP = {
    "pretrain": "pretrain the base model from scratch on the task's mixed-quality corpus",
    "sft": "supervised fine-tuning on expert demonstrations (completion-only loss)",
    "label": "sample completion pairs from policies and label them with simulated raters",
    "reward": "train the proxy reward model (Bradley-Terry / Plackett-Luce / ensemble) and evaluate it",
    "run": "run the whole pipeline: pretrain -> sft -> label -> reward",
}


def _stage_fn(name: str) -> Callable:
    if name == "pretrain":
        from rewardlab.pipelines.pretrain import run_pretrain

        return run_pretrain
    if name == "sft":
        from rewardlab.pipelines.sft import run_sft

        return run_sft
    if name == "label":
        from rewardlab.pipelines.label import run_label

        return run_label
    if name == "reward":
        from rewardlab.pipelines.reward import run_reward

        return run_reward
    raise KeyError(name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewardlab",
        description="Learn rewards from feedback, optimize policies against them, and measure the gap "
        "between the proxy and the hidden gold reward.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in (*STAGES, "run"):
        p = sub.add_parser(name, help=STAGE_HELP[name], description=STAGE_HELP[name])
        p.add_argument("config", nargs="?", type=Path, help="YAML config (default: built-in defaults)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field by dotted key, e.g. --set pretrain.steps=200 (repeatable)")  # fmt: skip
        p.add_argument("--run-dir", type=str, default=None, help="run folder (overrides run_dir)")
        p.add_argument("--seed", type=int, default=None, help="seed (overrides seed)")
        p.add_argument("--quiet", action="store_true", help="no progress bars or console messages")
        if name == "run":
            p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    return parser


def _version() -> str:
    from rewardlab import __version__

    return f"rewardlab {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from rewardlab.config import load_config

        overrides = list(args.overrides)
        if args.run_dir is not None:
            overrides.append(f"run_dir={args.run_dir}")
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        cfg = load_config(args.config, overrides)
        if args.command == "run":
            stages = [s.strip() for s in args.stages.split(",") if s.strip()]
            unknown = [s for s in stages if s not in STAGES]
            if unknown:
                raise RewardlabError(f"--stages: unknown stage(s) {unknown}; choose from {list(STAGES)}")
            for s in stages:
                _stage_fn(s)(cfg, quiet=args.quiet)
        else:
            _stage_fn(args.command)(cfg, quiet=args.quiet)
    except RewardlabError as e:
        print(f"rewardlab: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
