"""What every study shares: its YAML config, the pipeline config it builds on, and writing its table."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rewardlab.config import PipelineConfig, load_config
from rewardlab.utils import RewardlabError, atomic_write_text, read_jsonl_numbered

S = TypeVar("S", bound="StudyConfig")


class StudyConfig(BaseModel):
    """The fields every study has: the pipeline it builds on, where it writes, its seeds."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(
        "configs/default.yaml", description="the pipeline config the study's stages run with"
    )
    set: list[str] = Field(
        default_factory=list, description="--set overrides of the pipeline config (key=value)"
    )
    run_dir: str = Field(
        ..., description="run folder of the study's stages (shares pretrain/SFT across seeds)"
    )
    out_dir: str = Field(..., description="where the study's table (JSON + markdown) and figure go")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)

    def pipeline_config(self, seed: int, extra: Sequence[str] = ()) -> PipelineConfig:
        """The pipeline config of one seed: ``pipeline`` + ``set`` + ``extra``, in the study's run folder."""
        return load_config(self.pipeline, [*self.set, *extra, f"run_dir={self.run_dir}", f"seed={seed}"])


class BaseRunStudyConfig(StudyConfig):
    """A study whose seeds share one pretrained and SFT model, which it can take from a finished run."""

    base_run: str | None = Field(
        None,
        description="a finished run (e.g. runs/default after the demonstration) whose pretrained and SFT models "
        "the study takes instead of training its own, where their training settings match",
    )


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or no hard links there
        shutil.copy2(src, dst)


def take_base_models(cfg: PipelineConfig, base_run: str | None) -> list[str]:
    """Put the pretrained and SFT models of the finished run ``base_run`` into ``cfg``'s run folder (hard links,
    else copies; staged, then renamed), for each of the two the run folder lacks and whose training settings
    ``cfg`` shares (the rules of ``--resume``: a change to anything but threads, paths or what is measured keeps
    it out, and the stage is trained). Returns what was done, as log lines."""
    notes: list[str] = []
    for stage in PipelineConfig.SHARED_STAGES if base_run else ():
        src, dst = Path(str(base_run)) / stage, cfg.stage_dir(stage)
        if dst.exists():
            continue
        if not (src / "summary.json").exists():
            notes.append(f"{stage}: trained here ({src} holds no finished {stage} stage)")
            continue
        try:
            raw = yaml.safe_load((src / "config.yaml").read_text(encoding="utf-8"))
            old = PipelineConfig.model_validate(raw).model_dump(
                mode="json"
            )  # fields added since: their defaults
            cfg.model_copy(update={"allow_config_change": True}).check_resume(stage, old)
        except (OSError, yaml.YAMLError, ValidationError, RewardlabError) as e:
            fields = [x.strip() for x in str(e).splitlines() if x.startswith("  ")]
            why = f"its settings differ: {'; '.join(fields)}" if fields else str(e).splitlines()[0]
            notes.append(f"{stage}: trained here, not taken from {src} ({why})")
            continue
        tmp = dst.with_name(f"{stage}.linking")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, copy_function=_link_or_copy)
        tmp.replace(dst)
        notes.append(f"{stage}: taken from {src}")
    return notes


def load_study(path: str | Path, cls: type[S], overrides: Sequence[str] = ()) -> S:
    """A study's YAML validated by ``cls``; ``overrides`` are ``key=value`` on its top-level fields."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise RewardlabError(f"{p}: cannot read the study config ({e})") from None
    for item in overrides:
        key, _, value = item.partition("=")
        data[key.strip()] = yaml.safe_load(value)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        lines = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise RewardlabError(f"{p}: " + "; ".join(lines)) from None


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in read_jsonl_numbered(path)]


def final_samples(stage_dir: Path) -> list[dict[str, Any]]:
    """The samples of a stage's last audit (``samples/step_<last>.jsonl``), else its ``samples.jsonl``."""
    steps = sorted((stage_dir / "samples").glob("step_*.jsonl"), key=lambda q: int(q.stem.split("_")[1]))
    if steps:
        return read_rows(steps[-1])
    if (stage_dir / "samples.jsonl").exists():
        return read_rows(stage_dir / "samples.jsonl")
    raise RewardlabError(f"{stage_dir}: no samples (samples/step_*.jsonl or samples.jsonl)")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |\n" for r in rows)


def _no_nan(obj: Any) -> Any:
    """``obj`` with every NaN float as ``None`` (JSON has no NaN)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_no_nan(v) for v in obj]
    return obj


def write_table(out_dir: Path, name: str, rows: Sequence[dict[str, Any]], columns: Sequence[str],
                extra: dict[str, Any] | None = None) -> tuple[Path, Path]:  # fmt: skip
    """``<out_dir>/<name>.json`` (rows + extra) and ``<name>.md`` (the markdown table), written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    j, m = out_dir / f"{name}.json", out_dir / f"{name}.md"
    atomic_write_text(j, json.dumps(_no_nan({"rows": list(rows), **(extra or {})}), indent=2) + "\n")
    atomic_write_text(m, markdown_table(rows, columns))
    return j, m


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Lay out ``fig``, write it to ``path`` atomically (a temp file, then rename) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
    return path
