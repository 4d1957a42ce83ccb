"""The ``rewardlab`` command: one subcommand per stage, plus ``run`` for the whole pipeline.

Every subcommand takes an optional YAML config (default: the packaged ``configs/default.yaml``
equivalent, i.e. the built-in defaults) and ``--set key=value`` overrides with dotted keys.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from rewardlab.methods import METHODS
from rewardlab.utils import RewardlabError

RUN_HELP = (
    "run the whole pipeline (pretrain -> sft -> label -> reward -> the config's methods) for the arm and "
    "its controls, then write the report"
)

EVAL_HELP = (
    "behaviour evaluations of any local causal LM: Anthropic's model-written evals (two-choice log-probs), "
    "TruthfulQA MC1/MC2, GSM8K exact match"
)


REWARD_EVAL_HELP = (
    "held-out accuracy, ECE and reward distributions per subset of a reward model on a preference file or folder "
    "(default: the HH-RLHF test split), with a violin plot"
)


SWEEP_HELP = (
    "the Goodhart sweep on a control gridworld: visible and gold return of policies optimized ever harder on the "
    "visible reward (soft value iteration's beta, planning horizon or Q-learning episodes), turnover marked "
    "(docs/control.md)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewardlab",
        description="Learn rewards from feedback, optimize policies against them, and measure the gap "
        "between the proxy and the hidden gold reward.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in (*METHODS, "run"):
        text = METHODS[name].help if name in METHODS else RUN_HELP
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("config", nargs="?", type=Path, help="YAML config (default: built-in defaults)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field by dotted key, e.g. --set pretrain.steps=200 (repeatable)")  # fmt: skip
        p.add_argument("--run-dir", type=str, default=None, help="run folder (overrides run_dir)")
        p.add_argument("--seed", type=int, default=None, help="seed (overrides seed)")
        p.add_argument("--quiet", action="store_true", help="no progress bars or console messages")
        p.add_argument("--resume", action="store_true",
                       help="continue each trainer from its last training-state checkpoint (<stage>.partial/checkpoint)")  # fmt: skip
        p.add_argument("--allow-config-change", action="store_true",
                       help="with --resume: accept changes to fields that alter only what is measured (eval_every, "
                            "eval_prompts, samples_to_save); changes that alter training are always refused")  # fmt: skip
        p.add_argument("--skip-bad-records", action="store_true",
                       help="count, log and skip malformed records of label.file instead of stopping at the first "
                            "(sets label.file.skip_bad_records)")  # fmt: skip
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
    rep = sub.add_parser("reward-eval", help=REWARD_EVAL_HELP, description=REWARD_EVAL_HELP)
    rep.add_argument("model_dir", type=Path, help="a rewardlab reward-model folder (with ensemble.json)")
    rep.add_argument("--data", type=Path, default=None,
                     help="preference file or folder (default: $REWARDLAB_DATA/hh-rlhf or ../shared/data/hh-rlhf)")  # fmt: skip
    rep.add_argument("--split", default="test", choices=["all", "train", "validation", "test"],
                     help="part of the fixed HH-RLHF split (default: test)")  # fmt: skip
    rep.add_argument("--limit", type=int, default=None, help="read at most N pairs")
    rep.add_argument("--out", type=Path, default=None,
                     help="folder for <split>_by_subset.json and <split>_rewards.png (default: the model folder's parent)")  # fmt: skip
    sw = sub.add_parser("sweep", help=SWEEP_HELP, description=SWEEP_HELP)
    _add_sweep_arguments(sw)
    ep = sub.add_parser("eval", help=EVAL_HELP, description=EVAL_HELP)
    ep.add_argument("model_dir", type=Path, help="a local causal-LM folder with its tokenizer")
    ep.add_argument("--sets", default="all",
                    help="comma-separated sets, groups (anthropic, truthfulqa, gsm8k) or globs (default: all)")  # fmt: skip
    ep.add_argument("--limit", type=int, default=None, help="score only the first N items of each set")
    ep.add_argument("--out", type=Path, default=None, help="JSON file for the results (default: none)")
    ep.add_argument("--data-dir", type=Path, default=None,
                    help="folder holding anthropic-evals/, truthfulqa/, gsm8k/ (default: $REWARDLAB_DATA or ../shared/data)")  # fmt: skip
    ep.add_argument("--batch-size", type=int, default=16, help="sequences per forward")
    ep.add_argument("--max-new-tokens", type=int, default=256, help="GSM8K: the most tokens generated")
    from rewardlab.studies.registry import STUDIES, STUDY_HELP

    stp = sub.add_parser("study", help=STUDY_HELP, description=STUDY_HELP)
    stp.add_argument("name", choices=sorted(STUDIES), help="which study")
    stp.add_argument("config", type=Path, help="study YAML (configs/study-<name>.yaml)")
    stp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a top-level study field, e.g. --set 'seeds=[0,1,2]' (repeatable)")  # fmt: skip
    stp.add_argument("--quiet", action="store_true", help="no progress bars or console messages")
    return parser


def _add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    from rewardlab.control.sweep import add_arguments

    add_arguments(p)


def _version() -> str:
    from rewardlab import __version__

    return f"rewardlab {__version__}"


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into the same clean stop as Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted()


def resume_command(argv: Sequence[str]) -> str:
    """The command line that continues an interrupted ``argv`` (``--resume`` added once)."""
    import shlex

    args = [a for a in argv if a != "--resume"]
    if args and args[0] == "run" and "--reuse" not in args:
        args.append("--reuse")
    return shlex.join(["rewardlab", *args, "--resume"])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _label_app_args(argv) or build_parser().parse_args(argv)
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        from rewardlab.runs import abandon_open_runs

        stopped = abandon_open_runs("interrupted", "stopped by SIGTERM" if isinstance(sys.exc_info()[1], Interrupted)
                                    else "stopped by Ctrl-C")  # fmt: skip
        where = f" ({', '.join(str(p) for p in stopped)} kept)" if stopped else ""
        print(f"rewardlab: interrupted{where}; continue with: {resume_command(argv)}", file=sys.stderr)
        return 130
    except RewardlabError as e:
        _abandon("failed", str(e))
        print(f"rewardlab: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        from rewardlab.runs import describe_os_error, open_run_dir

        msg = describe_os_error(e, open_run_dir())
        _abandon("failed", msg)
        print(f"rewardlab: error: {msg}", file=sys.stderr)
        return 2
    except MemoryError:
        _abandon("failed", "out of memory")
        print("rewardlab: error: out of memory (a smaller batch_size, max_length or model?)", file=sys.stderr)
        return 2
    except BaseException as e:
        from rewardlab.runs import as_os_error, describe_os_error, open_run_dir

        io = as_os_error(e) if isinstance(e, Exception) else None
        if io is not None:  # an I/O failure a library reported in its own exception type
            msg = describe_os_error(io, open_run_dir())
            _abandon("failed", msg)
            print(f"rewardlab: error: {msg}", file=sys.stderr)
            return 2
        _abandon("failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def _abandon(state: str, reason: str) -> None:
    from rewardlab.runs import abandon_open_runs

    abandon_open_runs(state, reason.splitlines()[0] if reason else state)


def _label_app_args(argv: list[str]) -> argparse.Namespace | None:
    """``rewardlab label serve|enqueue|add-annotator|export ...`` (the labeling app), parsed; ``None`` for
    anything else, so ``rewardlab label [CONFIG]`` stays the label stage."""
    from rewardlab.feedback.human import commands

    if len(argv) < 2 or argv[0] != "label" or argv[1] not in commands.COMMANDS:
        return None
    return commands.build_parser().parse_args(argv[1:])


def _dispatch(args: argparse.Namespace) -> int:
    if getattr(args, "label_command", None) == "enqueue" and args.source.is_dir():
        from rewardlab.pipelines.enqueue import enqueue_command

        return enqueue_command(args)
    if getattr(args, "label_command", None):
        from rewardlab.feedback.human.commands import run_command

        return run_command(args)
    if args.command == "reward-eval":
        from rewardlab.rewards.report import reward_eval_command

        return reward_eval_command(args)
    if args.command == "sweep":
        from rewardlab.control.sweep import sweep_command

        return sweep_command(args)
    if args.command == "eval":
        from rewardlab.evals.run import eval_command

        return eval_command(args)
    if args.command == "study":
        from rewardlab.studies.registry import study_command

        return study_command(args)
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
    if args.command == "run" and args.config is not None:
        from rewardlab.pipelines.control import is_control_config, load_control_config, run_control

        if is_control_config(args.config):  # a control study (configs/control-*.yaml)
            seeds = [f"seeds=[{args.seeds}]"] if args.seeds else []
            print(run_control(load_control_config(args.config, overrides + seeds), quiet=args.quiet))
            return 0
    if args.resume:
        overrides.append("resume=true")
    if args.skip_bad_records:
        overrides.append("label.file.skip_bad_records=true")
    if args.allow_config_change:
        if not args.resume:
            raise RewardlabError("--allow-config-change only applies with --resume")
        overrides.append("allow_config_change=true")
    cfg = load_config(args.config, overrides)
    if args.command == "run":
        from rewardlab.pipelines.run import run_pipeline

        stages = None
        if args.stages:
            stages = [s.strip() for s in args.stages.split(",") if s.strip()]
            unknown = [s for s in stages if s not in (*METHODS, "report")]
            if unknown:
                raise RewardlabError(
                    f"--stages: unknown stage(s) {unknown}; choose from {[*METHODS, 'report']}"
                )
        seeds = _parse_seeds(args.seeds) if args.seeds else None
        run_pipeline(cfg, seeds=seeds, reuse=args.reuse, stages=stages, quiet=args.quiet)
    else:
        from rewardlab.pipelines.run import runner

        runner(args.command)(cfg, quiet=args.quiet)
    return 0


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RewardlabError(
            f"--seeds {text!r}: expected comma-separated whole numbers, e.g. 0,1,2"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise RewardlabError(f"--seeds {text!r}: expected distinct seeds, e.g. 0,1,2")
    return seeds


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
