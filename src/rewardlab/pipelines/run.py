"""Recipe: the whole pipeline, for the configured raters and their controls, over one or more seeds.

pretrain -> SFT                      (shared by every arm)
for each seed, for each rater preset (the configured one, then the controls):
    label -> reward model -> each of ``methods``: PPO, RLOO, GRPO, best-of-n, DPO (beta sweep),
                             iterated DPO, MODPO, filtered MLE, RWR, reward-conditioned, A-LoL
report                                (one HTML page for all arms and methods)

Every method of an arm starts from the same SFT model and reads the same rater labels and reward
model, so ``configs/compare.yaml`` puts them all on one gold-vs-sqrt(KL) figure and one table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rewardlab.config import PipelineConfig
from rewardlab.runs import console

ARM_STAGES = ("label", "reward", "ppo", "rloo", "grpo", "bon", "dpo", "dpo-iter", "modpo", "filtered-mle",
              "rwr", "reward-conditioned", "alol")  # fmt: skip


def method_folders(cfg: PipelineConfig, method: str) -> list[str]:
    """The stage folders a method writes in an arm (a DPO beta sweep writes one per beta)."""
    if method == "dpo" and cfg.dpo.beta_sweep:
        return [f"{cfg.dpo.name}-b{b:g}" for b in cfg.dpo.beta_sweep]
    if method == "dpo":
        return [cfg.dpo.name]
    return [method]


def _done(cfg: PipelineConfig, stage: str) -> bool:
    """A stage is done when its folder holds its final artifact (``model``, or ``summary.json``)."""
    return all((cfg.stage_dir(f) / "model").exists() or (cfg.stage_dir(f) / "summary.json").exists()
               for f in method_folders(cfg, stage))  # fmt: skip


def run_method(arm: PipelineConfig, method: str, quiet: bool) -> None:
    """Apply one optimizer to an arm (its SFT model, rater labels and reward model)."""
    from rewardlab.distributed import main_process_only

    if method == "bon":
        from rewardlab.pipelines.bon import run_bon

        main_process_only(run_bon)(arm, quiet=quiet)
    elif method in ("ppo", "rloo", "grpo"):
        from rewardlab.pipelines.ppo import run_ppo

        c = arm.model_copy(deep=True)
        c.ppo.advantage = {"ppo": "gae", "rloo": "rloo", "grpo": "grpo"}[method]  # type: ignore[assignment]
        if method != "ppo" and c.ppo.samples_per_prompt < 2:
            c.ppo.samples_per_prompt = 2
        run_ppo(c, quiet=quiet, stage=method)
    elif method in ("dpo", "dpo-iter", "modpo"):
        from rewardlab.pipelines.dpo import run_dpo_sweep, run_iterative_dpo, run_modpo

        {"dpo": run_dpo_sweep, "dpo-iter": run_iterative_dpo, "modpo": run_modpo}[method](arm, quiet=quiet)
    else:
        from rewardlab.pipelines.offline import OFFLINE_RECIPES

        OFFLINE_RECIPES[method](arm, quiet=quiet)


def run_pipeline(cfg: PipelineConfig, *, seeds: Sequence[int] | None = None, reuse: bool = False,
                 stages: Sequence[str] | None = None, quiet: bool = False) -> Path:  # fmt: skip
    """Run every stage; with ``reuse``, stages whose output already exists are skipped."""
    from rewardlab.distributed import main_process_only
    from rewardlab.pipelines.label import run_label as _run_label
    from rewardlab.pipelines.pretrain import run_pretrain
    from rewardlab.pipelines.reward import run_reward
    from rewardlab.pipelines.sft import run_sft

    # not trainers: with several processes (torchrun) the main one runs them and the others wait
    run_label = main_process_only(_run_label)

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
                if not (reuse and _done(arm, m)):
                    run_method(arm, m, quiet)
    if "report" in wanted:
        from rewardlab.report.build import build_report

        path = main_process_only(build_report)(Path(cfg.run_dir)) or Path(cfg.run_dir) / "report.html"
        console.print(f"[bold green]report:[/] {path}")
        return path
    return Path(cfg.run_dir)
