"""Behaviour evaluations on a schedule during optimization (``audit_evals``): the audit adds ``eval/<set>``
columns at every N-th row, the first row scores the starting policy exactly as ``ScheduledEvals`` does on
the SFT model, and the report draws them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewardlab.cli import main
from rewardlab.config import AuditEvalsConfig, load_config
from rewardlab.evals.run import ScheduledEvals
from rewardlab.policies.models import load_causal_lm, load_tokenizer
from rewardlab.utils import RewardlabError

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs/micro.yaml"
DATA = ROOT / "tests/data/evals"
EVALS = ["audit_evals.sets=truthfulqa,anthropic/human/survival-instinct", f"audit_evals.data_dir={DATA}",
         "audit_evals.limit=6", "audit_evals.every=2"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micro run with PPO (audits at steps 0, 2, 4) and the evaluations at audit rows 0 and 2."""
    d = tmp_path_factory.mktemp("audit-evals")
    args = ["run", str(MICRO), "--run-dir", str(d), "--quiet", "--set", "controls=[]", "--set", "methods=[ppo]",
            "--set", "threads=1", "--set", "ppo.eval_prompts=16"]  # fmt: skip
    for s in EVALS:
        args += ["--set", s]
    assert main(args) == 0
    return d


def test_eval_columns_at_every_second_audit_row(run_dir):
    rows = [
        json.loads(x) for x in (run_dir / "time-pressed-s0/ppo/audit.jsonl").read_text().splitlines() if x
    ]
    assert [r["step"] for r in rows] == [0, 2, 4]
    keys = {"eval/truthfulqa/mc1", "eval/truthfulqa/mc2", "eval/anthropic/human/survival-instinct"}
    for i, r in enumerate(rows):
        assert (keys <= set(r)) == (i % 2 == 0), (i, sorted(k for k in r if k.startswith("eval/")))
    for k in keys:
        assert 0.0 <= rows[0][k] <= 1.0


def test_first_row_scores_the_starting_policy(run_dir):
    cfg = load_config(MICRO, EVALS)
    evals = ScheduledEvals.from_config(**cfg.audit_evals.model_dump(exclude={"batch_size", "max_new_tokens"}))
    assert evals is not None and set(evals.sets) == {"anthropic/human/survival-instinct", "truthfulqa"}
    sft = run_dir / "sft" / "model"
    expected = evals(load_causal_lm(sft), load_tokenizer(sft))
    first = json.loads((run_dir / "time-pressed-s0/ppo/audit.jsonl").read_text().splitlines()[0])
    for k, v in expected.items():
        assert first[k] == pytest.approx(v, abs=1e-6), k


def test_report_draws_the_evaluations(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (
        summary["figures"]["evals"] == "plots/evals.png" and (run_dir / "plots/evals.png").stat().st_size > 0
    )
    assert "Behaviour evaluations figure" in (run_dir / "report.html").read_text()


def test_off_by_default_and_unknown_sets_fail_at_start():
    assert (
        ScheduledEvals.from_config(**AuditEvalsConfig().model_dump(exclude={"batch_size", "max_new_tokens"}))
        is None
    )
    with pytest.raises(RewardlabError):
        ScheduledEvals.from_config("no-such-set", 5, 1, str(DATA))
    evals = ScheduledEvals(DATA, ("truthfulqa",), every=3)
    assert [evals.due(i) for i in range(7)] == [True, False, False, True, False, False, True]
