"""Recipe: the whole pipeline, for the configured raters and their controls, over one or more seeds.

pretrain -> SFT                      (shared by every arm)
for each seed, for each rater preset (the configured one, then the controls):
    label -> reward model -> PPO (and/or RLOO, GRPO) -> best-of-n
report                                (one HTML page for all arms)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rewardlab.config import PipelineConfig
from rewardlab.runs import console

ARM_STAGES = ("label", "reward", "ppo", "rloo", "grpo", "bon")


def _done(cfg: PipelineConfig, stage: str) -> bool:
    d = cfg.stage_dir(stage)
    return (d / "model").exists() or (stage in ("label", "bon") and (d / "summary.json").exists())


def run_pipeline(cfg: PipelineConfig, *, seeds: Sequence[int] | None = None, reuse: bool = False,
                 stages: Sequence[str] | None = None, quiet: bool = False) -> Path:  # fmt: skip
    """Run every stage; with ``reuse``, stages whose output already exists are skipped."""
    from rewardlab.distributed import main_process_only
    from rewardlab.pipelines.bon import run_bon as _run_bon
    from rewardlab.pipelines.label import run_label as _run_label
    from rewardlab.pipelines.ppo import run_ppo
    from rewardlab.pipelines.pretrain import run_pretrain
    from rewardlab.pipelines.reward import run_reward
    from rewardlab.pipelines.sft import run_sft

    # not trainers: with several processes (torchrun) the main one runs them and the others wait
    run_bon, run_label = main_process_only(_run_bon), main_process_only(_run_label)

    wanted = set(stages or ("pretrain", "sft", *ARM_STAGES, "report"))
    if not quiet:
        console.print(
            f"[bold]rewardlab:[/] a tiny LM learns arithmetic, raters who rarely check reward agreement, and "
            f"{'/'.join(cfg.methods)} optimize the learned proxy: watch proxy rise while the hidden gold falls "
            f"(raters: {cfg.label.rater.preset}; control: {', '.join(cfg.controls) or 'none'})."
        )
    methods = [m for m in cfg.methods if m in wanted]
    for name, fn in (("pretrain", run_pretrain), ("sft", run_sft)):
        if name in wanted and not (reuse and _done(cfg, name)):
            fn(cfg, quiet=quiet)
    presets = list(dict.fromkeys([cfg.label.rater.preset, *cfg.controls]))
    for seed in seeds if seeds is not None else [cfg.seed]:
        for preset in presets:
            arm = cfg.model_copy(deep=True)
            arm.seed = seed
            arm.label.rater = (
                type(cfg.label.rater).from_preset(preset)
                if preset != cfg.label.rater.preset
                else cfg.label.rater
            )
            if not quiet:
                console.rule(f"[bold]arm {arm.arm}")
            for name, fn in (("label", run_label), ("reward", run_reward)):
                if name in wanted and not (reuse and _done(arm, name)):
                    fn(arm, quiet=quiet)
            for m in methods:
                if reuse and _done(arm, m):
                    continue
                if m == "bon":
                    run_bon(arm, quiet=quiet)
                else:
                    arm.ppo.advantage = {"ppo": "gae", "rloo": "rloo", "grpo": "grpo"}[m]  # type: ignore[assignment]
                    if m != "ppo" and arm.ppo.samples_per_prompt < 2:
                        arm.ppo.samples_per_prompt = 2
                    run_ppo(arm, quiet=quiet, stage=m)
    if "report" in wanted:
        from rewardlab.report.build import build_report

        path = main_process_only(build_report)(Path(cfg.run_dir)) or Path(cfg.run_dir) / "report.html"
        console.print(f"[bold green]report:[/] {path}")
        return path
    return Path(cfg.run_dir)
