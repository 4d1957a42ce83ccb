"""The one registry of stages and methods: every ``rewardlab`` subcommand is declared here, once.

Each entry says which recipe runs it (a ``module:function`` path, imported only when it runs), the
config section it reads, its ``--help`` line, its label and colour in the report, and how
``rewardlab run --reuse`` knows it is done (the files it leaves when it finishes). The CLI,
``rewardlab run``, ``--reuse`` and the report read this table; nothing else lists methods.

This module is plain data: it imports no recipe, so the report and the CLI can read it cheaply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Literal

Scope = Literal["shared", "arm"]
Kind = Literal["stage", "rl", "bon", "direct", "offline"]


@dataclass(frozen=True)
class Method:
    """A stage or optimizer of the pipeline."""

    name: str
    recipe: str
    section: str
    help: str
    kind: Kind
    scope: Scope = "arm"
    label: str = ""
    color: str = "#7f7f7f"
    #: Not a trainer: under several processes only the main process runs it.
    main_process_only: bool = False
    #: For ppo/rloo/grpo: the value of ``ppo.advantage`` it runs with.
    advantage: str | None = None
    #: Applied by ``rewardlab run`` to each arm when listed in ``methods``.
    optimizer: bool = True

    def load(self) -> Callable[..., Any]:
        """The recipe function (imported now)."""
        module, fn = self.recipe.split(":")
        return getattr(import_module(module), fn)  # type: ignore[no-any-return]

    def folders(self, cfg: Any) -> list[str]:
        """The stage folders it writes in an arm (or the run folder, for shared stages)."""
        if self.name == "dpo":
            sweep = cfg.dpo.beta_sweep
            return [f"{cfg.dpo.name}-b{b:g}" for b in sweep] if sweep else [cfg.dpo.name]
        if self.name == "dpo-iter":
            return [cfg.iterative_dpo.name]
        if self.name == "modpo":
            return [cfg.modpo.name]
        return [self.name]

    def done_marker(self) -> tuple[str, ...]:
        """Files of which any one, present in every folder, means the method finished there."""
        if self.name == "modpo":
            return ("pareto.json",)  # written after every weighting's run
        if self.name == "label":
            return ("summary.json",)
        return ("model", "summary.json")


_RL = "rewardlab.pipelines.ppo:run_ppo"
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("pretrain", "rewardlab.pipelines.pretrain:run_pretrain", "pretrain",
               "pretrain the base model from scratch on the task's corpus", "stage", "shared", optimizer=False),
        Method("sft", "rewardlab.pipelines.sft:run_sft", "sft",
               "supervised fine-tuning on demonstrations (completion-only loss)", "stage", "shared", optimizer=False),
        Method("judge", "rewardlab.pipelines.judge:run_judge", "label",
               "train the arm's AI judge (label.source: judge): the SFT model fine-tuned on label.judge.train.labels "
               "comparisons in the constitution's judge format; the label stage runs it on first use (docs/rlaif.md)",
               "stage", main_process_only=True, optimizer=False),
        Method("label", "rewardlab.pipelines.label:run_label", "label",
               "the arm's preference labels: pairs sampled from policies and judged by its rater, or read from a "
               "file, or given by people in the labeling app (label.source); `rewardlab label serve | enqueue | "
               "add-annotator | export` run the app (docs/human-labeling.md)", "stage", main_process_only=True,
               optimizer=False),
        Method("reward", "rewardlab.pipelines.reward:run_reward", "reward",
               "train the proxy reward model (Bradley-Terry / Plackett-Luce / ensemble) and evaluate it",
               "stage", optimizer=False),
        Method("ppo", _RL, "ppo", "PPO against the proxy with a KL penalty, audited against the hidden gold",
               "rl", label="PPO", color="#1f77b4", advantage="gae"),
        Method("rloo", _RL, "ppo", "RLOO (leave-one-out baseline) against the proxy, same trainer as ppo",
               "rl", label="RLOO", color="#2ca02c", advantage="rloo"),
        Method("grpo", _RL, "ppo", "GRPO (group-normalized advantages) against the proxy, same trainer as ppo",
               "rl", label="GRPO", color="#9467bd", advantage="grpo"),
        Method("bon", "rewardlab.pipelines.bon:run_bon", "bon",
               "best-of-n against the proxy for n = 1, 2, 4, ... max_n", "bon", label="best-of-n",
               color="#ff7f0e", main_process_only=True),
        Method("dpo", "rewardlab.pipelines.dpo:run_dpo_sweep", "dpo",
               "DPO (or IPO, cDPO, rDPO, hinge, SimPO) on the arm's labels; dpo.beta_sweep trains one run per "
               "beta; audited against the proxy and the hidden gold", "direct", label="DPO", color="#8c564b"),
        Method("dpo-iter", "rewardlab.pipelines.dpo:run_iterative_dpo", "iterative_dpo",
               "iterated (online) DPO: rounds of sampling pairs from the policy, rater labels, DPO", "direct",
               label="iterated DPO", color="#e377c2"),
        Method("modpo", "rewardlab.pipelines.dpo:run_modpo", "modpo",
               "MODPO (rater preference + a second reward, e.g. brevity) for several weightings, with the "
               "Pareto front of gold vs length", "direct", label="MODPO", color="#17becf"),
        Method("dph", "rewardlab.pipelines.dph:run_dph", "dph",
               "Direct Preference Heads: a reward head on the frozen SFT policy's final hidden state, trained on the "
               "arm's labels (cDPO-style), reranks best-of-n's samples (n = 1, 2, 4 .. bon.max_n); the LM is unchanged "
               "(docs/dph-ift.md)", "bon", label="DPH rerank", color="#1b9e77", main_process_only=True),
        Method("ift", "rewardlab.pipelines.ift:run_ift", "ift",
               "Intuitive Fine-Tuning: SFT and preference optimization in one token-level process, from the base "
               "model on positive data (demos and the labels' chosen side); audited like DPO (docs/dph-ift.md)",
               "direct", label="IFT", color="#7b4173"),
        Method("filtered-mle", "rewardlab.pipelines.offline:run_filtered_mle", "offline",
               "offline: SFT on the SFT samples the proxy ranks in its top fraction (filtered MLE)", "offline",
               label="filtered MLE", color="#bcbd22"),
        Method("rwr", "rewardlab.pipelines.offline:run_rwr", "offline",
               "offline: reward-weighted regression, SFT on samples weighted by exp(proxy / temperature)",
               "offline", label="RWR", color="#7f7f7f"),
        Method("reward-conditioned", "rewardlab.pipelines.offline:run_reward_conditioned", "offline",
               "offline: SFT with a reward-quantile token in the prompt; generate with the top token", "offline",
               label="reward-conditioned", color="#d62728"),
        Method("alol", "rewardlab.pipelines.offline:run_alol", "offline",
               "offline: A-LoL, advantage-weighted offline policy gradient with clipped importance weights",
               "offline", label="A-LoL", color="#393b79"),
        Method("phf", "rewardlab.pipelines.offline:run_phf", "offline",
               "pretraining with human feedback: conditional training on corpus documents tagged by the proxy",
               "offline", label="PHF", color="#637939", optimizer=False),
        Method("slcai", "rewardlab.pipelines.slcai:run_slcai", "slcai",
               "SL-CAI: responses -> critique -> revision rounds under the constitution, then SFT on the revisions; "
               "each round audited against gold (docs/rlaif.md)", "stage", label="SL-CAI", color="#aec7e8",
               main_process_only=True),
    )
}  # fmt: skip

#: Everything ``rewardlab run`` can apply to an arm (``methods: [...]``).
OPTIMIZERS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.optimizer)
#: The stages of one arm, in pipeline order (label, reward, then the optimizers).
ARM_STAGES: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.scope == "arm")
#: The report's method order (RL methods first, then the others; best-of-n last).
REPORT_ORDER: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.kind == "rl") + tuple(
    n for n, m in METHODS.items() if m.kind in ("direct", "offline")
)


def method(name: str) -> Method:
    """The registry entry ``name`` (a ``KeyError`` names the known ones)."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


def label_of(name: str) -> str:
    """Report label of a method folder (``dpo-b0.1`` -> ``DPO β=0.1``; unknown folders keep their name)."""
    import re

    m = re.fullmatch(r"(.+)-b([0-9.eE+-]+)", name)
    if m and m.group(1) in METHODS and METHODS[m.group(1)].label:
        return f"{METHODS[m.group(1)].label} β={m.group(2)}"
    entry = METHODS.get(name)
    return entry.label if entry is not None and entry.label else name
