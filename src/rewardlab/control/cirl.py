"""The CIRL robot: the human's actions are evidence about the reward, and the robot acts on its belief.

Cooperative inverse RL (Hadfield-Menell, Dragan, Abbeel & Russell 2016, "Cooperative Inverse Reinforcement
Learning") is a two-player game in which both players are paid the human's reward ``R(.; theta)``, the
human knows ``theta`` and the robot has a prior ``b_0(theta)``. With the human's policy fixed (here
Boltzmann-rational, ``pi_H(u | h; theta) ∝ exp(beta Q_theta(h, u))``), the robot's best response is the
solution of a POMDP whose hidden state is ``theta`` and whose belief is updated from every human move:

    b_{t+1}(theta) = b_t(theta) pi_H(u_t | h_t; theta) / sum_theta' b_t(theta') pi_H(u_t | h_t; theta')

(the paper's reduction of the game to a POMDP over ``theta``; its Theorem 3 makes the belief a sufficient
statistic). The robot maximizes the *expected gold* return under the belief, and can **wait** (watch one
more human move), **ask** (pay a cost, learn ``theta``) or **defer** (end the episode for a fixed payoff, as
in "The Off-Switch Game", Hadfield-Menell, Dragan, Abbeel & Russell 2017: a robot uncertain about the
reward prefers to let the human decide).

:class:`CIRLSolver` solves the POMDP **exactly** by expectimax over the finite horizon: the belief after a
history is a finite set of numbers, every branch (the human's ``<= 5`` moves, the robot's ``<= 7`` actions,
the answer to ``ask``) is enumerated, and values are memoized on ``(t, robot, human, belief)`` (the belief
rounded to 12 decimals for the key, the only approximation; values are exact to float precision). A belief
on one ``theta`` is finished with the full-information values (:func:`full_information_q`), which is exact
because the human's moves no longer change it.

Baselines on the same game: :class:`IRLThenOptimize` (watch a fixed batch of ``demo_steps`` human moves,
take the MAP ``theta`` — Bayesian IRL over the ``K`` candidate rewards with the same Boltzmann likelihood,
Ramachandran & Amir 2007 — then optimize that reward without listening again), :class:`FixedReward` (optimize a
fixed, possibly misspecified ``theta``) and :class:`Oracle` (knows ``theta``: the optimum). Episodes are
played with :func:`play_episode` and summarized by :func:`evaluate_robot`. Nothing here names a concrete
environment: the game arrives as an ``AssistanceModel``-like object (:class:`GameArrays`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from rewardlab.control.tabular import finite_horizon_q

BLOCKED = -1e9  # reward of an action the game does not offer (never chosen by a maximizer)
OUTCOMES = ("right", "wrong", "defer", "timeout")


class GameArrays(Protocol):
    """What the solver reads of a game (``rewardlab.tasks.control.assistance.AssistanceModel`` has it)."""

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
    wait: int
    ask: int
    defer: int


# ------------------------------------------------------------------------------------------ belief
def belief_update(belief: np.ndarray, likelihood: np.ndarray) -> np.ndarray:
    """Bayes' rule over ``theta``: ``b'(theta) ∝ b(theta) L(theta)`` (``L``: ``pi_H(u | h; theta)`` of the move seen).

    Raises when the move is impossible under every ``theta`` with positive belief."""
    post = np.asarray(belief, dtype=float) * np.asarray(likelihood, dtype=float)
    total = post.sum()
    if total <= 0:
        raise ValueError("the observed human move has probability 0 under the belief")
    return np.asarray(post / total)


def move_distribution(belief: np.ndarray, human_policy: np.ndarray, human: int) -> np.ndarray:
    """The robot's predictive distribution of the human's next move: ``p(u) = sum_theta b(theta) pi_H(u | h; theta)``."""
    return np.asarray(belief @ human_policy[:, human, :])


def map_theta(prior: np.ndarray, log_likelihood: np.ndarray, rng: np.random.Generator | None = None) -> int:
    """The MAP ``theta``: ``argmax log b_0(theta) + sum_t log pi_H(u_t | h_t; theta)`` (ties: uniformly at random
    with ``rng``, else the first)."""
    with np.errstate(divide="ignore"):
        score = np.log(prior) + log_likelihood
    best = np.flatnonzero(score >= score.max() - 1e-9)
    return int(best[0] if rng is None or len(best) == 1 else rng.choice(best))


# ------------------------------------------------------------------------------------------ planning
def usable_actions(game: GameArrays, robot: int) -> list[int]:
    """The robot's actions at a cell, in tie-break order: ``wait``, ``ask``, ``defer``, then the moves that move.

    Listing the non-committal actions first makes an indifferent robot hold back; a move into a wall (the same as
    ``wait``) is left out so it is never counted as a move."""
    head = [a for a in (game.wait, game.ask, game.defer) if game.allowed[a]]
    moves = [a for a in range(len(game.allowed)) if a not in (game.wait, game.ask, game.defer)
             and game.allowed[a] and game.robot_next[robot, a] != robot]  # fmt: skip
    return head + moves


def full_information_q(game: GameArrays, theta: int) -> np.ndarray:
    """``Q[t, c, a]``: optimal value of robot action ``a`` at cell ``c`` in round ``t`` when ``theta`` is known.

    Finite-horizon backward induction (:func:`rewardlab.control.tabular.finite_horizon_q`) on the robot's MDP
    with one absorbing ``done`` state (index ``C``) reached by actions that end the episode."""
    n, na = game.robot_next.shape
    P = np.zeros((n + 1, na, n + 1))
    R = np.zeros((n + 1, na, n + 1))
    for c in range(n):
        for a in range(na):
            P[c, a, n if game.ends[c, a] else game.robot_next[c, a]] = 1.0
            R[c, a, :] = game.reward[theta, c, a] if game.allowed[a] else BLOCKED
    P[n, :, n] = 1.0
    return finite_horizon_q(P, R, game.horizon)[:, :n, :]


def pick(q: np.ndarray, order: Sequence[int], atol: float = 1e-9) -> int:
    """The first action of ``order`` whose value is within ``atol`` of the best."""
    best = max(q[a] for a in order)
    return next(a for a in order if q[a] >= best - atol)


class CIRLSolver:
    """Exact expectimax over ``(round, robot cell, human cell, belief)`` (module docstring).

    ``value(t, r, h, b)``: expected gold return from round ``t`` on, before the human's move;
    ``q_values(t, r, h, b)``: the robot's action values after the human's round-``t`` move (``h`` its new cell).
    """

    def __init__(self, game: GameArrays):
        self.game = game
        self.full = np.stack([full_information_q(game, k) for k in range(len(game.goals))])  # (K, H, C, A)
        self._memo: dict[tuple[Any, ...], np.ndarray] = {}
        self._order = [usable_actions(game, r) for r in range(game.robot_next.shape[0])]

    @property
    def states_solved(self) -> int:
        return len(self._memo)

    def value(self, t: int, robot: int, human: int, belief: np.ndarray) -> float:
        g = self.game
        if t >= g.horizon:
            return 0.0
        sure = np.flatnonzero(belief > 0)
        if len(sure) == 1:  # theta known: the human's moves change nothing
            k = int(sure[0])
            return float(max(self.full[k, t, robot, a] for a in self._order[robot]))
        total = 0.0
        for u, p in enumerate(move_distribution(belief, g.human_policy, human)):
            if p > 0:
                post = belief_update(belief, g.human_policy[:, human, u])
                q = self.q_values(t, robot, int(g.human_next[human, u]), post)
                total += p * max(q[a] for a in self._order[robot])
        return total

    def q_values(self, t: int, robot: int, human: int, belief: np.ndarray) -> np.ndarray:
        key = (t, robot, human, tuple(np.round(belief, 12)))
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        g = self.game
        q = np.full(g.allowed.shape, -np.inf)
        for a in self._order[robot]:
            if a == g.ask:
                q[a] = sum(b * (g.reward[k, robot, a] + self.value(t + 1, robot, human, np.eye(len(belief))[k]))
                           for k, b in enumerate(belief) if b > 0)  # fmt: skip
            else:
                q[a] = float(belief @ g.reward[:, robot, a])
                if not g.ends[robot, a]:
                    q[a] += self.value(t + 1, int(g.robot_next[robot, a]), human, belief)
        self._memo[key] = q
        return q

    def root_value(self) -> float:
        """The game's value to the robot at the start (expected gold return of the CIRL robot)."""
        g = self.game
        return self.value(0, g.robot_start, g.human_start, np.asarray(g.prior, dtype=float))

    def act(self, t: int, robot: int, human: int, belief: np.ndarray) -> int:
        sure = np.flatnonzero(belief > 0)
        q = self.full[int(sure[0]), t, robot] if len(sure) == 1 else self.q_values(t, robot, human, belief)
        return pick(q, self._order[robot])


# ------------------------------------------------------------------------------------------ robots
class Robot(Protocol):
    """A robot policy in the assistance game: it sees the human's moves (and the answer to ``ask``)."""

    name: str

    def reset(self, rng: np.random.Generator, theta: int) -> None:
        """Start an episode (only :class:`Oracle` reads ``theta``)."""

    def observe(self, human: int, move: int) -> None:
        """The human at cell ``human`` made ``move``."""

    def hear(self, theta: int) -> None:
        """The answer to ``ask``."""

    def act(self, t: int, robot: int, human: int) -> int:
        """The action of round ``t`` (after the human's move; ``human`` is its new cell)."""


class CIRLRobot:
    """Keeps the exact posterior over ``theta`` and plays the POMDP's optimal action (:class:`CIRLSolver`)."""

    def __init__(self, solver: CIRLSolver, name: str = "cirl"):
        self.solver, self.name = solver, name
        self.belief = np.asarray(solver.game.prior, dtype=float)

    def reset(self, rng: np.random.Generator, theta: int) -> None:
        self.belief = np.asarray(self.solver.game.prior, dtype=float)

    def observe(self, human: int, move: int) -> None:
        self.belief = belief_update(self.belief, self.solver.game.human_policy[:, human, move])

    def hear(self, theta: int) -> None:
        self.belief = np.eye(len(self.belief))[theta]

    def act(self, t: int, robot: int, human: int) -> int:
        return self.solver.act(t, robot, human, self.belief)


class _KnownGoal:
    """Plays the full-information optimum for a goal it has settled on (``self.goal``)."""

    name = "known"

    def __init__(self, game: GameArrays, full: np.ndarray | None = None):
        self.game = game
        self.full = (
            full
            if full is not None
            else np.stack([full_information_q(game, k) for k in range(len(game.goals))])
        )
        self.order = [usable_actions(game, r) for r in range(game.robot_next.shape[0])]
        self.goal: int | None = None

    def observe(self, human: int, move: int) -> None:
        return None

    def hear(self, theta: int) -> None:
        return None

    def act_for(self, t: int, robot: int) -> int:
        assert self.goal is not None
        return pick(self.full[self.goal, t, robot], self.order[robot])


class Oracle(_KnownGoal):
    """Knows ``theta``: the full-information optimum (an upper bound for every robot)."""

    name = "oracle"

    def reset(self, rng: np.random.Generator, theta: int) -> None:
        self.goal = theta

    def act(self, t: int, robot: int, human: int) -> int:
        return self.act_for(t, robot)


class FixedReward(_KnownGoal):
    """Optimizes a fixed reward (goal ``goal``) whatever the human does: the misspecified-objective robot."""

    def __init__(self, game: GameArrays, goal: int, full: np.ndarray | None = None):
        super().__init__(game, full)
        self.fixed, self.name = goal, f"fixed (goal {goal})"

    def reset(self, rng: np.random.Generator, theta: int) -> None:
        self.goal = self.fixed

    def act(self, t: int, robot: int, human: int) -> int:
        return self.act_for(t, robot)


class IRLThenOptimize(_KnownGoal):
    """Watches ``demo_steps`` human moves (waiting meanwhile), takes the MAP ``theta`` (:func:`map_theta`), then
    optimizes that reward and stops listening."""

    def __init__(self, game: GameArrays, demo_steps: int, full: np.ndarray | None = None):
        if demo_steps < 1:
            raise ValueError(f"demo_steps must be >= 1, got {demo_steps}")
        super().__init__(game, full)
        self.demo_steps, self.name = demo_steps, f"irl ({demo_steps} move{'s' * (demo_steps > 1)})"
        self.loglik = np.zeros(len(game.goals))
        self.seen = 0
        self.rng = np.random.default_rng(0)

    def reset(self, rng: np.random.Generator, theta: int) -> None:
        self.goal, self.seen, self.rng = None, 0, rng
        self.loglik = np.zeros(len(self.game.goals))

    def observe(self, human: int, move: int) -> None:
        if self.goal is None:
            with np.errstate(divide="ignore"):
                self.loglik += np.log(self.game.human_policy[:, human, move])
            self.seen += 1

    def act(self, t: int, robot: int, human: int) -> int:
        if self.goal is None and self.seen < self.demo_steps:
            return self.game.wait
        if self.goal is None:
            self.goal = map_theta(np.asarray(self.game.prior), self.loglik, self.rng)
        return self.act_for(t, robot)


# ------------------------------------------------------------------------------------------ episodes
@dataclass(frozen=True)
class Episode:
    """One played episode: gold return, how it ended (``OUTCOMES``), whether the robot asked, how often it waited."""

    theta: int
    gold: float
    outcome: str
    asked: bool
    waits: int
    steps: int


def play_episode(game: GameArrays, robot: Robot, theta: int, rng: np.random.Generator) -> Episode:
    """One episode: each round the human moves (sampled from ``pi_H(. | h; theta)``), the robot sees it and acts."""
    r, h = game.robot_start, game.human_start
    robot.reset(rng, theta)
    gold, asked, waits = 0.0, False, 0
    for t in range(game.horizon):
        # step 1. the human moves; the robot sees the move
        u = int(rng.choice(game.human_policy.shape[2], p=game.human_policy[theta, h]))
        robot.observe(h, u)
        h = int(game.human_next[h, u])
        # step 2. the robot acts and is paid the gold reward
        a = robot.act(t, r, h)
        if not game.allowed[a]:
            raise ValueError(f"robot {robot.name} chose action {a}, which the game does not offer")
        gold += float(game.reward[theta, r, a])
        asked, waits = asked or a == game.ask, waits + (a == game.wait)
        if a == game.ask:
            robot.hear(theta)
        if game.ends[r, a]:
            outcome = (
                "defer"
                if a == game.defer
                else "right"
                if game.robot_next[r, a] == game.goals[theta]
                else "wrong"
            )
            return Episode(theta, gold, outcome, asked, waits, t + 1)
        r = int(game.robot_next[r, a])
    return Episode(theta, gold, "timeout", asked, waits, game.horizon)


def summarize(episodes: Sequence[Episode]) -> dict[str, float]:
    """Mean gold return and the behaviour rates: how episodes ended, asked at all, waited at least once, waits."""
    n = len(episodes)
    out = {"gold/mean": float(np.mean([e.gold for e in episodes])), "episodes": float(n)}
    for o in OUTCOMES:
        out[f"{o}_rate"] = sum(e.outcome == o for e in episodes) / n
    out["ask_rate"] = sum(e.asked for e in episodes) / n
    out["wait_rate"] = sum(e.waits > 0 for e in episodes) / n
    out["waits/mean"] = float(np.mean([e.waits for e in episodes]))
    return out


def evaluate_robot(game: GameArrays, robot: Robot, episodes: int, seed: int) -> dict[str, float]:
    """``episodes`` episodes with ``theta`` drawn from the prior (one generator seeded ``seed``)."""
    rng = np.random.default_rng(seed)
    played = [
        play_episode(game, robot, int(rng.choice(len(game.goals), p=game.prior)), rng)
        for _ in range(episodes)
    ]
    return summarize(played)
