"""PPO/RLOO/GRPO trainer pieces on a tiny model with a crafted proxy."""

import pytest
import torch

from rewardlab.config import PPOConfig
from rewardlab.optimize.ppo import (
    Actors,
    SharedValueHead,
    ValueModel,
    apply_missing_eos,
    make_rollout,
    ppo_update,
    rollout_metrics,
)
from rewardlab.policies.models import ModelConfig, build_causal_lm
from rewardlab.policies.tokenizer import build_task_tokenizer
from rewardlab.rewards.model import RewardScores
from rewardlab.tasks.arithmetic import TASK_WORDS
from rewardlab.training import make_optimizer

TOK = build_task_tokenizer(TASK_WORDS)
PROMPTS = ["what is 1 + 2 ?", "what is 3 + 4 ? i think it is 8 ."]


class WordProxy:
    """A crafted proxy: +1 for each occurrence of `word` (normalized units), so PPO has a clear target."""

    alpha = 1.0

    def __init__(self, word: str) -> None:
        self.word = word

    def score(self, prompts, completions):
        s = torch.tensor([float(c.split().count(self.word)) for c in completions])
        return RewardScores(mean=s, std=torch.zeros_like(s), members=s[None])

    def __call__(self, prompts, completions):
        return self.score(prompts, completions).mean.tolist()


def tiny_policy(seed=0):
    return build_causal_lm(
        ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), TOK, seed=seed
    )


def cfg(**kw):
    base = dict(max_new_tokens=6, samples_per_prompt=4, prompts_per_step=2, minibatches=2, ppo_epochs=2)
    base.update(kw)
    return PPOConfig(**base)


def count_calls(monkeypatch, module, name):
    """Count the calls of ``module.name`` (``calls["n"]``); returns the counter and the real function."""
    calls = {"n": 0}
    real = getattr(module, name)

    def counted(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(module, name, counted)
    return calls, real


def count_policy_forwards(monkeypatch):
    """Count the calls of ``ppo.policy_forward``; returns the counter and the real function."""
    from rewardlab.optimize import ppo

    return count_calls(monkeypatch, ppo, "policy_forward")


@pytest.mark.parametrize("advantage", ["gae", "rloo", "grpo"])
def test_rollout_rewards_structure(advantage):
    c = cfg(advantage=advantage, kl_coef=0.1)
    policy, ref = tiny_policy(0), tiny_policy(1)
    critic = ValueModel(tiny_policy(2).model) if advantage == "gae" else None
    prompts = [p for p in PROMPTS for _ in range(c.samples_per_prompt)]
    ro = make_rollout(
        Actors(policy, ref, critic, WordProxy("the"), TOK), prompts, c, 0.1, torch.Generator().manual_seed(0)
    )
    # the sequence's rewards sum to score - beta * sum_t k1_t
    expected = ro.scores - 0.1 * (ro.kl["k1"] * ro.mask).sum(1)
    assert torch.allclose((ro.rewards * ro.mask).sum(1), expected, atol=1e-5)
    assert torch.all(ro.rewards[ro.mask == 0] == 0)
    # k1 is logp - ref_logp on valid tokens
    assert torch.allclose(ro.kl["k1"], (ro.logprobs - ro.ref_logprobs) * ro.mask, atol=1e-6)
    assert torch.all(ro.kl["k3"] >= -1e-7)
    if advantage != "gae":
        # sequence-level advantages: constant over each response's tokens
        for i in range(len(prompts)):
            a = ro.advantages[i][ro.mask[i] > 0]
            assert torch.allclose(a, a[0].expand_as(a))
    if advantage == "rloo":
        seq = torch.stack([ro.advantages[i][ro.mask[i] > 0][0] for i in range(len(prompts))])
        assert torch.allclose(seq.view(2, -1).sum(1), torch.zeros(2), atol=1e-5)
    m = rollout_metrics(ro, c, 0.1)
    assert m["objective/rlhf_reward"] == pytest.approx(
        m["objective/scores"] + m["objective/non_score_reward"], abs=1e-5
    )
    assert m["kl/k1"] == pytest.approx(m["objective/kl"])


def test_missing_eos_rules():
    s = torch.tensor([1.0, 2.0])
    fin = torch.tensor([True, False])
    assert apply_missing_eos(s, fin, cfg(missing_eos="penalty", missing_eos_penalty=1.5)).tolist() == [
        1.0,
        0.5,
    ]
    assert apply_missing_eos(s, fin, cfg(missing_eos="replace", missing_eos_score=-3)).tolist() == [1.0, -3.0]
    assert apply_missing_eos(s, fin, cfg(missing_eos="none")).tolist() == [1.0, 2.0]


def test_ppo_identical_policy_and_reference_has_zero_kl():
    c = cfg(advantage="rloo")
    policy = tiny_policy(0)
    prompts = [p for p in PROMPTS for _ in range(c.samples_per_prompt)]
    ro = make_rollout(
        Actors(policy, policy, None, WordProxy("the"), TOK), prompts, c, 0.1, torch.Generator().manual_seed(0)
    )
    assert torch.all(ro.kl["k1"].abs() < 1e-5)


@pytest.mark.parametrize(
    ("advantage", "value_model"), [("gae", "separate"), ("gae", "shared"), ("rloo", None), ("grpo", None)]
)
def test_training_raises_the_proxy(advantage, value_model):
    torch.manual_seed(0)
    c = cfg(
        advantage=advantage,
        kl_coef=0.0,
        optim={"lr": 3e-3, "schedule": "constant"},
        samples_per_prompt=8,
        vf_coef=0.5,
    )
    policy, ref = tiny_policy(0), tiny_policy(0)
    critic = None
    if advantage == "gae":
        critic = ValueModel(tiny_policy(3).model) if value_model == "separate" else SharedValueHead(32)
    mods = torch.nn.ModuleList([policy, *([critic] if critic is not None else [])])
    opt, _ = make_optimizer(mods, c.optim, 100)
    proxy = WordProxy("right")
    gen = torch.Generator().manual_seed(0)
    prompts = [p for p in PROMPTS for _ in range(c.samples_per_prompt)]

    def mean_score():
        ro = make_rollout(
            Actors(policy, ref, critic, proxy, TOK), prompts * 4, c, 0.0, torch.Generator().manual_seed(123)
        )
        return float(ro.raw_scores.mean())

    before = mean_score()
    for step in range(25):
        ro = make_rollout(Actors(policy, ref, critic, proxy, TOK), prompts, c, 0.0, gen)
        stats = ppo_update(policy, critic, opt, ro, c, gen, step)
        assert all(v == v for v in stats.values())  # finite, no NaN
    after = mean_score()
    assert after > before + 0.3, (before, after)
    assert all(p.grad is None for p in mods.parameters())  # freed after the update, not held through sampling
    if advantage == "gae":
        assert "loss/value_avg" in stats


def test_one_update_per_rollout_skips_the_known_forwards(monkeypatch):
    """GRPO with one gradient step per rollout and no reference: the sampler's log-probs are the old
    ones, KL is 0, the ratio is exactly 1, and the update equals the one with a separate old forward."""
    from rewardlab.optimize import ppo

    c = cfg(advantage="grpo", ppo_epochs=1, minibatches=1, kl_coef=0.0)
    prompts = [p for p in PROMPTS for _ in range(c.samples_per_prompt)]
    calls, _ = count_policy_forwards(monkeypatch)
    monkeypatch.setattr(ppo, "old_logprobs_from_sampler", lambda _p: False)  # as under bf16-mixed
    updated = []
    for single in (True, False):
        monkeypatch.setattr(ppo, "single_update", lambda _c, s=single: s)
        policy = tiny_policy(0)
        opt, _ = make_optimizer(policy, c.optim, 1)
        calls["n"] = 0
        ro = make_rollout(
            Actors(policy, None, None, WordProxy("the"), TOK),
            prompts,
            c,
            0.0,
            torch.Generator().manual_seed(0),
        )
        assert calls["n"] == (0 if single else 1)  # no reference forward either way
        assert torch.equal(ro.kl["k1"], torch.zeros_like(ro.kl["k1"]))
        if single:
            assert torch.equal(ro.logprobs, ro.batch.logprobs)
        stats = ppo_update(policy, None, opt, ro, c, torch.Generator().manual_seed(1), 1)
        if single:
            assert stats["val/ratio"] == 1.0 and stats["val/ratio_var"] == 0.0
        updated.append(torch.cat([p.detach().flatten() for p in policy.parameters()]))
    torch.testing.assert_close(updated[0], updated[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("value_model", ["separate", "shared"])
def test_float32_rollout_takes_the_samplers_logprobs(monkeypatch, value_model):
    """Float32 PPO with several updates per rollout: the old log-probs are the sampler's (a separate critic runs
    alone for the values; a shared value head reads the final hidden states the sampler recorded), equal to a
    training forward's up to rounding, so the first minibatch's ratio is 1 within 1e-5 and the policy runs no
    rollout forward. Mixed precision rounds the training forward to bf16: there the policy forward runs."""
    from rewardlab.kernels.precision import set_training_compute

    c = cfg(advantage="gae", kl_coef=0.1)
    prompts = [p for p in PROMPTS for _ in range(c.samples_per_prompt)]
    calls, real_forward = count_policy_forwards(monkeypatch)
    policy, ref = tiny_policy(0), tiny_policy(1)
    critic = ValueModel(tiny_policy(3).model) if value_model == "separate" else SharedValueHead(32)
    if value_model == "shared":  # a trained head: values that differ by row and token
        torch.nn.init.normal_(critic.head.weight, std=1.0)
        torch.nn.init.constant_(critic.head.bias, 0.3)

    def rollout():
        calls["n"] = 0
        return make_rollout(Actors(policy, ref, critic, WordProxy("the"), TOK), prompts, c, 0.1,
                            torch.Generator().manual_seed(0))  # fmt: skip

    ro = rollout()
    assert calls["n"] == 1  # the reference's forward only
    assert ro.batch.hidden is None  # read for the values, not kept in the rollout
    forward = real_forward(policy, critic, ro.batch, c.temperature)
    mask = ro.mask
    torch.testing.assert_close(ro.logprobs, forward.logprobs * mask, atol=1e-5, rtol=0)
    assert float((forward.values.detach() * mask).abs().max()) > 0.1
    torch.testing.assert_close(ro.values, forward.values * mask, atol=1e-5, rtol=0)
    assert torch.equal(ro.logprobs, ro.batch.logprobs)
    ratio = torch.exp(forward.logprobs.detach() - ro.logprobs)[mask.bool()]
    assert float((ratio - 1).abs().max()) < 1e-5
    set_training_compute(torch.bfloat16)
    try:
        rollout()
        assert calls["n"] == 2  # policy (with the values) and reference
    finally:
        set_training_compute(None)


def _grouped_batch(policy):
    """Two prompts x 4 samples plus a prompt seen once, left-padded, responses of different lengths."""
    from rewardlab.policies.sampling import encode_prompts, sample

    prompts = [p for p in PROMPTS for _ in range(4)] + ["what is 5 + 5 ?"]
    ids, mask = encode_prompts(TOK, prompts, 8)
    batch = sample(policy, ids, mask, max_new_tokens=8, eos_token_id=TOK.eos_token_id,
                   pad_token_id=TOK.pad_token_id, generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert len(set(batch.response_lengths.tolist())) > 1 and batch.prompt_mask.eq(0).any()
    return batch


def test_pack_prompt_groups_layout():
    """One row per distinct prompt: the prompt once, then each response; a response sees the prompt and its own
    earlier tokens only; cols point at the position predicting each token; no repeated prompt: None."""
    from rewardlab.policies.packing import pack_prompt_groups

    b = _grouped_batch(tiny_policy(0))
    packed = pack_prompt_groups(b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask, 0)
    assert packed is not None and packed.input_ids.shape[0] == 3
    assert packed.rows.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    lengths = b.response_lengths.tolist()
    allowed = packed.attention_mask[:, 0] == 0
    for i in range(len(b)):
        r, p = int(packed.rows[i]), int(b.prompt_mask[i].sum())
        row = packed.input_ids[r]
        assert row[:p].tolist() == b.prompt_ids[i, -p:].tolist()
        n = lengths[i]
        start = int(packed.cols[i, 1]) if n > 1 else None
        assert int(packed.cols[i, 0]) == p - 1  # the first token is predicted at the prompt's last
        if start is not None:
            got = row[start : start + n].tolist()
            assert got == b.response_ids[i, :n].tolist()
            assert packed.position_ids[r, start : start + n].tolist() == list(range(p, p + n))
            own = set(range(start, start + n))
            sees = set(allowed[r, start + n - 1].nonzero().flatten().tolist())
            assert sees == set(range(p)) | own  # the prompt and itself, no other response
    read, at = packed.reads()  # the packed readout's positions: each row's samples' cols, one after another
    t = b.response_ids.shape[1]
    assert read.shape == (3, 4 * t) and at.shape == (len(b), t)
    assert torch.equal(read[packed.rows[:, None], at], packed.cols)
    assert at[:4, 0].tolist() == [0, t, 2 * t, 3 * t] and at[8, 0] == 0  # the lone sample's row, padded
    none = pack_prompt_groups(
        b.prompt_ids[3:5], b.prompt_mask[3:5], b.response_ids[3:5], b.response_mask[3:5], 0
    )
    assert none is None


def _forward_results(policy, critic, b, **kw):
    """policy_forward's masked log-probs, entropies and values and the policy's gradient of the log-probs' and
    values' sum."""
    from rewardlab.optimize import ppo as ppo_mod

    m = b.response_mask.float()
    policy.zero_grad(set_to_none=True)
    out = ppo_mod.policy_forward(policy, critic, b, 0.7, entropy=True, **kw)
    assert out.entropy is not None and not out.entropy.requires_grad  # a statistic: no graph kept for it
    loss = (out.logprobs * m).sum()
    if critic is not None:
        loss = loss + (out.values * m).sum()
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in policy.parameters()])
    values = out.values.detach() * m if critic is not None else torch.zeros(())
    return out.logprobs.detach() * m, out.entropy.detach() * m, values, grads


def _assert_same_results(results):
    for a, c in zip(*results, strict=True):  # gradients: to 1e-6 of their largest entry (sums of ~1e3 terms)
        torch.testing.assert_close(a, c, atol=max(1e-5, 1e-6 * float(a.abs().max())), rtol=1e-5)
    assert float(results[0][3].abs().max()) > 1.0  # a real gradient was compared


def _policy_and_critic(value_model):
    policy = tiny_policy(0)
    critic = SharedValueHead(32) if value_model else None
    if critic is not None:
        torch.nn.init.normal_(critic.head.weight, std=1.0)
    return policy, critic


@pytest.mark.parametrize("value_model", ["shared", None])
def test_shared_prompt_forward_equals_one_row_per_sample(value_model):
    """ppo.shared_prompt: the packed forward gives the same log-probs, entropies, values and gradients as one row
    per sample, up to float rounding."""
    policy, critic = _policy_and_critic(value_model)
    b = _grouped_batch(policy)
    _assert_same_results([_forward_results(policy, critic, b, shared_prompt=sp) for sp in (False, True)])


@pytest.mark.parametrize("shared_prompt", [False, True])
@pytest.mark.parametrize("value_model", [False, True])
def test_readout_forward_equals_the_models_own(monkeypatch, value_model, shared_prompt):
    """The training/reference forward runs its last layer, LM head and value head at the response positions only
    (kernels/readout), one row per sample or packed (ppo.shared_prompt): the same log-probs, entropies, values
    and gradients as the model's own forward."""
    import rewardlab.optimize.ppo as ppo_mod

    policy, critic = _policy_and_critic(value_model)
    b = _grouped_batch(policy)
    seen: list[tuple[int, ...]] = []
    policy.model.layers[-1].mlp.register_forward_hook(lambda _m, args, _o: seen.append(tuple(args[0].shape)))
    results = [_forward_results(policy, critic, b, shared_prompt=shared_prompt)]
    monkeypatch.setattr(ppo_mod, "causal_lm_parts", lambda model: None)
    results.append(_forward_results(policy, critic, b, shared_prompt=shared_prompt))
    t, width = b.response_ids.shape[1], b.input_ids.shape[1]
    if (
        shared_prompt
    ):  # 3 packed rows, the largest holding 4 samples: 4t reads; the full forward: every column
        packed = ppo_mod.pack_prompt_groups(b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask, 0)
        assert packed is not None
        assert seen[0][:2] == (3, 4 * t) and seen[1][:2] == tuple(packed.input_ids.shape)
    else:  # the readout's last layer ran at the t response positions
        assert seen[0][1] == t and seen[1][1] == width
    _assert_same_results(results)


def test_separate_critic_reads_values_at_the_response_positions():
    """A separate ValueModel's values (kernels/readout: last layer and head at the response positions only) equal
    its own forward's, read at the position before each response token, and so do the gradients; the last
    layer's MLP saw t positions per row."""
    from rewardlab.optimize.ppo import critic_values

    critic = ValueModel(tiny_policy(3).model)
    torch.nn.init.normal_(critic.head.weight, std=1.0)
    b = _grouped_batch(tiny_policy(0))
    p, t = b.prompt_ids.shape[1], b.response_ids.shape[1]
    m = b.response_mask.float()
    seen: list[tuple[int, ...]] = []
    critic.backbone.layers[-1].mlp.register_forward_hook(
        lambda _m, args, _o: seen.append(tuple(args[0].shape))
    )
    results = []
    for values_of in (
        lambda: critic_values(critic, b),
        lambda: critic(b.input_ids, b.attention_mask)[:, p - 1 : -1],
    ):
        critic.zero_grad(set_to_none=True)
        values = values_of()
        (values * m).sum().backward()
        results.append((values.detach() * m, torch.cat([q.grad.flatten() for q in critic.parameters()])))
    assert seen[0][1] == t and seen[1][1] == b.input_ids.shape[1]
    for a, c in zip(*results, strict=True):
        torch.testing.assert_close(a, c, atol=max(1e-5, 1e-6 * float(a.abs().max())), rtol=1e-5)
    assert float(results[0][1].abs().max()) > 0.1


def test_separate_critic_runs_after_the_policys_backward():
    """With a separate critic, ppo_update runs the critic's forward after the policy's backward (one model's
    activations held at a time), and the (clipped) gradients it steps with equal one backward of the summed loss."""
    import copy

    from rewardlab.losses import ppo_policy_loss, ppo_value_loss
    from rewardlab.optimize.ppo import critic_values, policy_forward

    c = cfg(advantage="gae", value_model="separate", minibatches=1, ppo_epochs=1, kl_coef=0.1)
    policy, ref, critic = tiny_policy(0), tiny_policy(1), ValueModel(tiny_policy(3).model)
    opt, _ = make_optimizer(torch.nn.ModuleList([policy, critic]), c.optim, 10)
    prompts = [p for p in PROMPTS for _ in range(c.samples_per_prompt)]
    ro = make_rollout(Actors(policy, ref, critic, WordProxy("the"), TOK), prompts, c, 0.1, torch.Generator())
    before = copy.deepcopy((policy, critic))
    events: list[str] = []
    policy.lm_head.weight.register_hook(lambda g: events.append("policy backward"))
    critic.register_forward_pre_hook(lambda *_: events.append("critic forward"))
    critic.backbone.register_forward_pre_hook(lambda *_: events.append("critic forward"))
    stepped: list[torch.Tensor] = []
    real_step = opt.step

    def step(*a, **k):
        stepped.append(torch.cat([p.grad.flatten() for m in (policy, critic) for p in m.parameters()]))
        return real_step(*a, **k)

    opt.step = step  # type: ignore[method-assign]
    ppo_update(policy, critic, opt, ro, c, torch.Generator().manual_seed(0), 0)
    assert events[0] == "policy backward" and "critic forward" in events
    p0, c0 = before  # one backward of pg + vf_coef * vf, from the same weights, on the same tokens
    p0.train(), c0.train()
    out = policy_forward(p0, None, ro.batch, c.temperature)
    pg, _ = ppo_policy_loss(out.logprobs, ro.logprobs, ro.advantages, ro.mask, c.cliprange)
    vf, _ = ppo_value_loss(critic_values(c0, ro.batch), ro.values, ro.returns, ro.mask, c.cliprange_value)
    (pg + c.vf_coef * vf).backward()
    torch.nn.utils.clip_grad_norm_([p for m in (p0, c0) for p in m.parameters()], c.optim.max_grad_norm)
    want = torch.cat([p.grad.flatten() for m in (p0, c0) for p in m.parameters()])
    (got,) = stepped
    torch.testing.assert_close(got, want, atol=1e-6 * float(want.abs().max()), rtol=1e-5)
    assert float(want.abs().max()) > 1e-3


def test_shared_prompt_training_matches(monkeypatch):
    """GRPO (one minibatch) and PPO with a value head on the trunk and one minibatch per epoch, a few steps with
    and without ppo.shared_prompt: the packed forward runs (the reference's and every update's) and the weights
    end the same up to rounding."""
    from rewardlab.optimize import ppo

    packs, _ = count_calls(monkeypatch, ppo, "pack_prompt_groups")
    for advantage in ("grpo", "gae"):
        finals = []
        for shared_prompt in (False, True):
            c = cfg(advantage=advantage, kl_coef=0.1, value_model="shared", shared_prompt=shared_prompt,
                    minibatches=1, optim={"lr": 3e-3, "schedule": "constant"})  # fmt: skip
            policy, ref = tiny_policy(0), tiny_policy(1)
            critic = SharedValueHead(32) if advantage == "gae" else None
            opt, _ = make_optimizer(torch.nn.ModuleList([policy, *([critic] if critic else [])]), c.optim, 10)
            gen, shuffle = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
            prompts = [p for p in PROMPTS for _ in range(c.samples_per_prompt)]
            packs["n"] = 0
            for step in range(
                3
            ):  # (the update shuffles groups, not rows: its own generator keeps samples equal)
                ro = make_rollout(Actors(policy, ref, critic, WordProxy("the"), TOK), prompts, c, 0.1, gen)
                ppo_update(policy, critic, opt, ro, c, shuffle, step)
            updates = c.ppo_epochs * c.minibatches
            assert packs["n"] == (3 * (1 + updates) if shared_prompt else 0)  # reference + every minibatch
            finals.append(torch.cat([p.detach().flatten() for p in policy.parameters()]))
        torch.testing.assert_close(finals[0], finals[1], atol=1e-4, rtol=0)


def test_shared_prompt_minibatches_hold_whole_groups(monkeypatch):
    """With ppo.shared_prompt PPO shuffles groups instead of rows: each minibatch holds whole groups (every prompt
    packed once with all its samples), each row once per epoch."""
    from rewardlab.optimize import ppo
    from rewardlab.policies import packing

    seen = []
    real_pack = packing.pack_prompt_groups

    def recorded(prompt_ids, prompt_mask, *a, **k):
        seen.append(len(prompt_ids))
        packed = real_pack(prompt_ids, prompt_mask, *a, **k)
        assert packed is not None and len(prompt_ids) == 4 * packed.input_ids.shape[0]  # groups of 4, whole
        return packed

    monkeypatch.setattr(ppo, "pack_prompt_groups", recorded)
    prompts3 = [*PROMPTS, "what is 5 + 5 ?", "what is 9 - 2 ?"]
    c = cfg(advantage="gae", value_model="shared", shared_prompt=True, samples_per_prompt=4, prompts_per_step=4,
            minibatches=2, ppo_epochs=2)  # fmt: skip
    policy, ref, critic = tiny_policy(0), tiny_policy(1), SharedValueHead(32)
    opt, _ = make_optimizer(torch.nn.ModuleList([policy, critic]), c.optim, 10)
    gen = torch.Generator().manual_seed(0)
    ro = make_rollout(Actors(policy, ref, critic, WordProxy("the"), TOK), [p for p in prompts3 for _ in range(4)],
                      c, 0.1, gen)  # fmt: skip
    seen.clear()
    ppo_update(policy, critic, opt, ro, c, gen, 1)
    assert seen == [8, 8, 8, 8]  # 2 epochs x 2 minibatches of 2 whole groups
    groups = ppo.prompt_groups(ro.batch.prompt_ids, ro.batch.prompt_mask)
    assert [g.tolist() for g in groups] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    three = ro.batch.select(torch.tensor([0, 4, 8]))
    assert ppo.prompt_groups(three.prompt_ids, three.prompt_mask) is None


def test_value_model_from_a_reward_checkpoint_takes_its_score_head(tmp_path):
    """value_init: reward: the trunk from the checkpoint and the head from its ``score.weight`` (read alone from the
    safetensors file); a causal LM checkpoint (no score head) gives a fresh head."""
    from transformers import LlamaForSequenceClassification

    policy = tiny_policy(0)
    config = policy.config.__class__(**{**policy.config.to_dict(), "num_labels": 1})
    rm = LlamaForSequenceClassification(config)
    torch.nn.init.normal_(rm.score.weight)
    rm.save_pretrained(tmp_path / "rm")
    policy.save_pretrained(tmp_path / "lm")
    vm = ValueModel.from_pretrained(tmp_path / "rm")
    assert torch.equal(vm.head.weight, rm.score.weight)
    trunk = dict(rm.model.named_parameters())
    assert all(torch.equal(p, trunk[n]) for n, p in vm.backbone.named_parameters())
    fresh = ValueModel.from_pretrained(tmp_path / "lm")
    assert fresh.head.weight.shape == (1, 32) and not torch.equal(fresh.head.weight, rm.score.weight)
