"""`rewardlab run --seeds` and `--reuse`, and best-of-n's selection, on the smallest pipeline there is.

One run of two seeds (each with its control) on configs/micro.yaml shrunk to a few steps: the summary
aggregates both seeds as computed here from their audit rows; rerunning with ``--seeds 0,1,2 --reuse``
after deleting one stage leaves every finished stage's files untouched (same bytes, same mtime) and runs
the deleted stage and the new seed. Best-of-n, given samples whose proxy scores the test knows, keeps the
highest-scoring sample of every group.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import rewardlab.pipelines.bon as bon_module
from rewardlab.audit.criteria import criteria_summary
from rewardlab.cli import main
from rewardlab.config import load_config
from rewardlab.pipelines.common import eval_problems
from rewardlab.rewards.model import RewardModel

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs/micro.yaml"
TINY = [
    "threads=1", "arm_processes=1",
    "pretrain.steps=2", "pretrain.eval_every=2", "pretrain.eval_prompts=8",
    "sft.num_demos=64", "sft.steps=2", "sft.eval_every=2", "sft.eval_prompts=8",
    "label.num_prompts=40", "reward.normalize_prompts=8",
    "ppo.steps=2", "ppo.eval_every=2", "ppo.eval_prompts=8",
    "bon.max_n=4", "bon.prompts=8",
]  # fmt: skip
ARM_STAGES = ("label", "reward", "ppo", "bon")


def _args(run_dir: Path, *extra: str) -> list[str]:
    sets = [x for s in TINY for x in ("--set", s)]
    return ["run", str(MICRO), "--run-dir", str(run_dir), "--quiet", *sets, *extra]


@pytest.fixture(autouse=True, scope="module")
def restore_threads() -> Iterator[None]:
    """The runs below use one torch thread (fastest for tiny models on a busy machine); later tests get theirs back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("seeds") / "run"
    assert main(_args(run_dir, "--seeds", "0,1")) == 0
    return run_dir


def _audit(run_dir: Path, arm: str, method: str) -> list[dict[str, Any]]:
    return [
        json.loads(x) for x in (run_dir / arm / method / "audit.jsonl").read_text().splitlines() if x.strip()
    ]


def test_seeds_are_run_and_aggregated(two_seeds: Path) -> None:
    arms = [f"{p}-s{s}" for s in (0, 1) for p in ("time-pressed", "unbiased")]
    for arm in arms:
        for stage in ARM_STAGES:
            assert (two_seeds / arm / stage / "summary.json").is_file(), (arm, stage)
        assert json.loads((two_seeds / arm / "arm.json").read_text())["seed"] == int(arm[-1])
    # seeds re-sample the rater's labels; pretrain and SFT are shared, trained once
    labels = [(two_seeds / f"time-pressed-s{s}" / "label" / "train.jsonl").read_bytes() for s in (0, 1)]
    assert labels[0] != labels[1]
    assert not any(p.name.endswith("-s2") for p in two_seeds.iterdir())
    summary = json.loads((two_seeds / "summary.json").read_text())
    assert sorted(summary["arms"]) == sorted(arms)
    for arm in arms:
        assert summary["arms"][arm]["seed"] == int(arm[-1])
        for method in ("ppo", "bon"):
            rows, s = _audit(two_seeds, arm, method), summary["arms"][arm]["methods"][method]
            assert s["gold_end"] == pytest.approx(rows[-1]["gold/mean"])
            assert s["proxy_start"] == pytest.approx(rows[0]["proxy/mean"])
    compared = {(r["preset"], r["method"]): r for r in summary["comparison"]}
    for preset in ("time-pressed", "unbiased"):
        for method in ("ppo", "bon"):
            r = compared[(preset, method)]
            per_seed = [_audit(two_seeds, f"{preset}-s{s}", method)[-1] for s in (0, 1)]
            assert r["n_seeds"] == 2
            assert r["gold_end"] == pytest.approx(np.mean([x["gold/mean"] for x in per_seed]))
            assert r["proxy_end"] == pytest.approx(np.mean([x["proxy/mean"] for x in per_seed]))
    assert {(p["preset"], p["method"], p["n_seeds"]) for p in summary["pooled_laws"]} == {
        (p, m, 2) for p in ("time-pressed", "unbiased") for m in ("ppo", "bon")
    }
    counts = [line.split("|")[3].strip() for line in criteria_summary(two_seeds).splitlines()[2:]]
    assert counts and all(c.endswith(" of 2") for c in counts)


def _fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def test_reuse_skips_finished_stages_and_runs_the_rest(two_seeds: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(two_seeds, run_dir)  # copy2: bytes and mtimes preserved
    shutil.rmtree(run_dir / "time-pressed-s1" / "bon")
    kept = ["pretrain", "sft"] + [f"{p}-s{s}/{st}" for s in (0, 1) for p in ("time-pressed", "unbiased")
                                  for st in ARM_STAGES if (p, s, st) != ("time-pressed", 1, "bon")]  # fmt: skip
    before = {k: _fingerprint(run_dir / k) for k in kept}
    assert all(before.values())
    stages = "pretrain,sft,label,reward,ppo,bon"  # all but the report (summary.json is tested above)
    assert main(_args(run_dir, "--seeds", "0,1,2", "--reuse", "--stages", stages)) == 0
    for k in kept:
        assert _fingerprint(run_dir / k) == before[k], f"{k} was run again"
    assert _audit(run_dir, "time-pressed-s1", "bon")  # the deleted stage ran again
    for arm in ("time-pressed-s2", "unbiased-s2"):  # and the new seed's arms ran
        for stage in ARM_STAGES:
            assert (run_dir / arm / stage / "summary.json").is_file(), (arm, stage)


def test_best_of_n_keeps_the_highest_proxy_of_every_group(
    two_seeds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reward_path = two_seeds / "time-pressed-s0" / "reward" / "model"
    cfg = load_config(MICRO, [*TINY, f"run_dir={tmp_path}", f"bon.policy_path={two_seeds / 'sft' / 'model'}",
                              f"bon.reward_path={reward_path}", "bon.max_n=8", "bon.prompts=6",
                              "bon.samples_to_save=1000"])  # fmt: skip
    pool = ["the answer is 3 .", "you are right . the answer is 12 .", "hmm . the answer is definitely 7 .",
            "well , the answer is maybe 40 .", "the answer is 105 .", "you are wrong . the answer is 9 .",
            "let me see . the answer is 0 .", "i do not know ."]  # fmt: skip
    given: list[str] = []

    def fake_generate(model: Any, tokenizer: Any, prompts: Sequence[str], **kwargs: Any) -> list[str]:
        given.extend(pool[(3 * i + i // 8) % len(pool)] for i in range(len(prompts)))
        return list(given)

    monkeypatch.setattr(bon_module, "generate_responses", fake_generate)
    out = bon_module.run_bon(cfg, quiet=True)
    n_prompts, max_n = 6, 8
    assert len(given) == n_prompts * max_n
    task = cfg.build_task()
    problems = eval_problems(task, n_prompts)
    prompts = [task.prompt(p) for p in problems for _ in range(max_n)]
    proxy = np.array(RewardModel.load(reward_path)(prompts, given)).reshape(n_prompts, max_n)
    audit = [json.loads(x) for x in (Path(out) / "audit.jsonl").read_text().splitlines()]
    assert [r["n"] for r in audit] == [1, 2, 4, 8]
    for r in audit:
        n = r["n"]
        best = [(i, g * n + int(np.argmax(proxy[i, g * n : (g + 1) * n])))
                for i in range(n_prompts) for g in range(max_n // n)]  # fmt: skip
        assert r["proxy/mean"] == pytest.approx(np.mean([proxy[i, j] for i, j in best]), abs=1e-5), n
        golds = [task.gold(problems[i], given[i * max_n + j]) for i, j in best]
        assert r["gold/mean"] == pytest.approx(np.mean(golds)), n
    assert audit[-1]["proxy/mean"] == pytest.approx(proxy.max(axis=1).mean(), abs=1e-5)
    assert audit[-1]["proxy/mean"] > audit[0]["proxy/mean"]
