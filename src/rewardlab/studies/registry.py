"""The failure studies ``rewardlab study NAME CONFIG`` runs: name -> (config class, recipe), loaded lazily."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from rewardlab.studies.common import load_study
from rewardlab.utils import RewardlabError

STUDIES: dict[str, tuple[str, str, str]] = {
    "poison": ("rewardlab.studies.poison", "PoisonStudyConfig", "run_poison_study"),
    "irl": ("rewardlab.studies.irl", "IRLStudyConfig", "run_irl_study"),
    "cirl": ("rewardlab.studies.cirl", "CIRLStudyConfig", "run_cirl_study"),
    "overopt": ("rewardlab.studies.overopt", "OveroptConfig", "run_overopt"),
    "mitigations": ("rewardlab.studies.mitigations", "MitigationsStudyConfig", "run_mitigations_study"),
    "teacher-hacking": ("rewardlab.studies.teacher_hacking", "TeacherHackingConfig", "run_teacher_hacking"),
    "false-positives": (
        "rewardlab.studies.false_positives",
        "FalsePositiveStudyConfig",
        "run_false_positive_study",
    ),
}

STUDY_HELP = ("run a failure study (issue 21): poison (preference poisoning + defenses), false-positives "
              "(time-pressed evaluators before/after RLHF), irl (the PPO policy's reward recovered by inverse RL), cirl (the CIRL assistance game vs IRL-then-optimize), teacher-hacking (oracle -> teacher -> student distillation, offline vs online), mitigations (RM ensembles, a KL schedule, early stopping), overopt (Gao et al.'s curves on real text); table + figure in the study's out_dir")  # fmt: skip


def study_command(args: argparse.Namespace) -> int:
    """``rewardlab study NAME CONFIG [--set field=value ...] [--quiet]``: the recipe, then the study's HTML page
    (``report.html`` and ``study.json`` in its ``out_dir``; the run folder's report shows it too)."""
    if args.name not in STUDIES:
        raise RewardlabError(f"study {args.name!r}: unknown; choose one of {', '.join(STUDIES)}")
    module, cls, fn = STUDIES[args.name]
    mod = importlib.import_module(module)
    study = load_study(Path(args.config), getattr(mod, cls), args.overrides)
    result = getattr(mod, fn)(study, quiet=args.quiet)
    out_dir = getattr(study, "out_dir", None)  # overopt's run folder is a run, with its own report
    if out_dir is not None and any(Path(out_dir).glob("*.md")):
        from rewardlab.report.studies import write_study_page

        result = write_study_page(Path(out_dir), args.name)
    print(result)
    return 0
