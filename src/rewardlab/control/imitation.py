"""Behavioural cloning vs procedure cloning on gridworld mazes, tested on held-out layouts.

The expert navigates a maze by breadth-first search from the goal: BFS labels every free cell with its
distance to the goal, and the expert steps to a neighbour one closer (``u, d, l, r`` order on ties).

* **Behavioural cloning (BC)** (Pomerleau 1991; the chapter's imitation section): a network maps the
  observation (walls, agent, goal: three ``n x n`` planes) to the expert's action, trained by cross-entropy
  on the states of the expert's paths: ``min -sum log pi(a_E | o)``.
* **Procedure cloning (PC)** (Yang, Schuurmans, Abbeel & Nachum 2022, "Chain of thought imitation with
  procedure cloning"): the network imitates the expert's *computation* as well as its output. Here the
  computation is the BFS trace ``V_0 = {goal}, V_1, ..., V_K`` (``V_k``: cells at distance <= ``k``); a
  step network learns ``p(V_{k+1} | walls, V_k)`` (per-cell cross-entropy on every step of every training
  trace) and an action network learns ``p(a_E | walls, agent, V_{d-1})`` where ``d`` is the agent's
  distance (the step before the search reaches the agent). At test time PC unrolls its own step network
  from the goal, then reads the action off at the agent's cell, autoregressively as in the paper.

Both networks are small convolution stacks of the same width and depth; BC ends in a dense layer over the
whole maze (it must map a whole layout to one action), PC's networks are fully convolutional. PC's step
is a local rule, so it transfers to layouts it never saw; BC has to learn the global path from few mazes
and does not. :func:`compare` trains both on ``n_train`` mazes and reports success on ``n_test`` held-out
mazes (``python -m rewardlab.control.imitation``). :func:`tabular_bc` is BC on any tabular gridworld
(the count-based maximum-likelihood policy), for the normalized-return tables.
"""

from __future__ import annotations

import argparse
import json
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # u, d, l, r as in the gridworlds
UNREACHED = -1


class ImitationConfig(BaseModel):
    """The BC vs PC comparison: maze size and density, data sizes, network and training."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(9, ge=5)  # maze side including the border wall
    wall_prob: float = Field(0.3, ge=0.0, lt=1.0)
    min_distance: int = Field(4, ge=1)  # start at least this far from the goal
    n_train: int = Field(20, ge=1)
    n_test: int = Field(100, ge=1)
    width: int = Field(16, ge=4)
    depth: int = Field(2, ge=1)
    steps: int = Field(400, ge=1)  # optimizer steps for each network
    batch: int = Field(32, ge=1)
    lr: float = Field(5e-3, gt=0)
    seed: int = 0


@dataclass(frozen=True)
class Maze:
    """Walls (``True``), start and goal cells, and the BFS distance to the goal (``-1``: unreachable)."""

    walls: np.ndarray
    start: tuple[int, int]
    goal: tuple[int, int]
    dist: np.ndarray

    def layout(self) -> list[str]:
        """The maze in the gridworlds' layout format (``#`` walls, ``A`` start, ``G`` goal)."""
        rows = [["#" if w else " " for w in row] for row in self.walls]
        rows[self.start[0]][self.start[1]] = "A"
        rows[self.goal[0]][self.goal[1]] = "G"
        return ["".join(r) for r in rows]


def bfs_distances(walls: np.ndarray, goal: tuple[int, int]) -> np.ndarray:
    """Breadth-first search from ``goal``: steps to the goal from every free cell (``-1`` if unreachable)."""
    dist = np.full(walls.shape, UNREACHED, dtype=int)
    dist[goal] = 0
    queue = deque([goal])
    while queue:
        r, c = queue.popleft()
        for dr, dc in MOVES:
            nr, nc = r + dr, c + dc
            if not walls[nr, nc] and dist[nr, nc] == UNREACHED:
                dist[nr, nc] = dist[r, c] + 1
                queue.append((nr, nc))
    return dist


def random_maze(size: int, seed: int, wall_prob: float = 0.3, min_distance: int = 4) -> Maze:
    """A random maze (border walls, interior walls with ``wall_prob``), start reachable and ``>= min_distance`` away."""
    rng = np.random.default_rng(seed)
    while True:
        walls = rng.random((size, size)) < wall_prob
        walls[0, :] = walls[-1, :] = walls[:, 0] = walls[:, -1] = True
        free = np.argwhere(~walls)
        if len(free) < 2:
            continue
        goal = tuple(int(x) for x in free[rng.integers(len(free))])
        dist = bfs_distances(walls, goal)  # type: ignore[arg-type]
        far = np.argwhere(dist >= min_distance)
        if len(far):
            start = tuple(int(x) for x in far[rng.integers(len(far))])
            return Maze(walls, start, goal, dist)  # type: ignore[arg-type]


def expert_action(maze: Maze, pos: tuple[int, int]) -> int:
    """The BFS expert's move from ``pos``: the first neighbour one step closer to the goal."""
    d = maze.dist[pos]
    for a, (dr, dc) in enumerate(MOVES):
        nxt = (pos[0] + dr, pos[1] + dc)
        if not maze.walls[nxt] and maze.dist[nxt] == d - 1:
            return a
    raise ValueError(f"no move towards the goal from {pos} (distance {d})")


def expert_path(maze: Maze) -> list[tuple[tuple[int, int], int]]:
    """(cell, action) along the expert's path from the start to the goal."""
    pos, out = maze.start, []
    while pos != maze.goal:
        a = expert_action(maze, pos)
        out.append((pos, a))
        pos = (pos[0] + MOVES[a][0], pos[1] + MOVES[a][1])
    return out


def bfs_trace(maze: Maze) -> list[np.ndarray]:
    """The expert's procedure: ``V_k`` = cells at distance ``<= k``, for ``k = 0..max distance``."""
    top = int(maze.dist.max())
    return [(maze.dist >= 0) & (maze.dist <= k) for k in range(top + 1)]


def _plane(shape: tuple[int, int], cell: tuple[int, int]) -> np.ndarray:
    p = np.zeros(shape, dtype=np.float32)
    p[cell] = 1.0
    return p


def bc_observation(maze: Maze, pos: tuple[int, int]) -> np.ndarray:
    """BC's input: walls, agent and goal planes ``(3, n, n)``."""
    return np.stack(
        [maze.walls.astype(np.float32), _plane(maze.walls.shape, pos), _plane(maze.walls.shape, maze.goal)]
    )


def _convs(c_in: int, width: int, depth: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv2d(c_in if i == 0 else width, width, 3, padding=1), nn.ReLU()]
    return layers


class BCNet(nn.Module):
    """Convolutions, then a dense layer over the whole maze to 4 action logits."""

    def __init__(self, size: int, width: int, depth: int):
        super().__init__()
        self.net = nn.Sequential(*_convs(3, width, depth), nn.Flatten(), nn.Linear(width * size * size, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class FullyConv(nn.Module):
    """Convolutions to ``c_out`` logits per cell."""

    def __init__(self, c_in: int, c_out: int, width: int, depth: int):
        super().__init__()
        self.net = nn.Sequential(*_convs(c_in, width, depth), nn.Conv2d(width, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def _train(model: nn.Module, loss_fn, n: int, cfg: ImitationConfig, gen: torch.Generator) -> list[float]:  # type: ignore[no-untyped-def]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    losses = []
    for _ in range(cfg.steps):
        idx = torch.randint(n, (min(cfg.batch, n),), generator=gen)
        loss = loss_fn(idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def train_bc(mazes: list[Maze], cfg: ImitationConfig, gen: torch.Generator) -> BCNet:
    """BC: cross-entropy of the expert's action on every state of every training path."""
    obs, acts = [], []
    for m in mazes:
        for pos, a in expert_path(m):
            obs.append(bc_observation(m, pos))
            acts.append(a)
    X, y = torch.from_numpy(np.stack(obs)), torch.tensor(acts)
    model = BCNet(cfg.size, cfg.width, cfg.depth)
    _train(model, lambda i: nn.functional.cross_entropy(model(X[i]), y[i]), len(y), cfg, gen)
    return model


@dataclass
class ProcedureCloner:
    """PC's two networks: one BFS step ``(walls, V_k) -> V_{k+1}`` and the action ``(walls, agent, V_{d-1}) -> a``."""

    step: FullyConv
    act: FullyConv

    @torch.no_grad()
    def trace(self, walls: np.ndarray, goal: tuple[int, int], max_steps: int) -> np.ndarray:
        """Unroll the learned search from the goal: the step at which each cell is first reached (``-1``: never)."""
        w = torch.from_numpy(walls.astype(np.float32))
        visited = torch.zeros_like(w)
        visited[goal] = 1.0
        first = np.full(walls.shape, UNREACHED, dtype=int)
        first[goal] = 0
        for k in range(1, max_steps + 1):
            logits = self.step(torch.stack([w, visited])[None])[0, 0]
            nxt = torch.maximum(visited, (logits > 0).float()) * (1 - w)
            new = (nxt > visited).numpy()
            if not new.any():
                break
            first[new] = k
            visited = nxt
        return first

    @torch.no_grad()
    def action(self, walls: np.ndarray, pos: tuple[int, int], first: np.ndarray) -> int:
        d = first[pos]
        before = (
            ((first >= 0) & (first < d)).astype(np.float32)
            if d > 0
            else np.zeros_like(first, dtype=np.float32)
        )
        x = np.stack([walls.astype(np.float32), _plane(walls.shape, pos), before])
        return int(self.act(torch.from_numpy(x)[None])[0, :, pos[0], pos[1]].argmax())


def train_pc(mazes: list[Maze], cfg: ImitationConfig, gen: torch.Generator) -> ProcedureCloner:
    """PC: per-cell cross-entropy on every BFS step of every training maze, and the action at the path's cells."""
    step_x, step_y = [], []
    for m in mazes:
        trace = bfs_trace(m)
        w = m.walls.astype(np.float32)
        for k in range(len(trace)):
            nxt = trace[k + 1] if k + 1 < len(trace) else trace[k]
            step_x.append(np.stack([w, trace[k].astype(np.float32)]))
            step_y.append(nxt.astype(np.float32))
    act_x, act_y, act_at = [], [], []
    for m in mazes:
        for pos, a in expert_path(m):
            before = ((m.dist >= 0) & (m.dist < m.dist[pos])).astype(np.float32)
            act_x.append(np.stack([m.walls.astype(np.float32), _plane(m.walls.shape, pos), before]))
            act_y.append(a)
            act_at.append(pos)
    SX, SY = torch.from_numpy(np.stack(step_x)), torch.from_numpy(np.stack(step_y))
    step = FullyConv(2, 1, cfg.width, cfg.depth)
    _train(
        step,
        lambda i: nn.functional.binary_cross_entropy_with_logits(step(SX[i])[:, 0], SY[i]),
        len(SY),
        cfg,
        gen,
    )
    AX, AY = torch.from_numpy(np.stack(act_x)), torch.tensor(act_y)
    rows, cols = torch.tensor([p[0] for p in act_at]), torch.tensor([p[1] for p in act_at])
    act = FullyConv(3, 4, cfg.width, cfg.depth)

    def act_loss(i: torch.Tensor) -> torch.Tensor:
        logits = act(AX[i])[torch.arange(len(i)), :, rows[i], cols[i]]
        return nn.functional.cross_entropy(logits, AY[i])

    _train(act, act_loss, len(AY), cfg, gen)
    return ProcedureCloner(step, act)


def rollout(maze: Maze, policy, max_steps: int) -> tuple[bool, int]:  # type: ignore[no-untyped-def]
    """Run ``policy(pos) -> action`` from the start; (reached the goal, steps taken). Walls block moves."""
    pos = maze.start
    for t in range(max_steps):
        if pos == maze.goal:
            return True, t
        a = policy(pos)
        nxt = (pos[0] + MOVES[a][0], pos[1] + MOVES[a][1])
        pos = pos if maze.walls[nxt] else nxt
    return pos == maze.goal, max_steps


def evaluate_on(mazes: list[Maze], bc: BCNet, pc: ProcedureCloner) -> dict[str, float]:
    """Success rate and mean path-length ratio (optimal / taken, 0 on failure) of BC and PC on ``mazes``."""
    out: dict[str, list[float]] = {"bc_success": [], "pc_success": [], "bc_spl": [], "pc_spl": []}
    for m in mazes:
        budget = m.walls.size
        with torch.no_grad():
            ok, t = rollout(
                m, lambda p, m=m: int(bc(torch.from_numpy(bc_observation(m, p))[None]).argmax()), budget
            )
        out["bc_success"].append(float(ok))
        out["bc_spl"].append(m.dist[m.start] / max(t, 1) if ok else 0.0)
        first = pc.trace(m.walls, m.goal, budget)
        ok, t = rollout(m, lambda p, m=m, first=first: pc.action(m.walls, p, first), budget)
        out["pc_success"].append(float(ok))
        out["pc_spl"].append(m.dist[m.start] / max(t, 1) if ok else 0.0)
    return {k: float(np.mean(v)) for k, v in out.items()}


def compare(cfg: ImitationConfig) -> dict[str, float]:
    """Train BC and PC on ``n_train`` mazes; success and path ratio on the training mazes and on ``n_test``
    held-out mazes (disjoint seeds)."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train = [
        random_maze(cfg.size, cfg.seed * 1_000_003 + i, cfg.wall_prob, cfg.min_distance)
        for i in range(cfg.n_train)
    ]
    test = [random_maze(cfg.size, 10**9 + cfg.seed * 1_000_003 + i, cfg.wall_prob, cfg.min_distance)
            for i in range(cfg.n_test)]  # fmt: skip
    bc = train_bc(train, cfg, gen)
    pc = train_pc(train, cfg, gen)
    held_out = evaluate_on(test, bc, pc)
    seen = evaluate_on(train, bc, pc)
    return {**{f"test/{k}": v for k, v in held_out.items()}, **{f"train/{k}": v for k, v in seen.items()}}


def tabular_bc(demos: list[list[tuple[int, int]]], n_states: int, n_actions: int) -> np.ndarray:
    """Behavioural cloning on a tabular env: the maximum-likelihood policy ``pi(a|s) = N(s, a) / N(s)`` from
    demonstrations (lists of ``(state, action)``); uniform on states no demonstration visits. ``(S, A)``."""
    counts = np.zeros((n_states, n_actions))
    for demo in demos:
        for s, a in demo:
            counts[s, a] += 1
    seen = counts.sum(axis=1, keepdims=True)
    return np.where(seen > 0, counts / np.maximum(seen, 1), 1.0 / n_actions)


def plot_imitation(rows: list[dict[str, float]], path: str) -> None:
    """Held-out success of BC and PC against the number of training mazes (mean and spread over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({int(r["n_train"]) for r in rows})
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for key, label, colour in (("test/pc_success", "procedure cloning (held-out)", "tab:green"),
                               ("test/bc_success", "behavioural cloning (held-out)", "tab:purple"),
                               ("train/bc_success", "behavioural cloning (training mazes)", "tab:gray")):  # fmt: skip
        vals = [[r[key] for r in rows if int(r["n_train"]) == n] for n in sizes]
        mean, std = np.array([np.mean(v) for v in vals]), np.array([np.std(v) for v in vals])
        ax.errorbar(sizes, mean, yerr=std, marker="o", capsize=3, label=label, color=colour)
    ax.set_xscale("log")
    ax.set_xlabel("training mazes (expert demonstrations + BFS traces)")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m rewardlab.control.imitation", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--n-train", default="5,20,100", help="comma-separated training-set sizes (mazes)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per network")
    parser.add_argument(
        "--rows", default=None, help="plot these JSONL rows (an earlier run's output) instead of training"
    )
    parser.add_argument("--plot", default=None, help="PNG of held-out success against training mazes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.rows:
        with open(args.rows, encoding="utf-8") as f:
            results = [json.loads(line) for line in f if line.strip()]
    else:
        results = []
        for n in [int(x) for x in args.n_train.split(",")]:
            for seed in [int(x) for x in args.seeds.split(",")]:
                row = {
                    "n_train": n,
                    "seed": seed,
                    **compare(ImitationConfig(n_train=n, seed=seed, steps=args.steps)),
                }
                print(json.dumps(row), flush=True)
                results.append(row)
    if args.plot:
        plot_imitation(results, args.plot)
