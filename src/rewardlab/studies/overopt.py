"""Recipe: Gao, Schulman & Hilton (2022)'s reward-model over-optimization study, on real text.

"Scaling Laws for Reward Model Overoptimization" (arXiv:2210.10760) replaces humans by a *gold* reward
model, trains *proxy* reward models of several sizes on several numbers of the gold's (noisy) labels of
policy samples, optimizes the policy against each proxy with best-of-n and RL, and follows the gold as the
policy moves away from its start, ``d = sqrt(KL)``. The gold rises, peaks and falls; it follows
(their eqs. 1-2)::

    best-of-n:  R_bon(d) = d (alpha_bon - beta_bon d),      KL_bon = log n - (n - 1) / n
    RL:         R_rl(d)  = d (alpha_rl  - beta_rl log d)

with ``R = gold - gold(start)`` and coefficients that move smoothly with the proxy's size and data.

The study reads one :class:`OveroptConfig` (``configs/gao-hh.yaml``): a pipeline config whose task has a
gold (``synthetic-gold``: HH-RLHF prompts, a frozen MiniLM reward model as gold) and the grid. Every step
is an ordinary stage of the pipeline, run through the registry (:func:`rewardlab.pipelines.run.runner`),
so the run folder is an ordinary run folder and ``rewardlab report`` draws it
(``rewardlab study overopt configs/gao-hh.yaml [--set pipeline.task.gold_path=...]``):

1. the policy: ``pretrain`` then ``sft`` (shared stages of the run folder), on the prompt task without
   its gold (``task.data``): nothing before the labels asks the gold anything;
2. the proxies' backbones: one causal LM per ``proxy_sizes`` entry, pretrained on the same corpus
   (``<run_dir>/study/backbone-<size>``; an entry equal to the policy's architecture reuses it);
3. gold labels: the task's ``gold`` rater (Boltzmann on the gold difference) labels pairs of SFT samples
   on training prompts (``<run_dir>/study/gold-labels-s<seed>/label``);
4. per proxy (size x number of labels), an arm ``rm-<size>-n<labels>``: the first ``labels`` pairs, a
   reward model on the size's backbone, then best-of-n and PPO against it, audited on held-out prompts;
5. the analysis: each curve's law fit (:func:`rewardlab.audit.laws.fit_law`), the rise-then-fall test
   (:func:`rewardlab.audit.laws.rise_then_fall`, in gold standard deviations of the SFT samples), the
   coefficients regressed on log proxy size and log labels; ``overopt.json``, ``overopt.md`` and
   ``plots/overopt.png``;
6. the report (``report.html``).

Finished stages are skipped (``--reuse`` semantics), so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Mapping, Sequence
from itertools import product
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rewardlab.audit.laws import fit_law, rise_then_fall
from rewardlab.config import PipelineConfig, _format_validation_error, apply_overrides
from rewardlab.feedback.records import load_comparisons, save_comparisons
from rewardlab.pipelines.run import _done, runner
from rewardlab.policies.models import ModelConfig
from rewardlab.runs import console
from rewardlab.studies.common import save_figure
from rewardlab.utils import RewardlabError, atomic_write_text, read_jsonl, read_text_file

StudyMethod = Literal["bon", "ppo"]
LAW_OF: dict[str, Literal["bon", "rl"]] = {"bon": "bon", "ppo": "rl"}


class OveroptConfig(BaseModel):
    """The study: a pipeline with a gold, the proxy grid (sizes x label counts), the optimizers, the test."""

    model_config = ConfigDict(extra="forbid")

    pipeline: PipelineConfig = Field(..., description="the base pipeline; its task must have a gold")
    proxy_sizes: dict[str, ModelConfig] = Field(
        ...,
        description="proxy backbones by name: causal LMs pretrained like the policy, then given a reward head",
    )
    label_counts: list[int] = Field(
        ..., description="numbers of gold-labelled pairs each proxy is trained on"
    )
    methods: list[StudyMethod] = Field(
        default_factory=lambda: ["bon", "ppo"], description="optimizers per proxy"
    )
    backbone_steps: int | None = Field(
        None, gt=0, description="pretraining steps of the proxy backbones (default: pipeline.pretrain.steps)"
    )
    drop_sd: float = Field(
        0.1, gt=0, description="gold lost after the peak, in gold SDs, that counts as over-optimization"
    )
    smooth_window: int = Field(3, ge=1, description="moving-average window before the peak is read (odd)")

    @model_validator(mode="before")
    @classmethod
    def _dotted_keys(cls, data: Any) -> Any:
        """``{"pipeline.task.gold_path": x}`` (``rewardlab study overopt ... --set pipeline.task.gold_path=x``)
        is ``{"pipeline": {"task": {"gold_path": x}}}``."""
        if isinstance(data, dict) and any("." in str(k) for k in data):
            plain = {k: v for k, v in data.items() if "." not in str(k)}
            dotted = [f"{k}={json.dumps(v)}" for k, v in data.items() if "." in str(k)]
            return apply_overrides(copy.deepcopy(plain), dotted)
        return data

    @field_validator("proxy_sizes")
    @classmethod
    def _sizes(cls, v: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        if not v:
            raise ValueError("give at least one proxy size")
        bad = [k for k in v if not k.replace("-", "").replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"size names must be letters, digits, - or _; got {bad}")
        return v

    @field_validator("label_counts")
    @classmethod
    def _counts(cls, v: list[int]) -> list[int]:
        if not v or any(n < 2 for n in v):
            raise ValueError(f"give one or more label counts, each >= 2; got {v}")
        return sorted(set(v))

    @field_validator("smooth_window")
    @classmethod
    def _window(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"must be odd, got {v}")
        return v

    @model_validator(mode="after")
    def _gold(self) -> OveroptConfig:
        if not self.pipeline.build_task().info.has_gold:
            raise ValueError("pipeline.task: the study needs a task with a gold (e.g. kind: synthetic-gold)")
        return self


def load_overopt_config(path: str | Path, overrides: Sequence[str] = ()) -> OveroptConfig:
    """The study config of a YAML file, with ``--set`` overrides (``pipeline.bon.max_n=64``, ``label_counts=[50]``)."""
    p = Path(path)
    try:
        data = yaml.safe_load(read_text_file(p, "study config")) or {}
    except yaml.YAMLError as e:
        raise RewardlabError(f"{p}: malformed YAML ({e})") from None
    if not isinstance(data, dict):
        raise RewardlabError(f"{p}: top level must be a mapping")
    data = apply_overrides(data, list(overrides))
    try:
        return OveroptConfig.model_validate(data)
    except ValidationError as e:
        raise RewardlabError(_format_validation_error(e, str(p))) from None


# ------------------------------------------------------------------------------------ the arms
def labels_config(cfg: OveroptConfig) -> PipelineConfig:
    """Step 3's config: the task's ``gold`` rater labels pairs of SFT samples (a label-only arm under study/)."""
    base = cfg.pipeline
    data = base.model_dump(mode="json")
    lc = data["label"]
    lc.update(source="simulated", name="gold-labels", policy_paths=[str(Path(base.run_dir) / "sft" / "model")],
              policy_weights=[1.0], num_prompts=label_prompts(cfg))  # fmt: skip
    data["run_dir"] = str(Path(base.run_dir) / "study")
    return PipelineConfig.model_validate(data)


def label_prompts(cfg: OveroptConfig) -> int:
    """Prompts to label: enough that the largest count survives the eval split and dropped identical pairs."""
    ev = cfg.pipeline.label.eval_fraction
    return math.ceil(max(cfg.label_counts) / (1 - ev) * 1.05) + 2


def backbone_path(cfg: OveroptConfig, size: str) -> Path:
    """The pretrained backbone of proxy size ``size`` (the policy's own when the architecture is the same)."""
    base = cfg.pipeline
    if cfg.proxy_sizes[size] == base.pretrain.model:
        return Path(base.run_dir) / "pretrain" / "model"
    return Path(base.run_dir) / "study" / f"backbone-{size}" / "pretrain" / "model"


def policy_config(cfg: OveroptConfig) -> PipelineConfig:
    """Steps 1-2's config: the pipeline on the gold-less prompt task underneath (``task.data`` of a
    synthetic-gold task), so pretraining and SFT never call the gold (and need none yet)."""
    data = cfg.pipeline.model_dump(mode="json")
    if isinstance(data["task"].get("data"), dict):
        data["task"] = data["task"]["data"]
        data["label"]["rater"] = {"preset": "custom"}  # the gold's rater presets are the gold task's
    return PipelineConfig.model_validate(data)


def backbone_config(cfg: OveroptConfig, size: str) -> PipelineConfig:
    data = policy_config(cfg).model_dump(mode="json")
    data["run_dir"] = str(Path(cfg.pipeline.run_dir) / "study" / f"backbone-{size}")
    data["pretrain"]["model"] = cfg.proxy_sizes[size].model_dump(mode="json")
    if cfg.backbone_steps is not None:
        data["pretrain"]["steps"] = cfg.backbone_steps
    return PipelineConfig.model_validate(data)


def arm_name(size: str, count: int) -> str:
    return f"rm-{size}-n{count}"


def proxy_config(
    cfg: OveroptConfig, size: str, count: int, data_path: Path, eval_path: Path
) -> PipelineConfig:
    """Step 4's arm: the reward model of ``size`` on ``count`` gold labels, then the methods against it."""
    data = cfg.pipeline.model_dump(mode="json")
    data["label"].update(source="simulated", name=arm_name(size, count))
    data["reward"].update(
        init_path=str(backbone_path(cfg, size)), data_path=str(data_path), eval_path=str(eval_path)
    )
    data["methods"] = list(cfg.methods)
    return PipelineConfig.model_validate(data)


def _stage(cfg: PipelineConfig, name: str, quiet: bool) -> float:
    """Run stage ``name`` unless it is done already; its wall seconds (0 when skipped)."""
    if _done(cfg, name):
        return 0.0
    t = time.perf_counter()
    runner(name)(cfg, quiet=quiet)
    return time.perf_counter() - t


def label_subset(pairs: Sequence[Any], count: int, folder: Path) -> Path:
    """The first ``count`` training pairs (every proxy of a count sees the same ones), written once."""
    path = folder / f"train-n{count}.jsonl"
    if not path.exists():
        save_comparisons(path, pairs[:count])
    return path


def gold_sd(pairs: Sequence[Any]) -> float:
    """The gold's standard deviation over the SFT samples the labels compare (both sides of each pair)."""
    vals = np.array(
        [g for c in pairs for g in (c.gold_chosen, c.gold_rejected) if g is not None], dtype=float
    )
    if vals.size < 2:
        raise RewardlabError("overopt: the labels carry no gold scores (is the task's gold set?)")
    return float(vals.std(ddof=1))


# ------------------------------------------------------------------------------------ analysis
def curve(rows: Sequence[Mapping[str, Any]], method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(KL, gold, proxy) of one method's audit rows: best-of-n's analytic ``kl``, RL's ``kl/<estimator>``."""

    def kl_of(r: Mapping[str, Any]) -> float:
        return float(r["kl"]) if method == "bon" else float(r[f"kl/{r.get('kl/estimator', 'k1')}"])

    kl = np.array([max(0.0, kl_of(r)) for r in rows])
    gold = np.array([float(r["gold/mean"]) for r in rows])
    proxy = np.array([float(r.get("proxy/mean", math.nan)) for r in rows])
    return kl, gold, proxy


def analyze_curve(
    rows: Sequence[Mapping[str, Any]], method: str, sd: float, cfg: OveroptConfig
) -> dict[str, Any]:
    """The law fit and the rise-then-fall test of one proxy's curve under one method (law fields ``None``, with
    ``law_error``, when the points cannot determine the law, e.g. fewer than 2 with KL > 0)."""
    kl, gold, proxy = curve(rows, method)
    test = rise_then_fall(kl, gold, sd, cfg.drop_sd, cfg.smooth_window)
    law: dict[str, Any] = {"law": LAW_OF[method], "alpha": None, "beta": None, "r2": None, "gold0": float(gold[0]),
                           "kl_peak_law": None, "peak_in_range_law": False, "law_error": None}  # fmt: skip
    try:
        fit = fit_law(LAW_OF[method], kl, gold)
        law.update(alpha=fit.a, beta=fit.b, r2=fit.r2, gold0=fit.gold0, kl_peak_law=fit.kl_peak,
                   peak_in_range_law=fit.peak_in_range)  # fmt: skip
    except ValueError as e:
        law["law_error"] = str(e)
    return {**law, "kl_max": float(kl.max()), **test.to_dict(), "points": len(rows),
            "curve": {"kl": kl.tolist(), "gold": gold.tolist(), "proxy": proxy.tolist()}}  # fmt: skip


def coefficient_trends(results: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per method and coefficient, least squares ``coef ~ c0 + c_size log10(params) + c_data log10(labels)``.

    With one size (or one count) only the other slope is fitted; with one of each, none (no entry). Gao et al. find both coefficients
    smooth in log proxy size; here the slopes say in which direction they move on this grid.
    """
    out: dict[str, dict[str, float]] = {}
    for method in sorted({r["method"] for r in results}):
        rs = [r for r in results if r["method"] == method and r["alpha"] is not None]
        if not rs:
            continue
        cols = [np.ones(len(rs))]
        names = ["intercept"]
        for key, name in (("params", "per_log10_params"), ("labels", "per_log10_labels")):
            x = np.log10([float(r[key]) for r in rs])
            if np.ptp(x) > 0:
                cols.append(x)
                names.append(name)
        if len(cols) == 1:  # one size and one count: no trend to fit
            continue
        X = np.column_stack(cols)
        for coef in ("alpha", "beta"):
            y = np.array([r[coef] for r in rs])
            if len(rs) < X.shape[1]:
                continue
            sol = np.linalg.lstsq(X, y, rcond=None)[0]
            out[f"{method}/{coef}"] = {n: float(v) for n, v in zip(names, sol, strict=True)}
    return out


def _kl_cell(kl: float) -> str:
    """A KL for the table: two decimals, or ``> 1e4`` where a law with beta near 0 puts its peak astronomically far."""
    return f"{kl:.2f}" if kl < 1e4 else "> 1e4"


def results_table(results: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table: one row per proxy and method."""
    head = ("| proxy | params | labels | method | alpha | beta | R^2 | law's peak KL | gold gain (SD) | "
            "peak KL (measured) | gold lost after peak (SD) | rises then falls |")  # fmt: skip
    lines = [head, "|" + "---|" * 12]
    for r in results:
        if r["alpha"] is None:
            lines.append(f"| {r['size']} | {r['params'] / 1e6:.2f}M | {r['labels']} | {r['method']} | no fit: "
                         f"{r['law_error']} | | | | {r['gain_sd']:+.2f} | {r['peak_kl']:.2f} | {r['lost_sd']:+.2f} | "
                         f"{'yes' if r['rises_then_falls'] else 'no'} |")  # fmt: skip
            continue
        peak = (
            f"{_kl_cell(r['kl_peak_law'])}{'' if r['peak_in_range_law'] else ' (beyond range)'}"
            if r["kl_peak_law"]
            else "none"
        )
        lines.append(
            f"| {r['size']} | {r['params'] / 1e6:.2f}M | {r['labels']} | {r['method']} | {r['alpha']:+.3f} | "
            f"{r['beta']:+.3f} | {r['r2']:.2f} | {peak} | {r['gain_sd']:+.2f} | {r['peak_kl']:.2f} | "
            f"{r['lost_sd']:+.2f} | {'yes' if r['rises_then_falls'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def plot_study(
    results: Sequence[Mapping[str, Any]], sizes: Sequence[str], methods: Sequence[str], path: Path
) -> Path:
    """Gold (points) and its fitted law (line) against sqrt(KL): one panel per method and proxy size, one
    colour per label count; the proxy (normalized, right axis scale differs) dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({r["labels"] for r in results})
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(counts), 1)))
    fig, axes = plt.subplots(
        len(methods), len(sizes), figsize=(4.2 * len(sizes), 3.4 * len(methods)), squeeze=False
    )
    for (i, method), (j, size) in product(enumerate(methods), enumerate(sizes)):
        ax = axes[i][j]
        for c, count in zip(colors, counts, strict=True):
            r = next(
                (r for r in results if r["method"] == method and r["size"] == size and r["labels"] == count),
                None,
            )
            if r is None:
                continue
            d = np.sqrt(np.array(r["curve"]["kl"]))
            ax.plot(d, r["curve"]["gold"], "o", color=c, ms=3.5, label=f"{count} labels")
            grid = np.linspace(0.0, float(d.max()), 60)
            if r["alpha"] is not None:
                law = fit_law(r["law"], r["curve"]["kl"], r["curve"]["gold"])
                ax.plot(grid, law.predict_gold(grid), "-", color=c, lw=1.2)
            if r["peak_index"] is not None and r["rises_then_falls"]:
                ax.plot(d[r["peak_index"]], r["curve"]["gold"][r["peak_index"]], "*", color=c, ms=11)
        ax.set_title(f"{'best-of-n' if method == 'bon' else 'PPO'} vs proxy {size}", fontsize=10)
        ax.set_xlabel("sqrt(KL) from the SFT policy")
        ax.set_ylabel("gold (frozen MiniLM RM)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("gold vs sqrt(KL): points measured, lines Gao et al.'s law fitted, star: peak inside the range\n"
                 "followed by >= drop_sd gold SDs lost", fontsize=9)  # fmt: skip
    return save_figure(fig, path)


def analyze_study(cfg: OveroptConfig, sd: float) -> dict[str, Any]:
    """Steps 5: fits, tests and trends over every finished proxy arm; writes overopt.json/.md and the figure."""
    root = Path(cfg.pipeline.run_dir)
    results = []
    for size, count in product(cfg.proxy_sizes, cfg.label_counts):
        arm = root / f"{arm_name(size, count)}-s{cfg.pipeline.seed}"
        params = _params(backbone_path(cfg, size))
        reward = _json(arm / "reward" / "summary.json")
        for method in cfg.methods:
            audit = arm / method / "audit.jsonl"
            if not audit.exists():
                continue
            rows = read_jsonl(audit)
            if len(rows) < 2:
                continue
            res = analyze_curve(rows, method, sd, cfg)
            results.append({"size": size, "params": params, "labels": count, "method": method,
                            "proxy_accuracy_gold": reward.get("eval/accuracy_gold"),
                            "proxy_accuracy_labels": reward.get("eval/accuracy_rater"), **res})  # fmt: skip
    if not results:
        raise RewardlabError(f"overopt: no finished proxy arm with an audit under {root}")
    out = {"gold_sd": sd, "drop_sd": cfg.drop_sd, "results": results, "trends": coefficient_trends(results),
           "rises_then_falls": {f"{r['size']}/{r['labels']}/{r['method']}": r["rises_then_falls"] for r in results}}  # fmt: skip
    atomic_write_text(root / "overopt.json", json.dumps(out, indent=2) + "\n")
    atomic_write_text(root / "overopt.md", results_table(results))
    plot_study(results, list(cfg.proxy_sizes), list(cfg.methods), root / "plots" / "overopt.png")
    return out


def _params(model_dir: Path) -> int:
    """Parameters of a pretrained backbone (its pretrain summary), else counted from its weights."""
    s = _json(model_dir.parent / "summary.json")
    if "params" in s:
        return int(s["params"])
    from transformers import AutoModelForCausalLM

    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(model_dir)).parameters())


def _json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------------ the recipe
def run_policy_stages(cfg: OveroptConfig, quiet: bool = False) -> dict[str, float]:
    """Steps 1-2, which need no gold: the policy (pretrain, SFT) and each proxy size's pretrained backbone."""
    root = Path(cfg.pipeline.run_dir)
    times: dict[str, float] = {}
    # 1. the policy: pretrain, SFT (on the prompt task without gold)
    for stage in ("pretrain", "sft"):
        times[stage] = _stage(policy_config(cfg), stage, quiet)
    # 2. the proxies' backbones, pretrained like the policy
    for size in cfg.proxy_sizes:
        if backbone_path(cfg, size) != root / "pretrain" / "model":
            times[f"backbone-{size}"] = _stage(backbone_config(cfg, size), "pretrain", quiet)
    return times


def run_overopt(cfg: OveroptConfig, quiet: bool = False, report: bool = True) -> Path:
    """Run (or continue) the whole study; returns ``<run_dir>/overopt.json``."""
    base = cfg.pipeline
    root = Path(base.run_dir)
    times: dict[str, float] = {}
    # 1-2. the policy and the proxies' backbones (no gold needed)
    times.update(run_policy_stages(cfg, quiet))
    # 3. gold labels of SFT sample pairs
    lab = labels_config(cfg)
    times["label"] = _stage(lab, "label", quiet)
    pairs = load_comparisons(lab.stage_dir("label") / "train.jsonl")
    eval_path = lab.stage_dir("label") / "eval.jsonl"
    if len(pairs) < max(cfg.label_counts):
        raise RewardlabError(
            f"overopt: {len(pairs)} labelled pairs, fewer than label_counts' {max(cfg.label_counts)}"
        )
    sd = gold_sd(pairs)
    if not quiet:
        console.print(
            f"[bold]overopt:[/] {len(pairs)} gold-labelled pairs; gold SD over SFT samples {sd:.3f}"
        )
    # 4. per proxy: reward model, then each method against it
    for size, count in product(cfg.proxy_sizes, cfg.label_counts):
        arm = proxy_config(cfg, size, count, label_subset(pairs, count, lab.stage_dir("label")), eval_path)
        for stage in ("reward", *cfg.methods):
            times[f"{arm.arm}/{stage}"] = _stage(arm, stage, quiet)
    # 5. the laws, the rise-then-fall test, the trends
    t = time.perf_counter()
    out = analyze_study(cfg, sd)
    times["analysis"] = time.perf_counter() - t
    # 6. the report
    if report:
        from rewardlab.report.build import build_report

        t = time.perf_counter()
        build_report(root)
        times["report"] = time.perf_counter() - t
    _append_timings(root, times)
    if not quiet:
        console.print(results_table(out["results"]))
    return root / "overopt.json"


def _append_timings(root: Path, times: dict[str, float]) -> None:
    p = root / "overopt-timings.json"
    history = _json_list(p)
    history.append({k: round(v, 2) for k, v in times.items() if v > 0})
    atomic_write_text(p, json.dumps(history, indent=2) + "\n")


def _json_list(path: Path) -> list[Any]:
    try:
        v = json.loads(path.read_text(encoding="utf-8"))
        return v if isinstance(v, list) else []
    except (OSError, ValueError):
        return []
