"""DPO family: each loss against hand-computed values; packing and log-probs; the trainers (DPO variants,
beta sweep, iterated DPO, MODPO) on the micro config; the reference cache; NaN abort.

Expected loss values are worked out by hand with plain ``math`` (never by calling the function under test).
Shared example: log π(y_w) = -5, log π(y_l) = -7, log π_ref(y_w) = -6, log π_ref(y_l) = -6.5, so
ρ_w = 1, ρ_l = -0.5, Δ = 1.5; with β = 0.5, β·Δ = 0.75.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rewardlab.cli import main
from rewardlab.config import DPOConfig, load_config
from rewardlab.losses import (
    chosen_nll_loss,
    dpo_sigmoid_loss,
    hinge_dpo_loss,
    ipo_loss,
    modpo_loss,
    robust_dpo_loss,
    simpo_loss,
)
from rewardlab.optimize.dpo import (
    PairExample,
    cached_reference_logps,
    collate_pairs,
    pair_logps,
    preference_loss,
)
from rewardlab.policies.models import ModelConfig, build_causal_lm
from rewardlab.policies.tokenizer import build_task_tokenizer
from rewardlab.runs import read_metrics
from rewardlab.tasks.arithmetic import TASK_WORDS
from rewardlab.utils import TrainingDivergedError

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs/micro.yaml"
ARM = "time-pressed-s0"


def _t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


PC, PR, RC, RR = _t(-5.0), _t(-7.0), _t(-6.0), _t(-6.5)
SP_075 = math.log1p(math.exp(-0.75))  # -logσ(0.75) = 0.386871...
SP_M075 = math.log1p(math.exp(0.75))  # -logσ(-0.75) = 1.136871...


# ------------------------------------------------------------------------------------------ losses
def test_dpo_sigmoid_loss_and_implicit_rewards():
    out = dpo_sigmoid_loss(PC, PR, RC, RR, beta=0.5)
    assert out.losses.item() == pytest.approx(SP_075, abs=1e-12)
    assert out.losses.item() == pytest.approx(0.386871006, abs=1e-8)
    assert out.chosen_rewards.item() == pytest.approx(0.5)  # β·ρ_w
    assert out.rejected_rewards.item() == pytest.approx(-0.25)  # β·ρ_l


def test_conservative_dpo_is_label_smoothed_sigmoid():
    out = dpo_sigmoid_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1)
    assert out.losses.item() == pytest.approx(0.9 * SP_075 + 0.1 * SP_M075, abs=1e-12)  # 0.461871
    # cDPO has a finite minimiser at β·Δ* = log((1-ε)/ε): the gradient vanishes there.
    delta = math.log(0.9 / 0.1) / 0.5
    pc = _t(delta).requires_grad_()
    dpo_sigmoid_loss(pc, _t(0.0), _t(0.0), _t(0.0), beta=0.5, label_smoothing=0.1).losses.sum().backward()
    assert pc.grad.item() == pytest.approx(0.0, abs=1e-12)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    dpo_sigmoid_loss(pc, pr, RC, RR, beta=0.5).losses.sum().backward()
    # d/dpc -logσ(β(pc - pr - ...)) = -β·σ(-βΔ)
    expected = -0.5 / (1 + math.exp(0.75))
    assert pc.grad.item() == pytest.approx(expected, abs=1e-12)
    assert pr.grad.item() == pytest.approx(-expected, abs=1e-12)


def test_ipo_loss_paper_and_length_normalized():
    assert ipo_loss(PC, PR, RC, RR, beta=0.5).losses.item() == pytest.approx((1.5 - 1.0) ** 2)  # 0.25
    # lengths 2 and 4: h = 1/2 - (-0.5)/4 = 0.625; (0.625 - 1)² = 0.140625
    out = ipo_loss(PC, PR, RC, RR, beta=0.5, chosen_lengths=_t(2.0), rejected_lengths=_t(4.0))
    assert out.losses.item() == pytest.approx(0.140625)
    assert out.chosen_rewards.item() == pytest.approx(0.5)  # unnormalised β·ρ, as TRL logs it
    with pytest.raises(ValueError, match="both"):
        ipo_loss(PC, PR, RC, RR, chosen_lengths=_t(2.0))


def test_robust_dpo_loss():
    out = robust_dpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1)
    assert out.losses.item() == pytest.approx((0.9 * SP_075 - 0.1 * SP_M075) / 0.8, abs=1e-12)  # 0.293121
    assert robust_dpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.0).losses.item() == pytest.approx(
        SP_075
    )
    with pytest.raises(ValueError, match=r"0\.5"):
        robust_dpo_loss(PC, PR, RC, RR, label_smoothing=0.5)


def test_hinge_dpo_loss():
    assert hinge_dpo_loss(PC, PR, RC, RR, beta=0.5).losses.item() == pytest.approx(0.25)  # 1 - 0.75
    assert hinge_dpo_loss(PC, PR, RC, RR, beta=1.0).losses.item() == 0.0  # margin 1.5 > 1: satisfied
    pc = PC.clone().requires_grad_()
    hinge_dpo_loss(pc, PR, RC, RR, beta=1.0).losses.sum().backward()
    assert pc.grad.item() == 0.0


def test_simpo_loss_is_reference_free_and_length_normalized():
    # r_w = 2·(-6/3) = -4, r_l = 2·(-12/4) = -6; z = -4 + 6 - 1 = 1; -logσ(1) = 0.313262
    out = simpo_loss(_t(-6.0), _t(-12.0), _t(3.0), _t(4.0), beta=2.0, gamma=1.0)
    assert out.losses.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-12)
    assert out.chosen_rewards.item() == pytest.approx(-4.0)
    assert out.rejected_rewards.item() == pytest.approx(-6.0)
    smoothed = simpo_loss(_t(-6.0), _t(-12.0), _t(3.0), _t(4.0), beta=2.0, gamma=1.0, label_smoothing=0.2)
    assert smoothed.losses.item() == pytest.approx(0.8 * math.log1p(math.exp(-1)) + 0.2 * math.log1p(math.e))


def test_chosen_nll_per_token():
    assert chosen_nll_loss(_t(-6.0, -3.0), _t(3.0, 0.0)).tolist() == pytest.approx([2.0, 3.0])  # length ≥ 1


def test_modpo_loss_hand_computed_and_reduces_to_dpo():
    # w = 0.5, r₂(y_w) = -1, r₂(y_l) = -2: r₁_w = (0.5·1 + 0.5)/0.5 = 2, r₁_l = (-0.25 + 1)/0.5 = 1.5
    out = modpo_loss(PC, PR, RC, RR, _t(-1.0), _t(-2.0), beta=0.5, weight=0.5)
    assert out.losses.item() == pytest.approx(math.log1p(math.exp(-0.5)), abs=1e-12)  # 0.474077
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == pytest.approx((2.0, 1.5))
    dpo = modpo_loss(PC, PR, RC, RR, _t(-1.0), _t(-2.0), beta=0.5, weight=1.0)
    assert dpo.losses.item() == pytest.approx(SP_075, abs=1e-12)
    with pytest.raises(ValueError, match="weight"):
        modpo_loss(PC, PR, RC, RR, _t(0.0), _t(0.0), weight=0.0)


def test_losses_validate_shapes_and_beta():
    with pytest.raises(ValueError, match="same shape"):
        dpo_sigmoid_loss(_t(1.0, 2.0), _t(1.0), _t(1.0), _t(1.0))
    with pytest.raises(ValueError, match="beta"):
        hinge_dpo_loss(PC, PR, RC, RR, beta=0.0)


def test_preference_loss_dispatch_and_nll():
    lc, lr = _t(2.0), _t(4.0)
    cfg = DPOConfig(loss="ipo", beta=0.5)
    assert preference_loss(cfg, PC, PR, RC, RR, lc, lr).losses.item() == pytest.approx(0.140625)
    cfg = DPOConfig(loss="ipo", beta=0.5, ipo_length_normalize=False)
    assert preference_loss(cfg, PC, PR, RC, RR, lc, lr).losses.item() == pytest.approx(0.25)
    cfg = DPOConfig(loss="simpo", beta=2.0, simpo_gamma=1.0)
    assert preference_loss(
        cfg, _t(-6.0), _t(-12.0), None, None, _t(3.0), _t(4.0)
    ).losses.item() == pytest.approx(math.log1p(math.exp(-1.0)))
    with pytest.raises(Exception, match="reference"):
        preference_loss(DPOConfig(), PC, PR, None, None, lc, lr)


# -------------------------------------------------------------------------------- packing, log-probs
@pytest.fixture(scope="module")
def tiny():
    tok = build_task_tokenizer(TASK_WORDS)
    model = build_causal_lm(
        ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok, seed=3
    )
    return tok, model.eval()


def _examples(tok, n: int = 6) -> list[PairExample]:
    from rewardlab.policies.tokenizer import encode_examples

    prompts = [f"what is {i} + {i + 3} ?" + (" i think it is 5 ." if i % 2 else "") for i in range(n)]
    ch = encode_examples(tok, prompts, [f"the answer is {2 * i + 3} ." for i in range(n)])
    rj = encode_examples(
        tok, prompts, ["you are right . " * (i % 3) + "the answer is maybe 1 ." for i in range(n)]
    )
    return [PairExample(p, c, r) for (p, c), (_, r) in zip(ch, rj, strict=True)]


@torch.no_grad()
def test_shared_prompt_packing_equals_separate_sequences(tiny):
    tok, model = tiny
    ex = _examples(tok)
    pad = int(tok.pad_token_id)
    packed = pair_logps(model, collate_pairs(ex, pad, "shared_prompt"))
    separate = pair_logps(model, collate_pairs(ex, pad, "none"))
    # reference: each sequence alone, no padding, full logits
    direct = []
    for side in ("chosen", "rejected"):
        vals = []
        for e in ex:
            comp = getattr(e, side)
            ids = torch.tensor([e.prompt + comp])
            logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            tgt = ids[0, 1:]
            vals.append(logp[torch.arange(len(tgt)), tgt][len(e.prompt) - 1 :].sum())
        direct.append(torch.stack(vals))
    for got in (packed, separate):
        for g, d in zip(got, direct, strict=True):
            assert torch.allclose(g, d, atol=1e-4), (g, d)
    b = collate_pairs(ex, pad, "shared_prompt")
    assert b.input_ids.shape[0] == len(ex)  # one row per pair
    assert b.chosen_lengths.tolist() == [float(len(e.chosen)) for e in ex]


def test_reference_cache_hit_and_invalidation(tiny, tmp_path):
    tok, model = tiny
    ex = _examples(tok)
    pad = int(tok.pad_token_id)
    c1, r1, k1, hit1 = cached_reference_logps(model, ex, pad, tmp_path)
    c2, r2, k2, hit2 = cached_reference_logps(model, ex, pad, tmp_path)
    assert (hit1, hit2) == (False, True) and k1 == k2 and torch.equal(c1, c2) and torch.equal(r1, r2)
    _, _, k3, hit3 = cached_reference_logps(model, ex[:-1], pad, tmp_path)  # data changed
    assert not hit3 and k3 != k1
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)  # weights changed
    try:
        _, _, k4, hit4 = cached_reference_logps(model, ex, pad, tmp_path)
    finally:
        with torch.no_grad():
            next(model.parameters()).sub_(1e-3)
    assert not hit4 and k4 not in (k1, k3)
    assert len(list(tmp_path.glob("ref_logps-*.pt"))) == 3


# ------------------------------------------------------------------------------------ the trainers
@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """pretrain -> sft -> label -> reward on the micro config (one arm)."""
    run_dir = tmp_path_factory.mktemp("dpo-micro")
    args = ["run", str(MICRO), "--run-dir", str(run_dir), "--stages", "pretrain,sft,label,reward", "--quiet"]
    assert main([*args, "--set", "controls=[]", "--set", "threads=1"]) == 0
    return run_dir


FAST = ["threads=1", "dpo.steps=24", "dpo.eval_every=12", "dpo.eval_prompts=32", "dpo.eval_pairs=64",
        "dpo.max_new_tokens=12", "dpo.batch_size=32", "dpo.optim.lr=0.001", "dpo.optim.warmup_steps=0",
        "dpo.optim.schedule=constant", "dpo.samples_to_save=4"]  # fmt: skip


def _finite(rows: list[dict]) -> None:
    for r in rows:
        for k, v in r.items():
            if isinstance(v, float):
                assert math.isfinite(v), (k, v)


def _assert_learns(rows: list[dict], k: int = 4) -> None:
    train = [r for r in rows if "loss" in r]
    assert len(train) >= 2 * k
    first, last = train[:k], train[-k:]
    mean = lambda rs, key: sum(r[key] for r in rs) / len(rs)  # noqa: E731
    assert mean(last, "loss") < mean(first, "loss") - 1e-3, (mean(first, "loss"), mean(last, "loss"))
    assert mean(last, "rewards/margins") > mean(first, "rewards/margins") + 1e-3
    assert mean(last, "rewards/accuracies") >= mean(first, "rewards/accuracies")


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("dpo", ["dpo.loss=sigmoid", "dpo.beta=0.5"]),
        ("cdpo", ["dpo.loss=sigmoid", "dpo.beta=0.5", "dpo.label_smoothing=0.1", "dpo.sft_weight=0.1"]),
        ("ipo", ["dpo.loss=ipo", "dpo.beta=0.5"]),
        ("rdpo", ["dpo.loss=robust", "dpo.beta=0.5", "dpo.label_smoothing=0.1", "dpo.reference=live"]),
        ("hinge", ["dpo.loss=hinge", "dpo.beta=0.5", "dpo.packing=none"]),
        ("simpo", ["dpo.loss=simpo", "dpo.beta=2.0", "dpo.simpo_gamma=0.5"]),
    ],
)
def test_dpo_variants_learn_and_are_audited(micro, tmp_path, name, overrides):
    from rewardlab.pipelines.dpo import run_dpo

    cfg = load_config(
        MICRO, [f"run_dir={micro}", *FAST, f"dpo.name={name}", f"dpo.cache_dir={tmp_path}", *overrides]
    )
    out = run_dpo(cfg, quiet=True)
    d = micro / ARM / name
    assert out == d / "model" and (d / "model" / "model.safetensors").is_file()
    rows = read_metrics(d)
    _finite(rows)
    _assert_learns(rows)
    names = set().union(*rows)
    trl_names = {"loss", "grad_norm", "learning_rate", "rewards/chosen", "rewards/rejected", "rewards/margins",
                 "rewards/accuracies", "logps/chosen", "logps/rejected"}  # fmt: skip
    assert trl_names <= names
    assert ("nll_loss" in names) == (name == "cdpo")
    audit = [json.loads(x) for x in (d / "audit.jsonl").read_text().splitlines()]
    assert [r["step"] for r in audit] == [0, 12, 24]
    for r in audit:
        assert {
            "proxy/mean",
            "gold/mean",
            "kl/k1",
            "behavior/sycophancy_rate",
            "implicit/accuracy_rater",
        } <= set(r)
        assert 0.0 <= r["implicit/accuracy_rater"] <= 1.0
    _finite(audit)
    summary = json.loads((d / "summary.json").read_text())
    assert summary["train"]["pairs_per_second"] > 0 and summary["end"]["step"] == 24
    if name != "simpo":  # the implicit reward starts at 0 for every pair (policy = reference)
        assert audit[0]["implicit/margin"] == pytest.approx(0.0, abs=1e-5)
        assert audit[0]["implicit/accuracy_rater"] == 0.0  # every pair a tie, as TRL's rewards/accuracies
        assert audit[-1]["implicit/margin"] != pytest.approx(0.0, abs=1e-5)
    assert (d / "samples" / "step_24.jsonl").is_file()


def test_reference_cache_reused_across_runs_and_invalidated_by_data(micro, tmp_path):
    from rewardlab.feedback.records import load_comparisons, save_comparisons
    from rewardlab.pipelines.dpo import run_dpo

    base = [f"run_dir={micro}", *FAST, "dpo.steps=2", "dpo.eval_every=100", f"dpo.cache_dir={tmp_path}"]
    caches = []
    for name in ("c1", "c2"):
        run_dpo(load_config(MICRO, [*base, f"dpo.name={name}"]), quiet=True)
        caches.append(json.loads((micro / ARM / name / "summary.json").read_text())["reference_cache"])
    assert caches[0]["train"]["hit"] is False and caches[1]["train"]["hit"] is True
    assert caches[0]["train"]["key"] == caches[1]["train"]["key"]
    subset = tmp_path / "subset.jsonl"
    save_comparisons(subset, load_comparisons(micro / ARM / "label" / "train.jsonl")[:-5])
    run_dpo(load_config(MICRO, [*base, "dpo.name=c3", f"dpo.data_path={subset}"]), quiet=True)
    c3 = json.loads((micro / ARM / "c3" / "summary.json").read_text())["reference_cache"]
    assert c3["train"]["hit"] is False and c3["train"]["key"] != caches[0]["train"]["key"]
    assert c3["eval"]["hit"] is True  # the held-out pairs did not change


def test_cli_beta_sweep_writes_one_folder_per_beta_and_the_report_sees_them(micro, tmp_path):
    from rewardlab.report.build import load_arms

    sets = [x for s in [*FAST, "dpo.steps=6", "dpo.eval_every=3", f"dpo.cache_dir={tmp_path}",
                        "dpo.beta_sweep=[0.1,0.5]"] for x in ("--set", s)]  # fmt: skip
    assert main(["dpo", str(MICRO), "--run-dir", str(micro), "--quiet", *sets]) == 0
    arms = [a for a in load_arms(micro) if a.name == ARM]
    assert {"dpo-b0.1", "dpo-b0.5"} <= set(arms[0].methods)
    assert all(arms[0].methods[m].kind != "bon" for m in ("dpo-b0.1", "dpo-b0.5"))
    for beta in ("0.1", "0.5"):
        assert json.loads((micro / ARM / f"dpo-b{beta}" / "audit.jsonl").read_text().splitlines()[-1])[
            "beta"
        ] == pytest.approx(float(beta))


def test_iterated_dpo_rounds(micro, tmp_path):
    from rewardlab.pipelines.dpo import run_iterative_dpo

    cfg = load_config(MICRO, [f"run_dir={micro}", *FAST, "iterative_dpo.rounds=2", "iterative_dpo.prompts_per_round=96",
                              "iterative_dpo.steps_per_round=10", "iterative_dpo.max_new_tokens=12",
                              "iterative_dpo.reference=previous"])  # fmt: skip
    run_iterative_dpo(cfg, quiet=True)
    d = micro / ARM / "dpo-iter"
    audit = [json.loads(x) for x in (d / "audit.jsonl").read_text().splitlines()]
    assert [(r["step"], r["round"]) for r in audit] == [(0, 0), (10, 1), (20, 2)]
    _finite(audit)
    rows = read_metrics(d)
    _finite(rows)
    for rnd in (1, 2):
        _assert_learns([r for r in rows if r.get("round") == rnd and "loss" in r], k=3)
        assert (d / "rounds" / f"round_{rnd}.jsonl").is_file()
    summary = json.loads((d / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2] and summary["rounds"][0]["round/pairs"] > 0


def test_modpo_weightings_and_pareto_front(micro, tmp_path):
    from rewardlab.pipelines.dpo import pareto_front, run_modpo

    assert pareto_front([1, 2, 3, 2], [1.0, 2.0, 1.5, 0.5]) == [0, 1]
    cfg = load_config(MICRO, [f"run_dir={micro}", *FAST, "dpo.beta=0.5", "modpo.weights=[1.0,0.5]", "modpo.steps=16",
                              "dpo.eval_every=8", f"dpo.cache_dir={tmp_path}"])  # fmt: skip
    parent = run_modpo(cfg, quiet=True)
    assert parent == micro / ARM / "modpo"
    for w in ("1", "0.5"):
        rows = read_metrics(parent / f"w{w}")
        _finite(rows)
        _assert_learns(rows)
    res = json.loads((parent / "pareto.json").read_text())
    assert [p["weight"] for p in res["points"]] == [1.0, 0.5]
    assert all(math.isfinite(p["gold/mean"]) and math.isfinite(p["behavior/length"]) for p in res["points"])
    for key in ("gold/mean", "gold/accuracy", "proxy/mean"):
        assert res["pareto_front"][key] and set(res["pareto_front"][key]) <= {1.0, 0.5}
    assert (parent / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_nan_loss_aborts_with_the_step_and_writes_no_model(micro, tmp_path):
    from rewardlab.pipelines.dpo import run_dpo

    cfg = load_config(MICRO, [f"run_dir={micro}", *FAST, "dpo.name=nan", f"dpo.cache_dir={tmp_path}",
                              "dpo.optim.lr=1e30", "dpo.optim.max_grad_norm=1e30"])  # fmt: skip
    with pytest.raises(TrainingDivergedError, match=r"step \d+"):
        run_dpo(cfg, quiet=True)
    assert not (micro / ARM / "nan" / "model").exists()


# ------------------------------------------------------------------------ resume and data parallelism
def _rows_no_clock(path: Path) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [
        {k: v for k, v in r.items() if not k.startswith("time/") and k != "train/pairs_per_second"}
        for r in rows
    ]


def _weights(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(d / "model.safetensors"))


RESUME_CASES = {
    # command, stage folder, overrides, kill after N checkpointer steps (a checkpoint before, rows after)
    "dpo": ("dpo", "dpo", ["dpo.steps=10", "dpo.eval_every=4", "dpo.checkpoint_every=4"], 6),
    "dpo-iter": ("dpo-iter", "dpo-iter", ["iterative_dpo.rounds=3", "iterative_dpo.prompts_per_round=48",
                                          "iterative_dpo.steps_per_round=4", "iterative_dpo.max_new_tokens=12",
                                          "iterative_dpo.reference=previous"], 2),
}  # fmt: skip


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_sigkill_then_resume_matches_uninterrupted_run(micro, tmp_path, case):
    import os
    import shutil
    import signal
    import subprocess
    import sys

    from rewardlab.checkpoint import KILL_ENV

    command, stage, overrides, kill_after = RESUME_CASES[case]
    sets = [x for kv in [*FAST, *overrides] for x in ("--set", kv)]
    dirs = {}
    for name in ("uninterrupted", "killed"):
        dirs[name] = tmp_path / name
        shutil.copytree(
            micro, dirs[name], ignore=shutil.ignore_patterns("dpo*", "modpo", "cache", "c1", "c2", "c3")
        )
    assert main([command, str(MICRO), "--run-dir", str(dirs["uninterrupted"]), "--quiet", *sets]) == 0
    cmd = [
        sys.executable,
        "-m",
        "rewardlab.cli",
        command,
        str(MICRO),
        "--run-dir",
        str(dirs["killed"]),
        "--quiet",
    ]
    env = {**os.environ, KILL_ENV: str(kill_after), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*cmd, *sets], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ref, out = dirs["uninterrupted"] / ARM / stage, dirs["killed"] / ARM / stage
    from rewardlab.runs import partial_dir

    assert (partial_dir(out) / "checkpoint").is_dir() and not out.exists()  # killed: only <stage>.partial
    assert main([*cmd[3:], "--resume", *sets]) == 0
    assert "resumed from" in (out / "run.log").read_text()
    for name in ("metrics.jsonl", "audit.jsonl"):
        assert _rows_no_clock(out / name) == _rows_no_clock(ref / name), name
    w_ref, w_res = _weights(ref / "model"), _weights(out / "model")
    assert w_ref.keys() == w_res.keys() and all(torch.equal(w_ref[k], w_res[k]) for k in w_ref)


@pytest.mark.slow
def test_two_processes_give_the_single_process_trajectory(micro, tmp_path):
    """torchrun --nproc_per_node 2 (gloo): each process trains on half of every global batch."""
    import os
    import shutil
    import subprocess
    import sys

    sets = [
        x for kv in [*FAST, "dpo.steps=8", "dpo.eval_every=4", "dpo.sft_weight=0.1"] for x in ("--set", kv)
    ]
    args = ["dpo", str(MICRO), "--quiet", *sets]
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        shutil.copytree(micro, d, ignore=shutil.ignore_patterns("dpo*", "modpo", "cache", "c1", "c2", "c3"))
    assert main([*args, "--run-dir", str(one)]) == 0
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "rewardlab.cli",
        *args,
        "--run-dir",
        str(two),
    ]
    proc = subprocess.run(
        cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a, b = one / ARM / "dpo", two / ARM / "dpo"
    assert json.loads((b / "summary.json").read_text())["num_processes"] == 2
    for name in ("metrics.jsonl", "audit.jsonl"):
        ra, rb = _rows_no_clock(a / name), _rows_no_clock(b / name)
        assert [r["step"] for r in ra] == [r["step"] for r in rb]
        for x, y in zip(ra, rb, strict=True):
            assert x.keys() == y.keys()
            for k, v in x.items():
                if k.endswith(
                    "accuracies"
                ):  # a count of margins > 0: a pair within rounding of a tie may flip
                    assert abs(v - y[k]) <= 1 / 32 + 1e-9, (name, x["step"], k, v, y[k])  # one pair of 32
                elif isinstance(v, float):
                    assert math.isclose(v, y[k], rel_tol=1e-4, abs_tol=2e-5), (name, x["step"], k, v, y[k])
                else:
                    assert v == y[k], (name, k)
    files = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(a) == files(b)
