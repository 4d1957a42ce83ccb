"""An assistance game (CIRL) on a small gridworld: the human knows which goal they want, the robot does not.

Hadfield-Menell, Dragan, Abbeel & Russell 2016 ("Cooperative Inverse Reinforcement Learning"): a two-player
game of partial information in which both players are paid the *human's* reward ``R(s, a_H, a_R; theta)``,
the human observes ``theta`` and the robot only has a prior over it. Here:

* The map is a fork: a corridor of ``corridor`` cells leads the human up to a fork cell, from which ``arm``
  cells lead to each of ``n_goals`` goal objects (left, right, and with three goals, up). The robot starts at
  the fork; the human starts at the bottom of the corridor (at the fork when ``corridor = 0``)::

      #####          n_goals=3, arm=2, corridor=2
      ##c##
      ## ##
      #a*b#          * the fork (robot start)
      ## ##
      ##H##          H the human's start

* ``theta`` (drawn from ``prior`` at reset) is the goal the human wants fetched. Each round the **human moves
  first**, Boltzmann-rationally towards goal ``theta`` (``pi(u | h; theta) ∝ exp(beta Q_theta(h, u))``,
  ``Q_theta(h, u) = -1 - dist(h', goal_theta)``, ``u`` in up/down/left/right/stay, moves into walls not
  allowed), then the robot acts: ``up, down, left, right, wait, ask, defer``.
* Gold reward of a robot action (both players'): ``-step_cost`` every round; arriving at goal ``theta`` pays
  ``+goal_reward``, arriving at another goal ``-wrong_penalty`` (either ends the episode); ``ask`` costs
  ``ask_cost`` more and the human answers ``theta`` truthfully (``info["answer"]``); ``defer`` ends the
  episode with ``defer_reward`` (the human does the job themselves: the off-switch game's "defer",
  Hadfield-Menell et al. 2017). The **visible** reward (what the robot sees) is the theta-free part: the
  step and ask costs.

:meth:`AssistanceGame.model` gives the whole game as arrays (:class:`AssistanceModel`), for the exact solver
in :mod:`rewardlab.control.cirl`; ``step`` uses the same arrays, so they cannot disagree. Observations are
``robot_cell * n_cells + human_cell``; ``info`` carries ``gold_reward``, ``human_action`` (the human's move
this round, observed by the robot), ``robot``/``human`` cells and, after ``ask``, ``answer``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

Pos = tuple[int, int]
MOVES: tuple[Pos, ...] = ((-1, 0), (1, 0), (0, -1), (0, 1), (0, 0))
HUMAN_ACTIONS = ("up", "down", "left", "right", "stay")
ROBOT_ACTIONS = ("up", "down", "left", "right", "wait", "ask", "defer")
WAIT, ASK, DEFER = 4, 5, 6
GOAL_CHARS = "abc"


@dataclass(frozen=True)
class Payoffs:
    """The game's gold payoffs: reaching the human's goal, reaching another one, each round, asking, deferring."""

    goal_reward: float = 10.0
    wrong_penalty: float = 10.0
    step_cost: float = 1.0
    ask_cost: float = 2.0
    defer_reward: float = 0.0

    @classmethod
    def of(cls, value: Payoffs | Mapping[str, float] | None) -> Payoffs:
        """``value`` as payoffs: ``None`` gives the defaults, a mapping overrides the named ones."""
        if value is None or isinstance(value, Payoffs):
            return value or cls()
        unknown = set(value) - set(asdict(cls()))
        if unknown:
            raise ValueError(f"payoffs: unknown field(s) {sorted(unknown)}; known: {sorted(asdict(cls()))}")
        return cls(**{k: float(v) for k, v in value.items()})


@dataclass(frozen=True)
class AssistanceModel:
    """The assistance game as arrays (``C`` open cells, ``K`` goals, robot actions ``ROBOT_ACTIONS``).

    ``robot_next[c, a]``: the robot's cell after action ``a`` (non-moves and walls: the same cell);
    ``human_next[c, u]``: the human's cell after move ``u`` (``-1``: not allowed);
    ``human_policy[k, c, u]``: ``pi(u | c; theta = k)`` (rows sum to 1);
    ``reward[k, c, a]``: gold reward of robot action ``a`` at ``c`` when ``theta = k``;
    ``ends[c, a]``: the action ends the episode (arrival at a goal, defer);
    ``allowed[a]``: which robot actions the game offers (``ask``/``defer`` can be switched off).
    """

    cells: tuple[Pos, ...]
    goals: tuple[int, ...]
    robot_start: int
    human_start: int
    robot_next: np.ndarray
    human_next: np.ndarray
    human_policy: np.ndarray
    reward: np.ndarray
    ends: np.ndarray
    allowed: np.ndarray
    prior: np.ndarray
    horizon: int
    action_names: tuple[str, ...] = ROBOT_ACTIONS
    wait: int = WAIT
    ask: int = ASK
    defer: int = DEFER

    @property
    def n_goals(self) -> int:
        return len(self.goals)


def fork_layout(n_goals: int, arm: int, corridor: int) -> tuple[tuple[str, ...], Pos, Pos]:
    """The map (rows; ``#`` walls, ``a``/``b``/``c`` goals), the fork (robot start) and the human's start."""
    if n_goals not in (2, 3):
        raise ValueError(f"n_goals must be 2 or 3, got {n_goals}")
    if arm < 1 or corridor < 0:
        raise ValueError(f"arm must be >= 1 and corridor >= 0, got arm={arm}, corridor={corridor}")
    width = 2 * arm + 3
    up = arm if n_goals == 3 else 0
    rows = [["#"] * width for _ in range(up + corridor + 3)]
    fork = (up + 1, arm + 1)
    for c in range(1, width - 1):
        rows[fork[0]][c] = " "
    rows[fork[0]][1], rows[fork[0]][width - 2] = "a", "b"
    for r in range(1, up + 1):
        rows[r][fork[1]] = "c" if r == 1 else " "
    for r in range(fork[0] + 1, fork[0] + 1 + corridor):
        rows[r][fork[1]] = " "
    return tuple("".join(r) for r in rows), fork, (fork[0] + corridor, fork[1])


def distances(open_cells: set[Pos], target: Pos) -> dict[Pos, int]:
    """Shortest-path steps from every open cell to ``target`` (breadth first)."""
    dist = {target: 0}
    queue = deque([target])
    while queue:
        p = queue.popleft()
        for dr, dc in MOVES[:4]:
            q = (p[0] + dr, p[1] + dc)
            if q in open_cells and q not in dist:
                dist[q] = dist[p] + 1
                queue.append(q)
    return dist


def boltzmann(q: np.ndarray, beta: float) -> np.ndarray:
    """``pi(u) ∝ exp(beta q(u))`` over the finite entries of ``q`` (``-inf``: not allowed); ``beta = inf``
    is uniform over the maximizers, ``beta = 0`` uniform over the allowed moves."""
    ok = np.isfinite(q)
    if math.isinf(beta):
        best = ok & (q >= q[ok].max() - 1e-12)
        return best / best.sum()
    z = np.where(ok, np.exp(beta * (np.where(ok, q, 0.0) - q[ok].max())), 0.0)
    return np.asarray(z / z.sum())


class AssistanceGame(gym.Env[int, int]):
    """The fork assistance game (module docstring) as a gymnasium env, registered ``rewardlab/Assistance-v0``."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, n_goals: int = 2, arm: int = 2, corridor: int = 2, beta: float = 2.0, horizon: int = 12,
                 payoffs: Payoffs | Mapping[str, float] | None = None, allow_ask: bool = True,
                 allow_defer: bool = True, prior: list[float] | None = None,
                 render_mode: str | None = None):  # fmt: skip
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}"
            )
        self.layout, self.fork, self.human_home = fork_layout(n_goals, arm, corridor)
        self.beta, self.render_mode = beta, render_mode
        self.payoffs = Payoffs.of(payoffs)
        p = np.full(n_goals, 1.0 / n_goals) if prior is None else np.asarray(prior, dtype=float)
        if p.shape != (n_goals,) or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
            raise ValueError(f"prior must be {n_goals} non-negative numbers summing to 1, got {prior}")
        self._model = self._build(p, horizon, allow_ask, allow_defer)
        m = self._model
        self.observation_space = spaces.Discrete(len(m.cells) ** 2)
        self.action_space = spaces.Discrete(len(ROBOT_ACTIONS))
        self.theta, self.robot, self.human, self.t = 0, m.robot_start, m.human_start, 0

    # --- the game as arrays ----------------------------------------------------------------------------------
    def model(self) -> AssistanceModel:
        """The whole game as arrays (:class:`AssistanceModel`)."""
        return self._model

    def _build(self, prior: np.ndarray, horizon: int, allow_ask: bool, allow_defer: bool) -> AssistanceModel:
        cells = tuple((r, c) for r, row in enumerate(self.layout) for c, ch in enumerate(row) if ch != "#")
        index = {p: i for i, p in enumerate(cells)}
        goals = tuple(index[(r, c)] for ch in GOAL_CHARS[: len(prior)]
                      for r, row in enumerate(self.layout) for c, x in enumerate(row) if x == ch)  # fmt: skip
        n, k, na = len(cells), len(goals), len(ROBOT_ACTIONS)
        human_next = np.full((n, len(MOVES)), -1, dtype=int)
        robot_next = np.tile(np.arange(n)[:, None], (1, na))
        for i, (r, c) in enumerate(cells):
            for u, (dr, dc) in enumerate(MOVES):
                j = index.get((r + dr, c + dc))
                if j is not None:
                    human_next[i, u] = j
                    if u < 4:
                        robot_next[i, u] = j
        policy = np.zeros((k, n, len(MOVES)))
        for g, goal in enumerate(goals):
            dist = distances(set(cells), cells[goal])
            for i in range(n):
                q = np.array([-1.0 - dist[cells[j]] if j >= 0 else -np.inf for j in human_next[i]])
                policy[g, i] = boltzmann(q, self.beta)
        c = self.payoffs
        reward = np.full((k, n, na), -c.step_cost)
        reward[:, :, ASK] -= c.ask_cost
        reward[:, :, DEFER] += c.defer_reward
        ends = np.zeros((n, na), dtype=bool)
        ends[:, DEFER] = True
        for i in range(n):
            for a in range(4):
                j = robot_next[i, a]
                if j != i and j in goals:
                    ends[i, a] = True
                    for g, goal in enumerate(goals):
                        reward[g, i, a] += c.goal_reward if j == goal else -c.wrong_penalty
        allowed = np.ones(na, dtype=bool)
        allowed[ASK], allowed[DEFER] = allow_ask, allow_defer
        return AssistanceModel(cells=cells, goals=goals, robot_start=index[self.fork],
                               human_start=index[self.human_home], robot_next=robot_next, human_next=human_next,
                               human_policy=policy, reward=reward, ends=ends, allowed=allowed, prior=prior,
                               horizon=horizon)  # fmt: skip

    # --- gymnasium API ----------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:  # fmt: skip
        """Draw ``theta`` (or take ``options["theta"]``); the human makes the first round's move."""
        super().reset(seed=seed)
        m = self._model
        self.theta = int((options or {}).get("theta", self.np_random.choice(m.n_goals, p=m.prior)))
        self.robot, self.human, self.t = m.robot_start, m.human_start, 0
        u = self._human_move()
        return self._obs(), {"gold_reward": 0.0, "human_action": u, **self._where()}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        m = self._model
        if not self.action_space.contains(action) or not m.allowed[action]:
            raise ValueError(f"action must be an allowed robot action ({ROBOT_ACTIONS}), got {action!r}")
        gold = float(m.reward[self.theta, self.robot, action])
        visible = -self.payoffs.step_cost - (self.payoffs.ask_cost if action == ASK else 0.0)
        terminated = bool(m.ends[self.robot, action])
        info: dict[str, Any] = {"gold_reward": gold}
        if action == ASK:
            info["answer"] = self.theta
        self.robot = int(m.robot_next[self.robot, action])
        self.t += 1
        truncated = not terminated and self.t >= m.horizon
        if not (terminated or truncated):
            info["human_action"] = self._human_move()
        return self._obs(), visible, terminated, truncated, {**info, **self._where()}

    def _human_move(self) -> int:
        m = self._model
        u = int(self.np_random.choice(len(MOVES), p=m.human_policy[self.theta, self.human]))
        self.human = int(m.human_next[self.human, u])
        return u

    def _obs(self) -> int:
        return self.robot * len(self._model.cells) + self.human

    def _where(self) -> dict[str, Any]:
        return {"robot": self.robot, "human": self.human}

    def render(self) -> str | None:  # type: ignore[override]
        if self.render_mode != "ansi":
            return None
        rows = [list(r) for r in self.layout]
        cells = self._model.cells
        for who, ch in ((self.human, "H"), (self.robot, "R")):
            r, c = cells[who]
            rows[r][c] = "*" if self.robot == self.human else ch
        return "\n".join("".join(r) for r in rows)
