"""Offline RLHF (filtered MLE, RWR, reward-conditioned, A-LoL) and pretraining with human feedback.

Pure weight/loss functions against hand-computed values; control tokens; the dataset cache; each
trainer on the micro config (audit rows, finite metrics, the loss falls) and, against a crafted easy
proxy (shorter is better), the trained policy's samples beat the SFT policy's.
"""

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rewardlab.checkpoint import KILL_ENV
from rewardlab.cli import main
from rewardlab.config import OptimConfig, load_config
from rewardlab.losses import (
    alol_importance_weights,
    alol_loss,
    reward_quantile_bins,
    rwr_weights,
    top_quantile_mask,
    weighted_nll,
)
from rewardlab.optimize.lm import collate_lm, lm_loss, train_lm
from rewardlab.optimize.offline import (
    BAD,
    GOOD,
    LMBatches,
    add_control_tokens,
    alol_objective,
    build_offline_dataset,
    completion_logprobs,
    condition_prompt,
    evaluate_conditions,
    evaluate_loss,
    fingerprint,
    load_offline_dataset,
    load_policy,
    phf_batch,
    phf_threshold,
    sample_completions,
    save_offline_dataset,
    token_logprobs,
    train_offline,
    weighted_loss,
)
from rewardlab.pipelines.common import eval_problems
from rewardlab.policies.models import ModelConfig, build_causal_lm, save_model
from rewardlab.policies.sampling import encode_prompts, sample
from rewardlab.policies.tokenizer import build_task_tokenizer, encode_examples, encode_prompt
from rewardlab.runs import Run, read_metrics
from rewardlab.tasks.arithmetic import TASK_WORDS, ArithmeticTask, CorpusConfig
from rewardlab.training import Cadence

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs/micro.yaml"
ARM = "time-pressed-s0"


def _rows(path: Path) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    for r in rows:
        for k, v in r.items():
            if isinstance(v, float):
                assert math.isfinite(v), (path, k, v)
    return rows


# ---------------------------------------------------------------------------------- pure functions
def test_weighted_nll_hand_computed_and_equal_to_sft_loss_with_unit_weights():
    logp = torch.tensor([[-1.0, -2.0, 5.0], [-3.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # (1*(1+2) + 2*3) / 3 tokens
    assert weighted_nll(logp, mask, torch.tensor([1.0, 2.0])).item() == pytest.approx(3.0)
    tw = torch.tensor([[0.5, 1.0, 9.0], [2.0, 9.0, 9.0]])
    # (1*(0.5*1 + 2) + 2*(2*3)) / 3
    assert weighted_nll(logp, mask, torch.tensor([1.0, 2.0]), tw).item() == pytest.approx(14.5 / 3)
    tok = build_task_tokenizer(TASK_WORDS)
    model = build_causal_lm(ModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32), tok)
    batch = collate_lm(encode_examples(tok, ["what is 1 + 2 ?", "what is 3 - 1 ?"],
                                       ["the answer is 3 .", "hmm . the answer is 2 ."]), 0, True)  # fmt: skip
    logp, m = completion_logprobs(model, batch)
    ours = weighted_nll(logp, m, torch.ones(2))
    assert ours.item() == pytest.approx(lm_loss(model, batch)[0].item(), rel=1e-5)


def test_top_quantile_mask_global_and_per_prompt():
    r = torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8])
    assert top_quantile_mask(r, 0.25).tolist() == [False] * 6 + [True, True]
    assert top_quantile_mask(r, 1.0).all()
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    shuffled = torch.tensor([4.0, 1, 3, 2, -5, -1, -7, -6])
    # per prompt: the best of each group of 4, even though group 1 is worse than all of group 0
    assert top_quantile_mask(shuffled, 0.25, groups).tolist() == [True, False, False, False,
                                                                  False, True, False, False]  # fmt: skip
    ties = torch.tensor([0.0, 1, 1, 1])
    assert top_quantile_mask(ties, 0.25).tolist() == [False, True, True, True]
    with pytest.raises(ValueError):
        top_quantile_mask(r, 0.0)


def test_rwr_weights_normalized_clipped_and_stable():
    w = rwr_weights(torch.tensor([0.0, math.log(3.0)]), temperature=1.0)
    assert w.tolist() == pytest.approx([0.5, 1.5])
    w = rwr_weights(torch.tensor([0.0, math.log(3.0)]), temperature=1.0, max_weight=1.2)
    assert w.tolist() == pytest.approx([0.5, 1.2])
    # T = 2: exp(r/2) = [1, 3] for r = [0, 2 ln 3]
    assert rwr_weights(torch.tensor([0.0, 2 * math.log(3.0)]), 2.0).tolist() == pytest.approx([0.5, 1.5])
    big = rwr_weights(torch.tensor([1000.0, 0.0]), 1.0)
    assert torch.isfinite(big).all() and big.tolist() == pytest.approx([2.0, 0.0])
    assert rwr_weights(torch.tensor([3.0, -1.0, 0.5]), 1e6).tolist() == pytest.approx([1.0] * 3, rel=1e-5)


def test_reward_quantile_bins():
    bins, edges = reward_quantile_bins(torch.arange(8.0), 4)
    assert edges.tolist() == pytest.approx([1.75, 3.5, 5.25])
    assert bins.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    bins, _ = reward_quantile_bins(torch.tensor([5.0, -1.0, 2.0, 9.0]), 2)
    assert bins.tolist() == [1, 0, 0, 1]


def test_alol_importance_weights_sequence_and_token_clipping():
    ref = torch.zeros(3, 2)
    logp = torch.tensor([[math.log(1.5), 0.0], [math.log(3.0), 0.0], [math.log(0.05), 5.0]])
    mask = torch.tensor([[1, 1], [1, 1], [1, 0]])
    seq = alol_importance_weights(logp, ref, mask, clip=0.9)
    assert seq.tolist() == pytest.approx([1.5, 1.9, 0.1])  # 3 -> 1 + 0.9, 0.05 -> 1 - 0.9; masked 5.0 ignored
    tok = alol_importance_weights(logp, ref, mask, clip=0.2, per_token=True)
    torch.testing.assert_close(tok, torch.tensor([[1.2, 1.0], [1.2, 1.0], [0.8, 0.0]]))


def test_alol_loss_drops_negative_advantages_and_weights_by_advantage_and_ratio():
    ref = torch.tensor([[-1.0, -1.0], [-2.0, -2.0]])
    logp = torch.tensor([[-1.0 + math.log(1.5), -1.0], [-2.0, -2.0]], requires_grad=True)
    mask = torch.ones(2, 2)
    adv = torch.tensor([2.0, -1.0])
    loss, stats = alol_loss(logp, ref, mask, adv, clip=0.9, variant="alol")
    nll0 = -(logp[0].sum()).item()
    assert loss.item() == pytest.approx(2.0 * 1.5 * nll0 / 4)  # second sample dropped; 4 tokens in all
    loss.backward()
    # the importance weight is a constant: d loss / d logp = -A * rho / N on kept tokens, 0 on dropped
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.75, -0.75], [0.0, 0.0]]))
    assert stats["alol/positive_fraction"].item() == pytest.approx(0.5)
    assert stats["alol/importance_weight"].item() == pytest.approx(1.25)  # mean of [1.5, 1.0]
    free, _ = alol_loss(logp.detach(), None, mask, adv, variant="ref_free")
    assert free.item() == pytest.approx(2.0 * nll0 / 4)
    per_tok, s = alol_loss(logp.detach(), ref, mask, adv, clip=0.2, variant="alol_seq")
    assert per_tok.item() == pytest.approx(2.0 * (1.2 * -logp[0, 0].item() + 1.0 * 1.0) / 4)
    assert s["alol/clipfrac"].item() == pytest.approx(0.25)
    with pytest.raises(ValueError):
        alol_loss(logp.detach(), None, mask, adv, variant="alol")


# ------------------------------------------------------------------------------- control tokens, data
def _tiny(seed: int = 0):
    tok = build_task_tokenizer(TASK_WORDS)
    return tok, build_causal_lm(ModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32),
                                tok, seed=seed)  # fmt: skip


def test_control_tokens_keep_ids_are_read_never_emitted_and_survive_save(tmp_path):
    tok, model = _tiny()
    before = dict(tok.get_vocab())
    ids = add_control_tokens(tok, model, ["<r0>", "<r1>"], seed=0)
    assert ids == [len(before), len(before) + 1]
    assert all(tok.get_vocab()[t] == i for t, i in before.items())
    emb = model.get_input_embeddings().weight
    assert not torch.equal(emb[ids[0]], emb[ids[1]])  # distinct inputs from the start
    prompt = condition_prompt("what is 1 + 2 ?", "<r1>")
    assert encode_prompt(tok, prompt)[1] == ids[1]
    assert condition_prompt([{"role": "user", "content": "hi"}], "<r0>") == [
        {"role": "user", "content": "<r0> hi"}
    ]
    logits = model(input_ids=torch.tensor([encode_prompt(tok, prompt)])).logits
    assert torch.isneginf(logits[..., ids]).all() and torch.isfinite(logits[..., : ids[0]]).all()
    save_model(model, tok, tmp_path / "m")
    tok2, model2 = load_policy(tmp_path / "m")
    logits2 = model2(input_ids=torch.tensor([encode_prompt(tok2, prompt)])).logits
    assert torch.isneginf(logits2[..., ids]).all()
    assert torch.allclose(logits2[..., : ids[0]], logits[..., : ids[0]], atol=1e-5)
    # a hot sampler draws every other token, never a control token (the sampler sees the hook)
    ids_b, mask_b = encode_prompts(tok2, [prompt] * 64)
    out = sample(model2, ids_b, mask_b, max_new_tokens=8, eos_token_id=int(tok2.eos_token_id),
                 pad_token_id=int(tok2.pad_token_id), temperature=5.0, generator=torch.Generator().manual_seed(0))  # fmt: skip
    drawn = set(out.response_ids[out.response_mask.bool()].tolist())
    assert len(drawn) > 30 and not drawn & set(ids)


def test_dataset_groups_values_and_cache_key(tmp_path):
    pairs = [("p1", "a b", "policy"), ("p2", "a", "policy"), ("p1", "a b c", "labels")]
    calls = []

    def values(prompts):
        calls.append(list(prompts))
        return [10.0 * (i + 1) for i in range(len(prompts))]

    data = build_offline_dataset(pairs, lambda ps, cs: [-len(c.split()) for c in cs], values)
    assert calls == [["p1", "p2"]]
    assert [(d.group, d.proxy, d.value) for d in data] == [(0, -2.0, 10.0), (1, -1.0, 20.0), (0, -3.0, 10.0)]
    assert data[2].advantage == -13.0 and data[2].source == "labels"
    save_offline_dataset(tmp_path, data, "k1", {})
    assert load_offline_dataset(tmp_path, "k1") == data
    assert load_offline_dataset(tmp_path, "other") is None
    (tmp_path / "f.bin").write_bytes(b"x")
    key = fingerprint(tmp_path / "f.bin", 1, "s")
    assert key == fingerprint(tmp_path / "f.bin", 1, "s") != fingerprint(tmp_path / "f.bin", 2, "s")
    (tmp_path / "f.bin").write_bytes(b"y")
    assert fingerprint(tmp_path / "f.bin", 1, "s") != key


# ------------------------------------------------------------------------------------ micro recipes
@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """Pretrain, SFT, labels and a reward model for one arm of the micro config."""
    run_dir = tmp_path_factory.mktemp("offline")
    args = ["run", str(MICRO), "--run-dir", str(run_dir), "--stages", "pretrain,sft,label,reward",
            "--set", "controls=[]", "--set", "threads=1", "--quiet"]  # fmt: skip
    assert main(args) == 0
    return run_dir


@pytest.mark.parametrize("method", ["filtered-mle", "rwr", "reward-conditioned", "alol"])
def test_offline_recipe_audits_and_lowers_its_loss(micro, method):
    steps = ["--set", "offline.steps=16", "--set", "offline.eval_every=8"]
    assert main([method, str(MICRO), "--run-dir", str(micro), "--set", "threads=1", "--quiet", *steps]) == 0
    d = micro / ARM / method
    audit = _rows(d / "audit.jsonl")
    assert [r["step"] for r in audit] == [0, 8, 16]
    assert audit[0]["kl/k1"] == pytest.approx(0.0, abs=1e-4) or method == "reward-conditioned"
    assert {"proxy/mean", "gold/mean", "kl/k3", "behavior/sycophancy_rate", "eval/loss"} <= set(audit[0])
    metrics = read_metrics(d)
    train = [r for r in metrics if "train/loss" in r]
    assert len(train) == 16
    if method != "alol":  # A-LoL's surrogate grows with the importance weights; eval/loss is its measure
        last = train[-1]["train/epoch"]
        epoch_loss = [[r["train/loss"] for r in train if r["train/epoch"] == e] for e in (1, last)]
        assert last > 1 and sum(epoch_loss[1]) / len(epoch_loss[1]) < sum(epoch_loss[0]) / len(epoch_loss[0])
    evals = [r["eval/loss"] for r in metrics if "eval/loss" in r]
    assert evals[-1] < evals[0]
    summary = json.loads((d / "summary.json").read_text())
    assert summary["end"]["step"] == 16 and summary["data"]["samples"] == 256
    assert (d / "model" / "model.safetensors").is_file() and (d / "samples" / "step_16.jsonl").is_file()
    assert (micro / ARM / "offline-data" / "meta.json").is_file()


def test_same_seed_same_dataset_and_metrics(micro, tmp_path):
    paths = [
        f"offline.policy_path={micro / 'sft' / 'model'}",
        f"offline.reward_path={micro / ARM / 'reward' / 'model'}",
    ]
    args = ["--set", "threads=1", "--set", "offline.steps=4", "--set", "offline.eval_every=4", "--quiet"]
    for d in ("a", "b"):
        extra = [x for p in paths for x in ("--set", p)]
        assert main(["rwr", str(MICRO), "--run-dir", str(tmp_path / d), *args, *extra]) == 0

    def strip(rows):
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]

    a, b = (tmp_path / x / ARM for x in ("a", "b"))
    assert (a / "offline-data" / "data.jsonl").read_text() == (b / "offline-data" / "data.jsonl").read_text()
    assert strip(read_metrics(a / "rwr")) == strip(read_metrics(b / "rwr"))
    assert (a / "rwr" / "audit.jsonl").read_text() == (b / "rwr" / "audit.jsonl").read_text()


@pytest.mark.parametrize(
    "method",
    [
        "alol",
        pytest.param("reward-conditioned", marks=pytest.mark.slow),
        pytest.param("phf", marks=pytest.mark.slow),
    ],
)
def test_sigkill_then_resume_matches_uninterrupted_run(micro, tmp_path, method):
    """Killed after 11 of 16 steps (checkpoint at 8, metric rows after it), resumed: same metrics, audit, weights."""
    sets = ["--set", "threads=1", "--set", "offline.steps=16", "--set", "offline.eval_every=8",
            "--set", "offline.checkpoint_every=4", "--set", "offline.phf.steps=16",
            "--set", "offline.phf.checkpoint_every=4", "--set", "offline.phf.eval_every=8"]  # fmt: skip
    runs = {}
    for name in ("uninterrupted", "killed"):
        d = runs[name] = tmp_path / name
        shutil.copytree(
            micro,
            d,
            ignore=shutil.ignore_patterns("filtered-mle", "rwr", "reward-conditioned", "alol", "phf"),
        )
    assert main([method, str(MICRO), "--run-dir", str(runs["uninterrupted"]), "--quiet", *sets]) == 0
    cmd = [
        sys.executable,
        "-m",
        "rewardlab.cli",
        method,
        str(MICRO),
        "--run-dir",
        str(runs["killed"]),
        "--quiet",
        *sets,
    ]
    proc = subprocess.run(cmd, env={**os.environ, KILL_ENV: "11", "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    out = {k: d / ARM / method for k, d in runs.items()}
    from rewardlab.runs import partial_dir

    assert (partial_dir(out["killed"]) / "checkpoint").is_dir() and not out[
        "killed"
    ].exists()  # only <method>.partial
    assert main([method, str(MICRO), "--run-dir", str(runs["killed"]), "--quiet", "--resume", *sets]) == 0
    assert "resumed from" in (out["killed"] / "run.log").read_text()

    def rows(path):
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in _rows(path)]

    for f in ("metrics.jsonl", *(() if method == "phf" else ("audit.jsonl",))):
        assert rows(out["killed"] / f) == rows(out["uninterrupted"] / f), f
    w = [load_file(str(o / "model" / "model.safetensors")) for o in (out["uninterrupted"], out["killed"])]
    assert w[0].keys() == w[1].keys() and all(torch.equal(w[0][k], w[1][k]) for k in w[0])
    if method != "phf":
        summary = json.loads((out["killed"] / "summary.json").read_text())
        assert summary["start"]["step"] == 0 and summary["end"]["step"] == 16


def test_reward_conditioned_checkpoint_blocks_its_reward_tokens(micro):
    d = micro / ARM / "reward-conditioned" / "model"
    if not d.is_dir():
        assert main(["reward-conditioned", str(MICRO), "--run-dir", str(micro), "--set", "threads=1",
                     "--quiet"]) == 0  # fmt: skip
    tok, model = load_policy(d)
    ids = tok.convert_tokens_to_ids([f"<r{k}>" for k in range(4)])
    assert ids == list(range(len(tok) - 4, len(tok)))
    assert model.generation_config.suppress_tokens == ids
    logits = model(input_ids=torch.tensor([encode_prompt(tok, "<r3> what is 1 + 2 ?")])).logits
    assert torch.isneginf(logits[0, -1, ids]).all()


def test_dataset_is_cached_and_rebuilt_when_settings_change(micro):
    from rewardlab.pipelines.offline import offline_dataset
    from rewardlab.policies.models import load_causal_lm
    from rewardlab.rewards.model import RewardModel

    cfg = load_config(
        MICRO, [f"run_dir={micro}", "threads=1", "offline.prompts=8", "offline.value_samples=1"]
    )
    sft, rm_path = micro / "sft" / "model", micro / ARM / "reward" / "model"
    tok, ref, rm = load_policy(sft)[0], load_causal_lm(sft), RewardModel.load(rm_path)
    logs: list[str] = []
    first = offline_dataset(cfg, tok, ref, rm, sft, rm_path, logs.append)
    assert len(first) == 32 and "written" in logs[-1]
    again = offline_dataset(cfg, tok, ref, rm, sft, rm_path, logs.append)
    assert again == first and "reused" in logs[-1]
    cfg.offline.data = "both"
    both = offline_dataset(cfg, tok, ref, rm, sft, rm_path, logs.append)
    n_pairs = sum(1 for line in (micro / ARM / "label" / "train.jsonl").read_text().splitlines() if line)
    assert len(both) == 32 + 2 * n_pairs and {s.source for s in both} == {"policy", "labels"}


def test_phf_recipe_runs_and_reports_each_condition(micro):
    assert main(["phf", str(MICRO), "--run-dir", str(micro), "--set", "threads=1", "--quiet"]) == 0
    d = micro / ARM / "phf"
    summary = json.loads((d / "summary.json").read_text())
    for c in ("good", "bad", "none", "mle_base"):
        assert math.isfinite(summary["final"][f"{c}/proxy/mean"])
    assert 0.3 < summary["good_fraction_seen"] < 0.7
    assert not (d / "audit.jsonl").exists()  # a base model: not on the gold-vs-KL figure
    _rows(d / "metrics.jsonl")


# ------------------------------------------------------------- trainers against a crafted easy proxy
def _shorter_is_better(prompts, completions):
    return [-float(len(c.split())) for c in completions]


def _policy_and_data(micro, n_prompts: int = 48):
    task = ArithmeticTask()
    tok, policy = load_policy(micro / "sft" / "model")
    _, ref = load_policy(micro / "sft" / "model")
    prompts = [p.text for p in task.sample_problems(n_prompts, seed=5)]
    comps = sample_completions(policy, tok, prompts, 4, temperature=1.0, max_new_tokens=12,
                               generator=torch.Generator().manual_seed(1))  # fmt: skip
    pairs = [(prompts[i // 4], c, "policy") for i, c in enumerate(comps)]

    def values(ps):
        from rewardlab.optimize.offline import reference_values

        return reference_values(ref, tok, _shorter_is_better, ps, 2, temperature=1.0, max_new_tokens=12,
                                generator=torch.Generator().manual_seed(2))  # fmt: skip

    return task, tok, policy, ref, build_offline_dataset(pairs, _shorter_is_better, values)


def _mean_proxy(model, tok, task, prefix: str | None = None) -> float:
    problems = eval_problems(task, 64)
    prompts = [condition_prompt(p.text, prefix) if prefix else p.text for p in problems]
    comps = sample_completions(model, tok, prompts, 2, temperature=1.0, max_new_tokens=12,
                               generator=torch.Generator().manual_seed(3))  # fmt: skip
    return sum(_shorter_is_better(prompts, comps)) / len(comps)


def _train(tok, policy, examples, loss_fn, tmp_path, steps=30, lr=2e-3):
    run = Run(tmp_path / "run", "test", quiet=True)
    return train_offline(policy, LMBatches(examples, int(tok.pad_token_id), 32, 0), loss_fn,
                         OptimConfig(lr=lr, schedule="constant"), run, Cadence(steps))  # fmt: skip


@pytest.mark.parametrize("method", ["filtered-mle", "rwr", "alol"])
def test_trainer_raises_a_crafted_proxy_over_sft(micro, tmp_path, method):
    torch.manual_seed(0)
    task, tok, policy, ref, data = _policy_and_data(micro)
    before = _mean_proxy(policy, tok, task)
    rewards = torch.tensor([d.proxy for d in data])
    if method == "filtered-mle":
        keep = top_quantile_mask(rewards, 0.25).tolist()
        kept = [d for d, k in zip(data, keep) if k]
        loss_fn = weighted_loss(torch.ones(len(kept)))
    elif method == "rwr":
        kept, loss_fn = data, weighted_loss(rwr_weights(rewards, 0.5, 20.0))
    else:
        kept = [d for d in data if d.advantage > 0]
        ex = encode_examples(tok, [d.prompt for d in kept], [d.completion for d in kept])
        ref_logps = token_logprobs(ref, ex, int(tok.pad_token_id))
        loss_fn = alol_objective(torch.tensor([d.advantage for d in kept]), ref_logps, 0.9, "alol")
    examples = encode_examples(tok, [d.prompt for d in kept], [d.completion for d in kept])
    # the objective's likelihood term: for A-LoL the A⁺-weighted NLL (its surrogate grows with the ratio)
    measure = weighted_loss(torch.tensor([d.advantage for d in kept])) if method == "alol" else loss_fn
    start = evaluate_loss(policy, examples, measure, int(tok.pad_token_id))
    policy = _train(tok, policy, examples, loss_fn, tmp_path)
    assert evaluate_loss(policy, examples, measure, int(tok.pad_token_id)) < start
    after = _mean_proxy(policy, tok, task)
    assert after > before + 1.0, (before, after)


def test_reward_conditioned_top_token_beats_bottom_token_on_a_crafted_proxy(micro, tmp_path):
    task, tok, policy, _, data = _policy_and_data(micro)
    bins, _ = reward_quantile_bins(torch.tensor([d.proxy for d in data]), 2)
    add_control_tokens(tok, policy, ["<r0>", "<r1>"], seed=0)
    examples = encode_examples(tok, [condition_prompt(d.prompt, f"<r{int(b)}>") for d, b in zip(data, bins)],
                               [d.completion for d in data])  # fmt: skip
    # a new token is read only after some training (measured here: a margin of ~0.5 word at 40 steps, ~2.5 at 80)
    policy = _train(
        tok, policy, examples, weighted_loss(torch.ones(len(examples))), tmp_path, steps=100, lr=3e-3
    )
    top, bottom = _mean_proxy(policy, tok, task, "<r1>"), _mean_proxy(policy, tok, task, "<r0>")
    assert top > bottom + 1.0, (top, bottom)


def test_phf_conditioned_on_good_scores_higher_than_bad_and_unconditioned(tmp_path):
    """Conditional training from scratch; documents tagged by a crafted score (shorter is better)."""
    task = ArithmeticTask()
    tok = build_task_tokenizer(TASK_WORDS)
    model = build_causal_lm(ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok)
    add_control_tokens(tok, model, [GOOD, BAD], seed=0)
    corpus = task.corpus(CorpusConfig().model_dump())
    threshold = phf_threshold(task, _shorter_is_better, corpus, 512, 0.5, seed=1)
    batch, share = phf_batch(task, tok, _shorter_is_better, corpus, batch_size=64, threshold=threshold,
                             rng=random.Random(0))  # fmt: skip
    assert 0.25 < share < 0.75
    control = tok.convert_tokens_to_ids([GOOD, BAD])
    assert torch.isin(batch["input_ids"], torch.tensor(control)).any(dim=1).all()  # every document is tagged
    assert not torch.isin(batch["labels"], torch.tensor(control)).any()  # and the tag is never a target

    def next_batch(step):
        return phf_batch(task, tok, _shorter_is_better, corpus, batch_size=64, threshold=threshold,
                         rng=random.Random(100 + step))[0]  # fmt: skip

    run = Run(tmp_path / "phf", "phf", quiet=True)
    model = train_lm(model, next_batch, OptimConfig(lr=1e-2, schedule="constant"), run, Cadence(80))
    m = evaluate_conditions(model, tok, task, eval_problems(task, 64), _shorter_is_better,
                            {"good": GOOD, "bad": BAD, "none": None}, max_new_tokens=16, seed=0)  # fmt: skip
    good, bad, none = (m[f"{c}/proxy/mean"] for c in ("good", "bad", "none"))
    assert good > bad + 2.0 and good > none + 1.0, (good, bad, none)
