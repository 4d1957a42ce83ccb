"""Preference comparisons on control tasks (Christiano et al. 2017, "Deep reinforcement learning from
human preferences"): trajectory segments, a simulated teacher, a reward ensemble, active queries.

Works on any gymnasium environment whose ``info`` carries ``info["gold_reward"]`` every step.

* **Segments are replayable.** A segment is described by ``{"env_id", "seed", "actions", "start"}``: reset
  ``env_id`` with ``seed``, play ``actions``, keep the steps from ``start`` on. The description (JSON) is
  the ``chosen``/``rejected`` text of an ordinary preference record
  (:class:`rewardlab.feedback.records.Comparison`), so label files, the labeling app and judges handle
  control comparisons like any others; :func:`replay` turns a description back into a :class:`Segment`
  (features, visible and gold rewards) exactly.
* **The simulated teacher** has B-Pref's knobs (Lee et al. 2021, "B-Pref: Benchmarking preference-based
  reinforcement learning"): with per-step gold rewards ``r1, r2`` of two segments of length ``H``,

  1. *skip*: no label when ``max(sum r1, sum r2) < skip`` (neither segment shows anything worth judging);
  2. *myopia*: the teacher compares ``R_i = sum_t gamma^(H-1-t) r_i[t]`` (recent steps weigh more);
  3. *rationality*: ``P(1 > 2) = sigmoid(beta (R1 - R2))`` and the label is drawn from it
     (``beta = None``: perfectly rational, the larger return wins; an exact tie is 0.5);
  4. *mistakes*: with probability ``epsilon`` the label is flipped;
  5. *equal*: when ``|sum r1 - sum r2| < equal`` the label is a tie, 0.5.
* **The reward model** is an ensemble of MLPs ``r_k(s, a, s')`` trained with the Bradley-Terry loss on
  segment returns, ``P(1 > 2) = sigmoid(sum_t r(x1_t) - sum_t r(x2_t))``, cross-entropy against the label
  (ties count half each way) - Christiano et al.'s eq. 1.
* **Active queries**: from a pool of candidate pairs, ask about those whose predicted preference
  ``sigmoid(R1 - R2)`` varies most across the ensemble (B-Pref's disagreement sampling).
* **The loop** (:func:`learn_from_preferences`): rounds of (1) roll out the current agent, (2) cut segments
  and pick pairs, (3) ask the teacher within the query budget, (4) train the ensemble on every label so far,
  (5) train the agent on the learned reward, (6) audit gold and learned return. An :class:`Agent` is any
  optimizer with ``act`` and ``improve`` (SB3 PPO in :mod:`rewardlab.control.deep`, exact planning on a
  tabular model in :class:`TabularAgent`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from rewardlab.feedback.records import Comparison


# ------------------------------------------------------------------------------------------ environments
def make_env(env_id: str, **kwargs: Any) -> gym.Env:  # type: ignore[type-arg]
    """``gymnasium.make(env_id)`` with rewardlab's control ids registered (:func:`rewardlab.tasks.registry.make_env`)."""
    from rewardlab.tasks.registry import make_env as make_registered

    return make_registered(env_id, **kwargs)  # type: ignore[no-any-return]


def encode(space: gym.Space, x: Any) -> np.ndarray:  # type: ignore[type-arg]
    """A float vector for ``x`` in ``space``: one-hot for ``Discrete``, flattened values for ``Box``."""
    if isinstance(space, spaces.Discrete):
        v = np.zeros(int(space.n), dtype=np.float32)
        v[int(x) - int(space.start)] = 1.0
        return v
    return np.asarray(x, dtype=np.float32).reshape(-1)


def transition_features(env: gym.Env, obs: Any, action: Any, next_obs: Any) -> np.ndarray:  # type: ignore[type-arg]
    """The reward model's input for one step: ``[enc(s), enc(a), enc(s')]``; with a ``Discrete`` state and action
    the pair is one joint one-hot, ``[onehot(s * A + a), onehot(s')]`` (a tabular reward is then linear in it)."""
    return step_features(env.observation_space, env.action_space, obs, action, next_obs)


def step_features(o: gym.Space, a: gym.Space, obs: Any, action: Any, next_obs: Any) -> np.ndarray:  # type: ignore[type-arg]
    """:func:`transition_features` given the observation and action spaces."""
    if isinstance(o, spaces.Discrete) and isinstance(a, spaces.Discrete):
        n_a = int(a.n)
        pair = (int(obs) - int(o.start)) * n_a + int(action) - int(a.start)
        joint = np.zeros(int(o.n) * n_a, dtype=np.float32)
        joint[pair] = 1.0
        return np.concatenate([joint, encode(o, next_obs)])
    return np.concatenate([encode(o, obs), encode(a, action), encode(o, next_obs)])


# ------------------------------------------------------------------------------------------ segments
@dataclass(frozen=True)
class Segment:
    """Steps ``start..len(actions)-1`` of an episode of ``env_id`` reset with ``seed`` and played with ``actions``.

    ``features[t]`` is the reward model's input of step ``start + t``; ``gold`` and ``visible`` its rewards.
    """

    env_id: str
    seed: int
    actions: tuple[Any, ...]
    start: int
    features: np.ndarray = field(repr=False, compare=False)
    gold: np.ndarray = field(repr=False, compare=False)
    visible: np.ndarray = field(repr=False, compare=False)

    @property
    def length(self) -> int:
        return len(self.actions) - self.start

    def describe(self) -> str:
        """The replayable JSON description (the ``chosen``/``rejected`` text of a record)."""
        return json.dumps({"env_id": self.env_id, "seed": self.seed, "start": self.start,
                           "actions": [_jsonable(a) for a in self.actions]})  # fmt: skip


def _jsonable(a: Any) -> Any:
    arr = np.asarray(a)
    return arr.item() if arr.ndim == 0 else arr.tolist()


@dataclass
class Episode:
    """One rollout: the actions played from ``reset(seed)``, step features and per-step rewards."""

    env_id: str
    seed: int
    actions: list[Any]
    features: np.ndarray
    gold: np.ndarray
    visible: np.ndarray

    def segment(self, start: int, length: int) -> Segment:
        end = start + length
        if start < 0 or end > len(self.actions):
            raise ValueError(f"segment {start}:{end} outside the episode of {len(self.actions)} steps")
        return Segment(self.env_id, self.seed, tuple(self.actions[:end]), start, self.features[start:end],
                       self.gold[start:end], self.visible[start:end])  # fmt: skip


Policy = Callable[[Any, np.random.Generator], Any]


def rollout(env_id: str, policy: Policy, seed: int, rng: np.random.Generator,
            env: gym.Env | None = None, max_steps: int | None = None) -> Episode:  # type: ignore[type-arg]  # fmt: skip
    """Play ``policy`` from ``reset(seed=seed)`` to the end of the episode (or ``max_steps``)."""
    env = env if env is not None else make_env(env_id)
    obs, _ = env.reset(seed=seed)
    acts, feats, gold, vis = [], [], [], []
    done = False
    while not done and (max_steps is None or len(acts) < max_steps):
        a = policy(obs, rng)
        nxt, r, term, trunc, info = env.step(a)
        acts.append(_jsonable(a))
        feats.append(transition_features(env, obs, a, nxt))
        gold.append(float(info["gold_reward"]))
        vis.append(float(r))
        obs, done = nxt, term or trunc
    return Episode(env_id, seed, acts, np.asarray(feats, dtype=np.float32), np.asarray(gold), np.asarray(vis))


def replay(description: str | dict[str, Any], env: gym.Env | None = None) -> Segment:  # type: ignore[type-arg]
    """The :class:`Segment` a description names, by resetting with its seed and replaying its actions."""
    d = json.loads(description) if isinstance(description, str) else description
    actions = list(d["actions"])
    env_id, seed, start = str(d["env_id"]), int(d["seed"]), int(d["start"])
    it = iter(actions)
    ep = rollout(env_id, lambda obs, rng: _as_action(env, env_id, next(it)), seed, np.random.default_rng(0),
                 env=env, max_steps=len(actions))  # fmt: skip
    if len(ep.actions) != len(actions):
        raise ValueError(f"replay of {env_id} seed {seed}: the episode ended after {len(ep.actions)} of "
                         f"{len(actions)} actions")  # fmt: skip
    return ep.segment(start, len(actions) - start)


def _as_action(env: gym.Env | None, env_id: str, a: Any) -> Any:  # type: ignore[type-arg]
    return np.asarray(a, dtype=np.float32) if isinstance(a, list) else a


def cut_segments(episodes: Sequence[Episode], length: int, rng: np.random.Generator, per_episode: int) -> list[Segment]:  # fmt: skip
    """``per_episode`` segments of ``length`` steps at uniform random starts in each long-enough episode."""
    out = []
    for ep in episodes:
        n = len(ep.actions)
        if n < length:
            continue
        for s in rng.integers(0, n - length + 1, size=per_episode):
            out.append(ep.segment(int(s), length))
    return out


# ------------------------------------------------------------------------------------------ teacher
class TeacherConfig(BaseModel):
    """B-Pref's simulated teacher (see the module docstring for the order the knobs apply in)."""

    model_config = ConfigDict(extra="forbid")
    beta: float | None = Field(None, gt=0, description="Boltzmann rationality; None: perfectly rational")
    epsilon: float = Field(0.0, ge=0, le=1, description="probability of a flipped label (a mistake)")
    gamma: float = Field(1.0, gt=0, le=1, description="myopia: weight gamma^(H-1-t) on step t")
    skip: float | None = Field(None, description="no label when both segments' returns are below this")
    equal: float = Field(0.0, ge=0, description="a tie when the returns differ by less than this")


def myopic_return(rewards: np.ndarray, gamma: float) -> float:
    """``sum_t gamma^(H-1-t) r[t]``: the last step has weight 1 (B-Pref's myopic teacher)."""
    h = len(rewards)
    return float(np.sum(np.asarray(rewards) * gamma ** np.arange(h - 1, -1, -1)))


def teacher_label(
    r1: np.ndarray, r2: np.ndarray, cfg: TeacherConfig, rng: np.random.Generator
) -> float | None:
    """The teacher's label for segments with per-step gold rewards ``r1``, ``r2``: 1.0 (first better),
    0.0 (second better), 0.5 (tie) or ``None`` (skipped)."""
    s1, s2 = float(np.sum(r1)), float(np.sum(r2))
    if cfg.skip is not None and max(s1, s2) < cfg.skip:
        return None
    d = myopic_return(r1, cfg.gamma) - myopic_return(r2, cfg.gamma)
    if cfg.beta is None:
        label = 1.0 if d > 0 else 0.0 if d < 0 else 0.5
    else:
        p = 1.0 / (1.0 + math.exp(-max(min(cfg.beta * d, 50.0), -50.0)))
        label = float(rng.random() < p)
    if cfg.epsilon > 0 and rng.random() < cfg.epsilon:
        label = 1.0 - label
    if abs(s1 - s2) < cfg.equal:
        label = 0.5
    return label


def to_record(a: Segment, b: Segment, label: float, rater: str = "teacher") -> Comparison:
    """A preference record: the preferred segment (``a`` when ``label >= 0.5``) as ``chosen``; a tie has
    ``meta["tie"]``. ``prompt`` names the environment and segment length; gold returns are for audit."""
    first, second = (a, b) if label >= 0.5 else (b, a)
    prompt = json.dumps({"env_id": a.env_id, "segment_length": a.length})
    return Comparison(prompt=prompt, chosen=first.describe(), rejected=second.describe(), rater=rater,
                      gold_chosen=float(first.gold.sum()), gold_rejected=float(second.gold.sum()),
                      meta={"tie": True} if label == 0.5 else {})  # fmt: skip


def from_record(rec: Comparison, env: gym.Env | None = None) -> tuple[Segment, Segment, float]:  # type: ignore[type-arg]
    """``(chosen, rejected, label)`` of a record, the segments replayed (label 0.5 for a tie, else 1.0)."""
    return replay(str(rec.chosen), env), replay(str(rec.rejected), env), 0.5 if rec.meta.get("tie") else 1.0


# ------------------------------------------------------------------------------------------ reward model
def _member(n_features: int, hidden: int) -> nn.Module:
    """One member: a two-hidden-layer MLP, or (``hidden = 0``) a linear reward - on a tabular environment's
    joint one-hot features that is exactly a reward table ``r(s, a) + r'(s')``."""
    if hidden == 0:
        return nn.Linear(n_features, 1)
    return nn.Sequential(nn.Linear(n_features, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden), nn.LeakyReLU(),
                         nn.Linear(hidden, 1))  # fmt: skip


class RewardEnsemble(nn.Module):
    """``K`` independent MLPs (or linear rewards) ``r_k(x)`` over step features; ``forward(x[..., d]) -> [K, ...]``."""

    def __init__(self, n_features: int, members: int = 3, hidden: int = 64, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.nets = nn.ModuleList(_member(n_features, hidden) for _ in range(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([net(x).squeeze(-1) for net in self.nets])

    @torch.no_grad()
    def reward(self, x: np.ndarray) -> np.ndarray:
        """The ensemble's mean reward per row of ``x`` (numpy in, numpy out)."""
        return self(torch.as_tensor(np.asarray(x, dtype=np.float32))).mean(0).numpy()

    @torch.no_grad()
    def pair_probs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``[K, N]``: each member's ``P(a_i > b_i) = sigmoid(sum_t r(a_i,t) - sum_t r(b_i,t))`` (a, b: ``[N, H, d]``)."""
        ra, rb = self(torch.as_tensor(a)).sum(-1), self(torch.as_tensor(b)).sum(-1)
        return torch.sigmoid(ra - rb).numpy()


def bradley_terry_loss(returns_a: torch.Tensor, returns_b: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Christiano et al. 2017 eq. 1: ``-[y log sigmoid(Ra - Rb) + (1 - y) log sigmoid(Rb - Ra)]``, mean over pairs.

    ``returns_*``: summed predicted rewards of each segment (``[..., N]``); ``label`` y: 1 when ``a`` is
    preferred, 0.5 for a tie.
    """
    logits = returns_a - returns_b
    return nn.functional.binary_cross_entropy_with_logits(logits, label.expand_as(logits))


def train_ensemble(model: RewardEnsemble, a: np.ndarray, b: np.ndarray, labels: np.ndarray, *, epochs: int = 50,
                   lr: float = 1e-3, batch_size: int = 64, weight_decay: float = 1e-4, seed: int = 0) -> float:  # fmt: skip
    """Fit every member on all pairs (``a``, ``b``: ``[N, H, d]``; ``labels``: ``[N]``); returns the last epoch's mean loss.

    Each member sees its own shuffling (seeded), so members differ by initialization and data order.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    ta, tb, ty = (torch.as_tensor(np.asarray(v, dtype=np.float32)) for v in (a, b, labels))
    gen = torch.Generator().manual_seed(seed)
    n, k = len(ty), len(model.nets)
    last = math.nan
    for _ in range(epochs):
        perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(k)])
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perms[:, i : i + batch_size]
            ra = torch.stack([net(ta[idx[j]]).squeeze(-1).sum(-1) for j, net in enumerate(model.nets)])
            rb = torch.stack([net(tb[idx[j]]).squeeze(-1).sum(-1) for j, net in enumerate(model.nets)])
            loss = bradley_terry_loss(ra, rb, ty[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.shape[1]
        last = total / n
    return last


def preference_accuracy(model: RewardEnsemble, a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> float:
    """Share of non-tied pairs whose label the ensemble mean predicts (``P > 0.5`` for label 1)."""
    p = model.pair_probs(np.asarray(a, np.float32), np.asarray(b, np.float32)).mean(0)
    keep = np.asarray(labels) != 0.5
    return float(np.mean((p[keep] > 0.5) == (np.asarray(labels)[keep] > 0.5))) if keep.any() else math.nan


def select_queries(model: RewardEnsemble | None, a: np.ndarray, b: np.ndarray, n: int,
                   rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Indices of the ``n`` candidate pairs to ask about: the highest ensemble disagreement (std over members of
    ``P(a > b)``), best first; uniformly random without a model (B-Pref's disagreement vs uniform sampling)."""
    n = min(n, len(a))
    if model is None:
        return rng.permutation(len(a))[:n]
    std = model.pair_probs(np.asarray(a, np.float32), np.asarray(b, np.float32)).std(0)
    return np.argsort(-std, kind="stable")[:n]


# ------------------------------------------------------------------------------------------ agents
RewardFn = Callable[[np.ndarray], np.ndarray]


class Agent(Protocol):
    """An optimizer the loop can train on a learned reward."""

    def act(self, obs: Any, rng: np.random.Generator) -> Any:
        """An exploratory action (used to collect segments)."""
        ...

    def improve(self, reward: RewardFn) -> None:
        """Optimize against ``reward`` (step features ``[N, d]`` -> rewards ``[N]``)."""
        ...

    def evaluate(self, reward: RewardFn | None, episodes: int, seed: int) -> dict[str, float]:
        """``gold`` (mean gold return), ``visible`` and, with ``reward``, ``learned`` return of the deployed policy."""
        ...


class TabularAgent:
    """Exact planning on a tabular model (``env.unwrapped.tabular()``) with a learned reward ``R[s, a, s']``.

    The deployed policy is greedy in the finite-horizon optimal ``Q`` of the learned reward; segments are
    collected with a soft (Boltzmann, ``explore_beta``) version of it mixed with ``explore_epsilon`` of uniform
    actions (so segments keep visiting what the planner avoids). Returns are exact expectations.
    """

    def __init__(self, env_id: str, explore_beta: float = 1.0, explore_epsilon: float = 0.3) -> None:
        from rewardlab.control.tabular import greedy

        self.env_id, self.env = env_id, make_env(env_id)
        self.model = self.env.unwrapped.tabular()  # type: ignore[attr-defined]
        self.explore_beta, self.explore_epsilon = explore_beta, explore_epsilon
        S, A = self.model.n_states, self.model.n_actions
        self.policy = np.full((self.model.horizon, S, A), 1.0 / A)
        self.explore = self.policy
        self._greedy = greedy
        self.t = 0

    def features(self) -> tuple[np.ndarray, np.ndarray]:
        """Indices ``(s, a, s')`` of the possible transitions and their reward-model features."""
        idx = np.argwhere(self.model.P > 0)
        o, a = self.env.observation_space, self.env.action_space
        return idx, np.stack([step_features(o, a, s, u, s2) for s, u, s2 in idx])

    def reward_table(self, reward: RewardFn) -> np.ndarray:
        idx, x = self.features()
        R = np.zeros_like(self.model.P)
        R[idx[:, 0], idx[:, 1], idx[:, 2]] = reward(x)
        return R

    def plan(self, R: np.ndarray) -> None:
        from rewardlab.control.tabular import finite_horizon_q

        Q = finite_horizon_q(self.model.P, R, self.model.horizon)
        self.policy = self._greedy(Q)
        z = self.explore_beta * (Q - Q.max(-1, keepdims=True))
        soft = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        self.explore = (1 - self.explore_epsilon) * soft + self.explore_epsilon / soft.shape[-1]

    def kl(self) -> dict[str, float]:
        """``KL(pi || uniform)`` summed over the horizon on the policy's own state distribution, exactly (the
        starting policy is uniform); reported under all three estimator names, which agree when exact."""
        from rewardlab.control.tabular import state_distributions

        m = self.model
        D = state_distributions(m.P, self.policy, m.init, m.horizon)
        pi = self.policy
        per_state = np.sum(np.where(pi > 0, pi * np.log(np.maximum(pi, 1e-300) * m.n_actions), 0.0), axis=-1)
        value = float(np.sum(D * per_state))
        return {"kl/k1": value, "kl/k2": value, "kl/k3": value}

    def act(self, obs: Any, rng: np.random.Generator) -> int:
        p = self.explore[min(self.t, len(self.explore) - 1), int(obs)]
        self.t += 1
        return int(rng.choice(len(p), p=p))

    def reset_clock(self) -> None:
        self.t = 0

    def improve(self, reward: RewardFn) -> None:
        self.plan(self.reward_table(reward))

    def evaluate(self, reward: RewardFn | None, episodes: int = 0, seed: int = 0) -> dict[str, float]:
        from rewardlab.control.tabular import evaluate

        m = self.model
        out = {"gold": evaluate(m.P, m.gold, self.policy, m.init, m.horizon),
               "visible": evaluate(m.P, m.R, self.policy, m.init, m.horizon), **self.kl()}  # fmt: skip
        if reward is not None:
            out["learned"] = evaluate(m.P, self.reward_table(reward), self.policy, m.init, m.horizon)
        return out


# ------------------------------------------------------------------------------------------ the loop
class PreferenceConfig(BaseModel):
    """The preference-comparison loop (numbers as in Christiano et al. / imitation where they apply)."""

    model_config = ConfigDict(extra="forbid")
    budget: int = Field(500, ge=1, description="total queries asked of the teacher (skipped ones count)")
    rounds: int = Field(5, ge=1, description="rounds of collect -> query -> fit reward -> improve agent")
    initial_fraction: float = Field(0.3, gt=0, le=1, description="share of the budget asked in round 1")
    segment_length: int = Field(25, ge=1)
    episodes_per_round: int = Field(
        16, ge=1, description="rollouts of the agent per round to cut segments from"
    )
    segments_per_episode: int = Field(8, ge=1)
    active: bool = Field(True, description="disagreement-based query selection (else uniform pairs)")
    oversample: int = Field(5, ge=1, description="candidate pairs per query asked (active selection)")
    members: int = Field(3, ge=1, description="reward ensemble size")
    hidden: int = Field(64, ge=0, description="hidden width of each member; 0: a linear (tabular) reward")
    epochs: int = Field(100, ge=1)
    lr: float = Field(3e-3, gt=0)
    eval_episodes: int = Field(10, ge=1)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)


def query_schedule(budget: int, rounds: int, initial_fraction: float) -> list[int]:
    """Queries per round: ``initial_fraction`` of the budget first, the rest split evenly (sums to ``budget``)."""
    if rounds == 1:
        return [budget]
    first = max(1, round(budget * initial_fraction))
    rest = budget - first
    return [first] + [rest // (rounds - 1) + (1 if i < rest % (rounds - 1) else 0) for i in range(rounds - 1)]


@dataclass
class PreferenceResult:
    """What the loop leaves: the audit rows (one per round), the records asked, the reward model."""

    rows: list[dict[str, Any]]
    records: list[Comparison]
    model: RewardEnsemble


def learn_from_preferences(env_id: str, agent: Agent, cfg: PreferenceConfig, seed: int,
                           on_round: Callable[[dict[str, Any]], None] | None = None) -> PreferenceResult:  # fmt: skip
    """Christiano et al.'s loop; each round's audit row has ``step`` (queries so far), ``gold/mean`` (gold return
    of the deployed policy), ``proxy/mean`` (its return under the learned reward), ``visible/mean``, ``labels``,
    ``reward/accuracy`` (on this round's new labels, before fitting them) and ``reward/loss``."""
    rng = np.random.default_rng(seed)
    env = make_env(env_id)
    model: RewardEnsemble | None = None
    A: list[np.ndarray] = []
    B: list[np.ndarray] = []
    Y: list[float] = []
    records: list[Comparison] = []
    rows: list[dict[str, Any]] = []
    asked = 0
    for r, n_queries in enumerate(query_schedule(cfg.budget, cfg.rounds, cfg.initial_fraction)):
        # step 1. roll out the current agent
        episodes = []
        for _ in range(cfg.episodes_per_round):
            if hasattr(agent, "reset_clock"):
                agent.reset_clock()
            episodes.append(rollout(env_id, agent.act, int(rng.integers(2**31)), rng, env=env))
        # step 2. candidate pairs of segments; pick the queries
        segs = cut_segments(episodes, cfg.segment_length, rng, cfg.segments_per_episode)
        n_cand = n_queries * (cfg.oversample if cfg.active and model is not None else 1)
        pairs = rng.integers(0, len(segs), size=(n_cand, 2))
        fa = np.stack([segs[i].features for i in pairs[:, 0]])
        fb = np.stack([segs[j].features for j in pairs[:, 1]])
        chosen = select_queries(model if cfg.active else None, fa, fb, n_queries, rng)
        # step 3. ask the teacher
        new_a, new_b, new_y = [], [], []
        for q in chosen:
            sa, sb = segs[pairs[q, 0]], segs[pairs[q, 1]]
            label = teacher_label(sa.gold, sb.gold, cfg.teacher, rng)
            asked += 1
            if label is None:
                continue
            records.append(to_record(sa, sb, label))
            new_a.append(sa.features), new_b.append(sb.features), new_y.append(label)
        acc = preference_accuracy(model, np.stack(new_a), np.stack(new_b), np.array(new_y)) if model and new_y else math.nan  # fmt: skip
        A, B, Y = A + new_a, B + new_b, Y + new_y
        # step 4. fit the reward ensemble on every label so far
        model = RewardEnsemble(A[0].shape[-1], cfg.members, cfg.hidden, seed=seed * 1000 + r)
        loss = train_ensemble(model, np.stack(A), np.stack(B), np.array(Y), epochs=cfg.epochs, lr=cfg.lr,
                              seed=seed * 1000 + r)  # fmt: skip
        scale = _reward_scale(model, np.concatenate([s.features for s in segs]))
        reward = _scaled(model, scale)
        # step 5. optimize the agent on the learned reward
        agent.improve(reward)
        # step 6. audit
        ev = agent.evaluate(reward, cfg.eval_episodes, seed=seed * 7919 + r)
        row = {"step": asked, "round": r, "labels": len(Y), "gold/mean": ev["gold"], "proxy/mean": ev.get("learned"),
               "visible/mean": ev["visible"], "reward/loss": loss, "reward/accuracy": acc}  # fmt: skip
        if "kl/k1" in ev:  # KL of the policy to its start, as the language-model audit reports it
            row.update({k: ev[k] for k in ("kl/k1", "kl/k2", "kl/k3")})
            row.update({"kl/estimator": "k1", "kl/sqrt": math.sqrt(max(0.0, ev["kl/k1"]))})
        rows.append(row)
        if on_round is not None:
            on_round(row)
    assert model is not None
    return PreferenceResult(rows, records, model)


def _reward_scale(model: RewardEnsemble, x: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the learned reward on the collected steps (to normalize it)."""
    r = model.reward(x)
    return float(r.mean()), float(r.std() + 1e-8)


def _scaled(model: RewardEnsemble, scale: tuple[float, float]) -> RewardFn:
    mean, std = scale
    return lambda x: (model.reward(x) - mean) / std
