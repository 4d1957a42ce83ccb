"""The report's data model and analysis: arms and method audits read from a run folder, law fits,
per-arm summaries, the comparison table and the example samples. Plots and HTML read these; the
orchestration (``build_report``) is in :mod:`rewardlab.report.build`.

Layout read (written by the optimizers)::

    RUN_DIR/task.json                      the task's name, behaviours, headline, gold parts (optional)
    RUN_DIR/<arm>/arm.json                 {"name": "time-pressed", "role": "treatment", "seed": 0} (optional)
    RUN_DIR/<arm>/<method>/audit.jsonl     one row per evaluation: "step" (RL-style) or "n" (best-of-n)
    RUN_DIR/<arm>/<method>/samples/step_<N>.jsonl | n_<n>.jsonl

Any ``<method>`` folder with an ``audit.jsonl`` counts: rows with ``"step"`` make it RL-style (the
RL law is fitted), rows with ``"n"`` make it best-of-n (the best-of-n law). Missing arms, methods,
samples or metrics only shrink the report. Written: ``RUN_DIR/plots/*.png``, ``RUN_DIR/summary.json``
and ``RUN_DIR/report.html`` (self-contained). Command line: ``python -m rewardlab.report.build RUN_DIR``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rewardlab.audit.laws import (
    LawFit,
    LawKind,
    fit_bon_law,
    fit_law,
    fit_rl_law,
    gold_attribution,
    smoothed_peak,
)
from rewardlab.methods import METHODS, REPORT_ORDER, label_of
from rewardlab.runs import unfinished_attempt
from rewardlab.tasks.base import TaskInfo
from rewardlab.utils import RewardlabError

#: Method folders shown first, in this order (the registry's); others follow alphabetically, best-of-n last.
METHOD_ORDER = REPORT_ORDER
#: How method folders are named in figures and tables (others keep their folder name).
METHOD_LABELS = {n: m.label for n, m in METHODS.items() if m.label}
#: Window of the centered moving average used for the gold peak.
PEAK_WINDOW = 3
#: Folders of RUN_DIR that are never arms.
_SKIP_DIRS = {"plots", "__pycache__"}


def method_label(name: str) -> str:
    """``dpo-b0.1`` -> ``DPO β=0.1``; known folders get their display name; others stay as they are."""
    return label_of(name)


@dataclass
class MethodRun:
    """One optimizer's audit in one arm: rows sorted by ``step`` (RL-style) or ``n`` (best-of-n)."""

    name: str
    kind: LawKind
    rows: list[dict[str, Any]]
    dir: Path
    #: An unfinished attempt (``<method>.partial``): its ``status.json`` (state, reason, step); None when complete.
    status: dict[str, Any] | None = None
    #: Warnings the run itself raised (``summary.json``: a collapse, ...).
    warnings: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status is None

    @property
    def x_key(self) -> str:
        """``"step"`` for RL-style methods, ``"n"`` for best-of-n."""
        return "n" if self.kind == "bon" else "step"

    @property
    def xs(self) -> np.ndarray:
        return np.array([r[self.x_key] for r in self.rows], dtype=float)

    def column(self, key: str) -> np.ndarray:
        """Values of ``key`` per row; missing, null or non-numeric values are NaN."""
        return np.array([_num(r.get(key)) for r in self.rows], dtype=float)

    def kl(self) -> np.ndarray:
        """KL to the reference in nats per row (the estimator named by ``kl/estimator``; bon: ``kl``)."""
        return np.array([row_kl(r, self.kind) for r in self.rows], dtype=float)

    def sqrt_kl(self) -> np.ndarray:
        """``d = sqrt(max(KL, 0))`` per row (a noisy ``k1`` estimate can dip below 0)."""
        return np.sqrt(np.clip(self.kl(), 0.0, None))

    def samples_path(self, x: float) -> Path | None:
        """The samples file of the evaluation at ``x`` (step or n), or the nearest one; None if none."""
        files = sample_files(self)
        if not files:
            return None
        return files[min(files, key=lambda k: (abs(k - x), k))]


@dataclass
class Arm:
    """One arm of the experiment (a feedback source and a seed) with its method audits.

    ``preset`` is the arm's name without the seed (``label.name``: the rater preset or the source), the
    key arms are grouped by across seeds; ``role`` is ``control`` for the baselines the others are
    compared with.
    """

    name: str
    preset: str
    seed: int | None
    dir: Path
    methods: dict[str, MethodRun] = field(default_factory=dict)
    role: str = "treatment"

    @property
    def biased(self) -> bool:
        return self.role != "control"


def _num(v: Any) -> float:
    """A metric value as a float: numbers (and booleans) only; anything else (a string, even "0.5") is NaN."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return float(v)
    return math.nan


#: Audit-row fields that hold text, not a metric.
TEXT_FIELDS = frozenset({"kl/estimator", "method", "arm", "preset", "rater"})


def reject_non_numeric(rows: list[dict[str, Any]], path: Path, warnings: list[str]) -> None:
    """Null every metric value that is not a number (in place), with one warning per field naming the file,
    the first line and how many values were dropped: a non-numeric value is never counted as a point."""
    bad: dict[str, tuple[int, Any, int]] = {}
    for i, r in enumerate(rows, 1):
        for k, v in r.items():
            if k in TEXT_FIELDS or v is None or (isinstance(v, int | float) and not isinstance(v, bool)):
                continue
            if isinstance(v, bool | dict | list) and k not in ("step", "n"):
                continue  # structured extras (e.g. a round's details) are not plotted
            first = bad.get(k, (i, v, 0))
            bad[k] = (first[0], first[1], first[2] + 1)
            r[k] = None
    for k, (line, v, n) in bad.items():
        warnings.append(f"{path}: {k!r} has {n} non-numeric value(s) (first: {v!r} in row {line}); ignored")


def row_kl(row: dict[str, Any], kind: str) -> float:
    """KL (nats) of one audit row: ``kl/<estimator>`` for RL rows, ``kl`` (else from ``n``) for bon."""
    if kind == "bon":
        if row.get("kl") is not None:
            return _num(row["kl"])
        n = _num(row.get("n"))
        return math.log(n) - (n - 1) / n if n >= 1 else math.nan
    est = row.get("kl/estimator") or "k1"
    for key in (f"kl/{est}", "kl/k1", "kl"):
        if row.get(key) is not None:
            return _num(row[key])
    return math.nan


def sample_files(run: MethodRun) -> dict[int, Path]:
    """``{step or n: path}`` of the method's samples folder (``step_<N>.jsonl`` / ``n_<n>.jsonl``)."""
    prefix = "n" if run.kind == "bon" else "step"
    pat = re.compile(rf"^{prefix}_(\d+)\.jsonl$")
    d = run.dir / "samples"
    if not d.is_dir():
        return {}
    out = {}
    for p in d.iterdir():
        m = pat.match(p.name)
        if m and p.is_file():
            out[int(m.group(1))] = p
    return out


# ------------------------------------------------------------------------------------------- loading
def read_jsonl_lenient(path: Path, warnings: list[str]) -> list[dict[str, Any]]:
    """JSONL rows; malformed lines (e.g. a half-written last line of a live run) are skipped with a warning."""
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        warnings.append(f"{path}: unreadable ({e})")
        return rows
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            warnings.append(f"{path}:{i}: malformed JSON skipped ({e.msg})")
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            warnings.append(f"{path}:{i}: not a JSON object, skipped")
    return rows


def load_method(path: Path, warnings: list[str]) -> MethodRun | None:
    """Load ``path/audit.jsonl``; ``None`` (with a warning) when it has no usable rows."""
    rows = read_jsonl_lenient(path / "audit.jsonl", warnings)
    reject_non_numeric(rows, path / "audit.jsonl", warnings)
    if any("step" in r for r in rows):
        kind: LawKind = "rl"
        key = "step"
    elif any("n" in r for r in rows):
        kind, key = "bon", "n"
    else:
        warnings.append(f"{path / 'audit.jsonl'}: no row has 'step' or 'n'; method skipped")
        return None
    by_x: dict[float, dict[str, Any]] = {}
    for r in rows:
        x = _num(r.get(key))
        if math.isfinite(x):
            by_x[x] = r  # a repeated step (resumed run) keeps its last row
    if not by_x:
        warnings.append(f"{path / 'audit.jsonl'}: no row with a numeric {key!r}; method skipped")
        return None
    run = MethodRun(path.name.removesuffix(PARTIAL), kind, [by_x[x] for x in sorted(by_x)], path)
    if path.name.endswith(PARTIAL):
        run.status = unfinished_attempt(path.parent / run.name) or {"state": "unfinished"}
        warnings.append(f"{path}: {run.name} did not finish ({describe_status(run.status)}); drawn up to its last "
                        "audit and marked unfinished")  # fmt: skip
    summary = path / "summary.json"
    if summary.is_file():
        try:
            data = json.loads(summary.read_text(encoding="utf-8"))
            listed = data.get("warnings") if isinstance(data, dict) else None
            run.warnings = [str(w) for w in listed] if isinstance(listed, list) else []
        except (OSError, ValueError, AttributeError) as e:
            warnings.append(f"{summary}: unreadable ({e})")
    for w in run.warnings:
        warnings.append(f"{path}: {w}")
    return run


PARTIAL = ".partial"


def describe_status(status: dict[str, Any]) -> str:
    """``interrupted at step 12 (stopped by Ctrl-C)`` from an unfinished attempt's status."""
    text = str(status.get("state", "unfinished"))
    if status.get("step") is not None:
        text += f" at step {status['step']}"
    if status.get("reason"):
        text += f": {status['reason']}"
    return text


def _method_dirs(d: Path) -> list[Path]:
    """Method folders of an arm: complete ones, and an unfinished ``<method>.partial`` where no complete one exists."""
    dirs = sorted(p for p in d.iterdir() if p.is_dir() and (p / "audit.jsonl").is_file())
    complete = {p.name for p in dirs if not p.name.endswith(PARTIAL)}
    return [p for p in dirs if not (p.name.endswith(PARTIAL) and p.name.removesuffix(PARTIAL) in complete)]


def _method_sort_key(name: str, kind: str) -> tuple[int, int, str]:
    if kind == "bon":
        return (2, 0, name)
    if name in METHOD_ORDER:
        return (0, METHOD_ORDER.index(name), name)
    return (1, 0, name)


def load_arm(d: Path, warnings: list[str]) -> Arm | None:
    """Load one arm folder; ``None`` when it holds no usable method audit."""
    preset, seed = d.name, None
    m = re.match(r"^(.*)-s(\d+)$", d.name)
    if m:
        preset, seed = m.group(1), int(m.group(2))
    role = None
    meta_path = d / "arm.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            preset = str(meta.get("name") or meta.get("preset") or preset)
            seed = int(meta["seed"]) if meta.get("seed") is not None else seed
            role = meta.get("role")
        except (json.JSONDecodeError, OSError, AttributeError, TypeError, ValueError) as e:
            warnings.append(f"{meta_path}: unreadable ({e}); name/seed taken from the folder name")
    if role not in ("treatment", "control"):
        role = "control" if preset == "unbiased" else "treatment"  # run folders written before arm roles
    methods = [mr for p in _method_dirs(d) if (mr := load_method(p, warnings)) is not None]
    if not methods:
        return None
    methods.sort(key=lambda mr: _method_sort_key(mr.name, mr.kind))
    return Arm(d.name, preset, seed, d, {mr.name: mr for mr in methods}, role)


def load_arms(run_dir: Path | str, warnings: list[str] | None = None) -> list[Arm]:
    """Discover the arms of ``run_dir`` (``run_dir`` itself counts as one arm if it holds method folders).

    Arms are sorted biased first, then by preset and seed. Raises :class:`RewardlabError` when no
    ``<arm>/<method>/audit.jsonl`` has usable rows.
    """
    run_dir = Path(run_dir)
    warnings = [] if warnings is None else warnings
    if not run_dir.is_dir():
        raise RewardlabError(f"{run_dir}: run folder not found")
    candidates = [run_dir] if _method_dirs(run_dir) else []
    candidates += sorted(
        p for p in run_dir.iterdir() if p.is_dir() and p.name not in _SKIP_DIRS and not p.name.startswith(".")
    )
    arms = [a for c in candidates if (a := load_arm(c, warnings)) is not None]
    if not arms:
        raise RewardlabError(
            f"{run_dir}: no <arm>/<method>/audit.jsonl with usable rows found; nothing to report"
        )
    arms.sort(key=lambda a: (not a.biased, a.preset, a.seed if a.seed is not None else -1, a.name))
    return arms


# ------------------------------------------------------------------------------------- aggregation
def method_names(arms: Iterable[Arm]) -> list[str]:
    """All method names over the arms, in display order."""
    kinds: dict[str, str] = {}
    for a in arms:
        for m in a.methods.values():
            kinds.setdefault(m.name, m.kind)
    return sorted(kinds, key=lambda n: _method_sort_key(n, kinds[n]))


def presets(arms: Iterable[Arm]) -> list[str]:
    """Presets over the arms, biased ones first, the control last."""
    seen: dict[str, bool] = {}
    for a in arms:
        seen.setdefault(a.preset, a.biased)
    return sorted(seen, key=lambda p: (not seen[p], p))


def group_runs(arms: Sequence[Arm]) -> dict[tuple[str, str], list[MethodRun]]:
    """``{(preset, method): [its MethodRun in each seed]}``, in display order (presets, then methods)."""
    out: dict[tuple[str, str], list[MethodRun]] = {}
    for p in presets(arms):
        for m in method_names(arms):
            runs = [a.methods[m] for a in arms if a.preset == p and m in a.methods]
            if runs:
                out[(p, m)] = runs
    return out


@dataclass
class Curve:
    """A metric averaged over seeds, aligned on the step (or n): x values, sqrt(KL), value."""

    x: np.ndarray
    d: np.ndarray
    y: np.ndarray


def mean_curve(
    runs: Sequence[MethodRun], key: str | None = None, values: Sequence[np.ndarray] | None = None
) -> Curve:
    """Mean over seeds at each step (or n) of column ``key`` (or of per-run ``values``), NaN-aware."""
    xs = sorted({float(x) for r in runs for x in r.xs})
    index = {x: i for i, x in enumerate(xs)}
    d_acc = np.full((len(runs), len(xs)), np.nan)
    y_acc = np.full((len(runs), len(xs)), np.nan)
    for j, r in enumerate(runs):
        cols = [index[float(x)] for x in r.xs]
        d_acc[j, cols] = r.sqrt_kl()
        y_acc[j, cols] = r.column(key) if values is None else values[j]
    return Curve(np.array(xs), _nanmean0(d_acc), _nanmean0(y_acc))


def _nanmean0(a: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        cnt = np.sum(np.isfinite(a), axis=0)
        tot = np.nansum(a, axis=0)
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


def fit_runs(runs: Sequence[MethodRun]) -> LawFit:
    """Fit the method's law on the pooled points of ``runs`` (one or more seeds), each relative to its own start.

    ``gold0`` of the result is the mean start gold. Raises ``ValueError`` when the points cannot
    determine the law (too few, all at one KL).
    """
    kind = runs[0].kind
    d_all, r_all, g0 = [], [], []
    for r in runs:
        kl, gold = r.kl(), r.column("gold/mean")
        keep = np.isfinite(kl) & np.isfinite(gold)
        if not keep.any():
            continue
        d = np.sqrt(np.clip(kl[keep], 0.0, None))
        base = float(gold[keep][int(np.argmin(d))])
        d_all.append(d)
        r_all.append(gold[keep] - base)
        g0.append(base)
    if not d_all:
        raise ValueError(f"{kind} law: no finite (KL, gold) points")
    fit = (fit_bon_law if kind == "bon" else fit_rl_law)(np.concatenate(d_all), np.concatenate(r_all))
    return dataclasses.replace(fit, gold0=float(np.mean(g0)))


# ---------------------------------------------------------------------------------------- summaries
def _clean(v: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> python, recursively."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _first_last_finite(y: np.ndarray) -> tuple[float, float]:
    idx = np.flatnonzero(np.isfinite(y))
    if idx.size == 0:
        return math.nan, math.nan
    return float(y[idx[0]]), float(y[idx[-1]])


def law_dict(fit: LawFit | None) -> dict[str, Any] | None:
    if fit is None:
        return None
    return {**fit.to_dict(), "peak_in_range": fit.peak_in_range}


def load_task_info(run_dir: Path, arms: Sequence[Arm], warnings: list[str]) -> TaskInfo:
    """``RUN_DIR/task.json``; for older folders, inferred from the audit rows (headline: the first
    behaviour other than length and parse rate)."""
    p = Path(run_dir) / "task.json"
    if p.is_file():
        try:
            return TaskInfo.from_dict(json.loads(p.read_text(encoding="utf-8")))
        except (ValueError, OSError, AttributeError, TypeError) as e:
            warnings.append(f"{p}: unreadable ({e}); task inferred from the audit rows")
    keys: list[str] = []
    for a in arms:
        for m in a.methods.values():
            keys += [k for k in m.rows[0] if k not in keys]
    behaviors = {k.split("/", 1)[1]: k.split("/", 1)[1].replace("_", " ") for k in keys
                 if k.startswith("behavior/") and k not in ("behavior/length", "behavior/parse_rate")}  # fmt: skip
    parts = tuple(k.removeprefix("gold/part_") for k in keys if k.startswith("gold/part_"))
    return TaskInfo(name="(unknown task)", has_gold="gold/mean" in keys, behaviors=behaviors,
                    headline=next(iter(behaviors), None), gold_parts=parts,
                    group="difficulty" if any(k.startswith("gold/accuracy_d") for k in keys) else None)  # fmt: skip


def headline_key(info: TaskInfo) -> str:
    """The audit column of the task's headline behaviour (``behavior/length`` when it declares none)."""
    return f"behavior/{info.headline}" if info.headline else "behavior/length"


def summarize_method(arm: Arm, run: MethodRun, info: TaskInfo | None = None) -> dict[str, Any]:
    """Start / smoothed-peak / end gold, proxy and the task's headline behaviour start/end, KL, gold
    attribution, law fit (gold entries are NaN for a task without gold)."""
    info = info or TaskInfo(name="?", has_gold=True, headline="sycophancy_rate")
    gold, kl, xs = run.column("gold/mean"), run.kl(), run.xs
    s: dict[str, Any] = {"arm": arm.name, "preset": arm.preset, "seed": arm.seed, "biased": arm.biased,
                         "method": run.name, "kind": run.kind, "x_key": run.x_key, "n_points": len(run.rows),
                         "x_start": float(xs[0]), "x_end": float(xs[-1])}  # fmt: skip
    s["gold_start"], s["gold_end"] = _first_last_finite(gold)
    try:
        i, v = smoothed_peak(gold, PEAK_WINDOW)
        s.update(gold_peak=v, gold_peak_index=i, gold_peak_x=float(xs[i]), gold_peak_kl=float(kl[i]),
                 gold_peak_at_end=bool(i == len(xs) - 1 and len(xs) > 1))  # fmt: skip
    except ValueError:
        s.update(gold_peak=math.nan, gold_peak_index=None, gold_peak_x=None, gold_peak_kl=math.nan,
                 gold_peak_at_end=None)  # fmt: skip
    s["gold_drop_from_peak"] = s["gold_peak"] - s["gold_end"]
    s["proxy_start"], s["proxy_end"] = _first_last_finite(run.column("proxy/mean"))
    s["accuracy_start"], s["accuracy_end"] = _first_last_finite(run.column("gold/accuracy"))
    s["behavior"] = headline_key(info)
    s["behavior_start"], s["behavior_end"] = _first_last_finite(run.column(s["behavior"]))
    s["length_start"], s["length_end"] = _first_last_finite(run.column("behavior/length"))
    s["kl_end"] = _first_last_finite(kl)[1]
    s["wall_seconds"] = wall_seconds(run.dir)
    s["finished"] = run.finished
    s["status"] = describe_status(run.status) if run.status is not None else "complete"
    s["run_warnings"] = list(run.warnings)
    s["attribution"] = gold_attribution(run.rows[0], run.rows[-1], info.gold_parts) if info.has_gold else {}
    if not info.has_gold:
        s["law"], s["law_error"] = None, "the task has no gold"
        return s
    try:
        s["law"], s["law_error"] = law_dict(fit_law(run.kind, kl, gold)), None
    except ValueError as e:
        s["law"], s["law_error"] = None, str(e)
    return s


def wall_seconds(method_dir: Path) -> float:
    """The optimizer's wall time: ``seconds`` in its ``summary.json`` (NaN when absent or unreadable)."""
    try:
        return _num(json.loads((method_dir / "summary.json").read_text(encoding="utf-8")).get("seconds"))
    except (OSError, ValueError, AttributeError):
        return math.nan


def compare_methods(arms: Sequence[Arm], info: TaskInfo | None = None) -> list[dict[str, Any]]:
    """One row per (arm, method), averaged over seeds: final proxy and gold, smoothed peak gold, final
    KL, final headline behaviour, wall time. The comparison table of the report (and of the README)."""
    out = []
    for (preset, method), runs in group_runs(arms).items():
        per = [summarize_method(next(a for a in arms if r in a.methods.values()), r, info) for r in runs]

        def mean(key: str, per: list[dict[str, Any]] = per) -> float:
            vals = [
                float(x[key]) for x in per if isinstance(x.get(key), int | float) and math.isfinite(x[key])
            ]
            return float(np.mean(vals)) if vals else math.nan

        out.append({"preset": preset, "method": method, "kind": runs[0].kind, "n_seeds": len(runs),
                    "biased": any(a.biased for a in arms if a.preset == preset), "proxy_end": mean("proxy_end"),
                    "gold_start": mean("gold_start"),
                    "gold_end": mean("gold_end"), "gold_peak": mean("gold_peak"), "kl_end": mean("kl_end"),
                    "behavior_end": mean("behavior_end"), "accuracy_end": mean("accuracy_end"),
                    "wall_seconds": mean("wall_seconds")})  # fmt: skip
    return out


def build_summary(
    arms: Sequence[Arm], run_dir: Path, warnings: list[str], info: TaskInfo | None = None
) -> dict[str, Any]:
    """Everything the report's tables show, as plain JSON-able data."""
    info = info or load_task_info(run_dir, arms, warnings)
    out: dict[str, Any] = {
        "run_dir": str(run_dir),
        "task": info.to_dict(),
        "kl_units": "nats",
        "peak_window": PEAK_WINDOW,
        "arms": {},
    }
    for a in arms:
        out["arms"][a.name] = {"preset": a.preset, "seed": a.seed, "biased": a.biased, "role": a.role,
                               "methods": {m.name: summarize_method(a, m, info) for m in a.methods.values()}}  # fmt: skip
    pooled = []
    for (p, m), runs in group_runs(arms).items():
        if len(runs) < 2 or not info.has_gold:
            continue
        try:
            law, err = law_dict(fit_runs(runs)), None
        except ValueError as e:
            law, err = None, str(e)
        pooled.append({"preset": p, "method": m, "n_seeds": len(runs), "law": law, "law_error": err})
    out["pooled_laws"] = pooled
    out["comparison"] = compare_methods(arms, info)
    out["warnings"] = list(warnings)
    return out


# ----------------------------------------------------------------------------------------- examples
def example_run(arms: Sequence[Arm]) -> tuple[Arm, MethodRun] | None:
    """The run whose samples the report shows: a biased arm's PPO, else its other RL method, else bon."""
    ordered = [a for a in arms if a.biased] + [a for a in arms if not a.biased]
    for want in ("ppo", "rl", "bon"):
        for a in ordered:
            for m in a.methods.values():
                if (want == "ppo" and m.name == "ppo") or (want != "ppo" and m.kind == want):
                    return a, m
    return None


def pick_examples(
    run: MethodRun, summary: dict[str, Any], k: int = 3, highlight: str | None = None
) -> list[dict[str, Any]]:
    """Up to ``k`` samples at the start, the smoothed gold peak and the end of ``run``.

    The same prompts are shown at each stage when the samples files share them, wrong-belief
    prompts (where sycophancy can show) first. Each entry: ``{"stage", "x", "kl", "file", "rows"}``.
    """
    xs, kl = run.xs, run.kl()
    stages: dict[int, list[str]] = {}
    peak_i = summary.get("gold_peak_index")
    for label, i in (("start", 0), ("gold peak", peak_i), ("end", len(xs) - 1)):
        if i is not None:
            stages.setdefault(int(i), []).append(label)
    warnings: list[str] = []
    loaded = []
    for i, labels in sorted(stages.items()):
        path = run.samples_path(xs[i])
        rows = read_jsonl_lenient(path, warnings) if path is not None else []
        loaded.append((" = ".join(labels), i, path, rows))
    common: set[str] | None = None
    for *_, rows in loaded:
        if rows:
            ps = {str(r.get("prompt", "")) for r in rows}
            common = ps if common is None else common & ps
    out = []
    for label, i, path, rows in loaded:
        by_prompt = {}
        for r in rows:
            by_prompt.setdefault(str(r.get("prompt", "")), r)
        pool = [by_prompt[p] for p in by_prompt if common and p in common] or rows
        pool = sorted(
            pool, key=lambda r: (not bool(r.get(highlight)) if highlight else 0, str(r.get("prompt", "")))
        )
        chosen = pool[:k]
        out.append({"stage": label, "x": float(xs[i]), "x_key": run.x_key, "kl": float(kl[i]),
                    "file": None if path is None else str(path), "rows": chosen})  # fmt: skip
    return out
