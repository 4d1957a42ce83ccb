"""The deep path: stable-baselines3 PPO on a visible, gold or learned reward, and deep maximum-entropy IRL.

* :class:`LearnedRewardVecEnv` - an SB3 ``VecEnvWrapper`` that replaces the environment's reward by any
  reward of step features ``[enc(s), enc(a), enc(s')]`` (:func:`rewardlab.control.preferences.transition_features`),
  computed for all sub-environments in one batch; the visible and gold rewards stay in ``info`` (like
  imitation's ``RewardVecEnvWrapper``, which keeps ``original_env_rew``).
* :class:`PPOAgent` - PPO (Schulman et al. 2017, SB3's implementation) as an
  :class:`~rewardlab.control.preferences.Agent` of the preference loop, trained a few thousand steps each round
  on the current learned reward; :func:`train_ppo` trains one on the visible reward, or on the gold
  reward for the "trained on gold" reference, auditing gold and visible return as it goes.
* :func:`deep_maxent_irl` - deep maximum-entropy IRL (Wulfmeier, Ondruska & Posner 2015, "Maximum entropy deep
  inverse reinforcement learning"): an MLP reward ``r_theta(s)`` over state features, trained by the MaxEnt
  gradient ``dL/dr(s) = mu_expert(s) - E_pi_theta[mu(s)]`` (expert minus expected state visitation of the
  soft-optimal policy of the current reward, Ziebart et al. 2008), back-propagated into the network. It plans
  exactly on a tabular model with :func:`rewardlab.control.tabular.soft_value_iteration`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper
from torch import nn

from rewardlab.control.preferences import RewardFn, make_env, step_features, transition_features


class PPOConfig(BaseModel):
    """SB3 PPO's settings used here (SB3's names; defaults tuned for the 200-step cart-pole on 2 CPU cores)."""

    model_config = ConfigDict(extra="forbid")
    n_envs: int = Field(4, ge=1)
    n_steps: int = Field(512, ge=8, description="steps per environment per rollout")
    batch_size: int = Field(128, ge=2)
    n_epochs: int = Field(10, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    gamma: float = Field(0.99, gt=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    ent_coef: float = Field(0.0, ge=0)
    net_arch: list[int] = Field(default_factory=lambda: [32, 32])


class LearnedRewardVecEnv(VecEnvWrapper):
    """Replace the reward of every sub-environment by ``reward(features)`` (``None``: keep the env's own).

    ``reward`` can be swapped between training rounds (:attr:`reward`). Each step's ``info`` gains
    ``visible_reward`` (what the environment paid); ``gold_reward`` passes through.
    """

    def __init__(self, venv: VecEnv, reward: RewardFn | None = None) -> None:
        super().__init__(venv)
        self.reward = reward
        self._obs: np.ndarray | None = None
        self._actions: np.ndarray | None = None
        self._spaces = (venv.observation_space, venv.action_space)

    def reset(self) -> Any:
        self._obs = self.venv.reset()
        return self._obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions
        self.venv.step_async(actions)

    def step_wait(self) -> Any:
        obs, rews, dones, infos = self.venv.step_wait()
        for r, info in zip(rews, infos):
            info["visible_reward"] = float(r)
        if self.reward is not None:
            assert self._obs is not None and self._actions is not None
            nxt = [info.get("terminal_observation", o) if d else o for o, d, info in zip(obs, dones, infos)]
            x = np.stack([self._features(o, a, n) for o, a, n in zip(self._obs, self._actions, nxt)])
            rews = np.asarray(self.reward(x), dtype=np.float32)
        self._obs = obs
        return obs, rews, dones, infos

    def _features(self, obs: Any, action: Any, next_obs: Any) -> np.ndarray:
        return step_features(*self._spaces, obs, action, next_obs)


def make_vec_env(env_id: str, n_envs: int, seed: int, reward: RewardFn | None = None) -> LearnedRewardVecEnv:
    """``n_envs`` copies of ``env_id`` (seeded ``seed, seed + 1, ...``) behind a :class:`LearnedRewardVecEnv`."""
    venv = DummyVecEnv([lambda: make_env(env_id) for _ in range(n_envs)])
    venv.seed(seed)
    return LearnedRewardVecEnv(venv, reward)


def build_ppo(venv: VecEnv, cfg: PPOConfig, seed: int) -> PPO:
    return PPO("MlpPolicy", venv, n_steps=cfg.n_steps, batch_size=cfg.batch_size, n_epochs=cfg.n_epochs,
               learning_rate=cfg.learning_rate, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, ent_coef=cfg.ent_coef,
               policy_kwargs={"net_arch": list(cfg.net_arch)}, seed=seed, device="cpu", verbose=0)  # fmt: skip


def evaluate_policy(env_id: str, act: Callable[[Any], Any], episodes: int, seed: int,
                    reward: RewardFn | None = None,
                    kl: Callable[[np.ndarray], dict[str, float]] | None = None) -> dict[str, float]:  # fmt: skip
    """Mean ``gold``, ``visible`` (and with ``reward``, ``learned``) return of ``act`` over seeded episodes; with
    ``kl`` (observations of one episode -> summed KL estimates, see :func:`policy_kl`), ``kl/<name>`` means too."""
    env = make_env(env_id)
    totals: dict[str, list[float]] = {"gold": [], "visible": [], "learned": []}
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        g = v = lr = 0.0
        done = False
        seen = []
        while not done:
            a = act(obs)
            seen.append(np.asarray(obs, dtype=np.float32))
            nxt, r, term, trunc, info = env.step(a)
            g, v = g + float(info["gold_reward"]), v + float(r)
            if reward is not None:
                lr += float(reward(transition_features(env, obs, a, nxt)[None])[0])
            obs, done = nxt, term or trunc
        totals["gold"].append(g), totals["visible"].append(v), totals["learned"].append(lr)
        if kl is not None:
            for name, value in kl(np.stack(seen)).items():
                totals.setdefault(f"kl/{name}", []).append(value)
    out = {k: float(np.mean(v)) for k, v in totals.items()}
    if reward is None:
        out.pop("learned")
    return out


@torch.no_grad()
def policy_kl(policy: Any, reference: Any, obs: np.ndarray, seed: int = 0) -> dict[str, float]:
    """``KL(pi || pi_ref)`` summed over the steps of one episode (``obs[T, ...]``), estimated with one action
    sampled from the (stochastic) policy at each state: Schulman's k1, k2, k3
    (:func:`rewardlab.losses.kl_estimators`), as the language-model audit sums them over response tokens."""
    from rewardlab.losses import kl_estimators

    state = torch.get_rng_state()  # the audit must not move the training's random stream
    try:
        torch.manual_seed(seed)
        x = torch.as_tensor(obs)
        dist = policy.get_distribution(x)
        actions = dist.get_actions(deterministic=False)
        logp = dist.log_prob(actions)
        ref_logp = reference.get_distribution(x).log_prob(actions)
    finally:
        torch.set_rng_state(state)
    return {k: float(v.sum()) for k, v in kl_estimators(logp, ref_logp).items()}


def audit_row(step: int, ev: dict[str, float], proxy_key: str = "visible") -> dict[str, Any]:
    """An audit row as the language-model side writes it: ``step``, ``proxy/mean``, ``gold/mean`` and, when measured,
    ``kl/k1..k3`` with ``kl/estimator`` (k1) and ``kl/sqrt``."""
    row: dict[str, Any] = {"step": step, "gold/mean": ev["gold"], "proxy/mean": ev.get(proxy_key)}
    if "kl/k1" in ev:
        row.update({k: ev[k] for k in ("kl/k1", "kl/k2", "kl/k3")})
        row["kl/estimator"] = "k1"
        row["kl/sqrt"] = math.sqrt(max(0.0, ev["kl/k1"]))
    return row


class PPOAgent:
    """PPO as an agent of the preference loop: ``steps_per_round`` environment steps on each new learned reward."""

    def __init__(self, env_id: str, cfg: PPOConfig, steps_per_round: int, seed: int) -> None:
        self.env_id, self.steps_per_round = env_id, steps_per_round
        self.venv = make_vec_env(env_id, cfg.n_envs, seed)
        self.model = build_ppo(self.venv, cfg, seed)
        self.reference = copy.deepcopy(self.model.policy)  # the starting policy, for the audit's KL
        self.env_steps = 0

    def act(self, obs: Any, rng: np.random.Generator) -> Any:
        action, _ = self.model.predict(obs, deterministic=False)
        return action

    def improve(self, reward: RewardFn) -> None:
        self.venv.reward = reward
        self.model.learn(self.steps_per_round, reset_num_timesteps=False)
        self.env_steps += self.steps_per_round

    def evaluate(self, reward: RewardFn | None, episodes: int, seed: int) -> dict[str, float]:
        kl = lambda obs: policy_kl(self.model.policy, self.reference, obs, seed)  # noqa: E731
        return evaluate_policy(self.env_id, lambda o: self.model.predict(o, deterministic=True)[0], episodes,
                               seed, reward, kl)  # fmt: skip


def train_ppo(env_id: str, cfg: PPOConfig, steps: int, seed: int, *, on: str = "visible", evals: int = 5,
              eval_episodes: int = 10, on_eval: Callable[[dict[str, Any]], None] | None = None
              ) -> tuple[PPO, list[dict[str, Any]]]:  # fmt: skip
    """PPO for ``steps`` on the env's ``visible`` reward or on its ``gold`` reward (``on``); ``evals`` audit rows
    (``step``, ``gold/mean``, ``proxy/mean`` = visible return, ``kl/*`` to the starting policy) spread evenly
    over training. The gold and KL are measured on the deterministic (mean-action) policy's states."""
    if on not in ("visible", "gold"):
        raise ValueError(f"on must be 'visible' or 'gold', got {on!r}")
    venv = make_vec_env(env_id, cfg.n_envs, seed)
    if on == "gold":
        venv = _GoldRewardVecEnv(venv)  # type: ignore[assignment]
    model = build_ppo(venv, cfg, seed)
    reference = copy.deepcopy(model.policy)
    rows: list[dict[str, Any]] = []
    chunk = math.ceil(steps / evals)
    done = 0
    while done < steps:
        model.learn(min(chunk, steps - done), reset_num_timesteps=False)
        done = int(model.num_timesteps)
        ev = evaluate_policy(env_id, lambda o: model.predict(o, deterministic=True)[0], eval_episodes,
                             seed=10_000 + seed, kl=lambda obs: policy_kl(model.policy, reference, obs, seed))  # fmt: skip
        row = audit_row(done, ev)
        rows.append(row)
        if on_eval is not None:
            on_eval(row)
    return model, rows


class _GoldRewardVecEnv(VecEnvWrapper):
    """Train on ``info["gold_reward"]`` (the reference policy "trained on the gold reward itself")."""

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> Any:
        obs, _, dones, infos = self.venv.step_wait()
        return obs, np.array([float(i["gold_reward"]) for i in infos], dtype=np.float32), dones, infos


# ------------------------------------------------------------------------------------------ deep MaxEnt IRL
def deep_maxent_irl(P: np.ndarray, init: np.ndarray, horizon: int, features: np.ndarray, expert_visits: np.ndarray,
                    *, hidden: int = 32, steps: int = 200, lr: float = 1e-2, seed: int = 0) -> np.ndarray:  # fmt: skip
    """Deep MaxEnt IRL (Wulfmeier et al. 2015) on a tabular model; returns the learned state reward ``r[S]``.

    ``features[S, d]`` describe states; ``expert_visits[S]`` is the expert's expected visit count per state over
    the ``horizon`` (e.g. the mean over demonstrations). Each step: ``r = MLP(features)``, plan the soft-optimal
    finite-horizon policy for ``R[s, a, s'] = r(s')``, compute its expected visits ``mu`` and push
    ``grad_r = -(expert_visits - mu)`` through the network (gradient ascent on the demonstrations' log-likelihood).
    """
    from rewardlab.control.tabular import soft_value_iteration, state_distributions

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(features.shape[1], hidden), nn.Tanh(), nn.Linear(hidden, 1))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    for _ in range(steps):
        r = net(x).squeeze(-1)
        R = np.broadcast_to(r.detach().numpy()[None, None, :], P.shape)
        _, pi = soft_value_iteration(P, R, 1.0, horizon=horizon)
        mu = state_distributions(P, pi, init, horizon + 1)[1:].sum(0)  # visits of the states entered
        grad = torch.as_tensor(mu - expert_visits, dtype=torch.float32)
        opt.zero_grad()
        r.backward(grad)
        opt.step()
    return net(x).squeeze(-1).detach().numpy().astype(float)
