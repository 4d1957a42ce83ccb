"""The method registry: one declaration per method, read by the CLI, `rewardlab run`, --reuse and the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from rewardlab.cli import build_parser, main
from rewardlab.config import load_config
from rewardlab.methods import METHODS, OPTIMIZERS, label_of, method
from rewardlab.pipelines.run import _done
from rewardlab.report.analysis import METHOD_LABELS, METHOD_ORDER
from rewardlab.report.plots import METHOD_COLORS
from rewardlab.utils import RewardlabError

MICRO = Path(__file__).resolve().parents[1] / "configs" / "micro.yaml"


def test_every_subcommand_is_a_registered_method() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    others = {"run", "report", "criteria", "eval", "sweep", "study", "reward-eval"}
    assert set(sub.choices) == {*METHODS, *others}  # type: ignore[attr-defined]
    for name, m in METHODS.items():
        assert m.help and callable(m.load()), name


def test_report_knows_exactly_the_registered_methods() -> None:
    # the report once listed a method "reinforce" that did not exist
    assert "reinforce" not in METHOD_ORDER and "reinforce" not in METHOD_COLORS
    assert set(METHOD_ORDER) <= set(METHODS)
    assert set(METHOD_LABELS) <= set(METHODS) and set(METHOD_COLORS) <= set(METHODS)
    for name in OPTIMIZERS:
        assert METHODS[name].label and METHODS[name].color.startswith("#"), name
    assert label_of("dpo-b0.1") == "DPO β=0.1" and label_of("ppo") == "PPO" and label_of("mine") == "mine"


def test_rloo_with_one_sample_per_prompt_fails_before_any_work(tmp_path: Path, capsys) -> None:
    # used to pass validation and fail inside rloo_advantages (through `rewardlab run`: silently raised to 2)
    rc = main(
        ["rloo", str(MICRO), "--run-dir", str(tmp_path), "--quiet", "--set", "ppo.samples_per_prompt=1"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "ppo.samples_per_prompt must be >= 2 for rloo" in err and "rewardlab rloo" in err
    assert not any(tmp_path.iterdir())
    with pytest.raises(RewardlabError, match=r"ppo\.samples_per_prompt must be >= 2 for grpo"):
        load_config(MICRO, ["methods=[ppo,grpo]", "ppo.samples_per_prompt=1"])
    assert load_config(MICRO, ["methods=[ppo]", "ppo.samples_per_prompt=1"]).ppo.samples_per_prompt == 1


def test_reuse_knows_when_modpo_is_done(tmp_path: Path) -> None:
    # --reuse used to look for <arm>/modpo/model, which MODPO never writes (it writes modpo/w<w>/...)
    cfg = load_config(MICRO, [f"run_dir={tmp_path}"])
    parent = cfg.stage_dir("modpo")
    (parent / "w1").mkdir(parents=True)
    (parent / "w1" / "summary.json").write_text("{}")
    assert not _done(cfg, "modpo")  # a weighting finished, the sweep did not
    (parent / "pareto.json").write_text("{}")
    assert _done(cfg, "modpo")


def test_folders_follow_the_config() -> None:
    cfg = load_config(MICRO, ["dpo.beta_sweep=[0.1,0.3]", "iterative_dpo.name=online"])
    assert method("dpo").folders(cfg) == ["dpo-b0.1", "dpo-b0.3"]
    assert method("dpo-iter").folders(cfg) == ["online"]
    assert method("ppo").folders(cfg) == ["ppo"]
    with pytest.raises(KeyError, match="unknown method 'reinforce'"):
        method("reinforce")
