"""rewardlab's preference comparisons against HumanCompatibleAI/imitation 1.0.1's ``PreferenceComparisons``.

    python benchmarks/bench_imitation.py                       # both sides, seed 0, budget 1,000 comparisons
    python benchmarks/bench_imitation.py --seeds 0,1 --budget 500
    python benchmarks/bench_imitation.py --only imitation      # one side

Same environment (the fixed-horizon continuous cart-pole of :mod:`rewardlab.tasks.control.continuous`; the
teacher judges segments by the gold reward), same budget of comparisons, same PPO (SB3 ``MlpPolicy`` [32, 32],
4 envs x 512 steps, 10 epochs, lr 1e-3), same total PPO steps and rounds, 25-step segments, a perfectly
rational teacher on both sides (imitation: ``SyntheticGatherer(temperature=0)``). Reported per side: wall time, CPU
time (the machine is shared, so CPU seconds are the steadier measure) and the final gold return of the deterministic policy (mean of 10 episodes; the gold-trained PPO reaches 200).

imitation pins ``gymnasium~=0.29`` and ``stable-baselines3~=2.2``, so its side runs in its own virtual
environment, created by this script under ``/work/artifacts/imitation-venv`` (``--venv``): imitation 1.0.1 and
its pins are installed there; torch comes from rewardlab's environment through a ``.pth`` file placed after the
venv's own packages (so the pinned gymnasium and SB3 win). Each side runs in its own subprocess with one torch
thread. Results go to ``--out`` (JSON) and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTINUOUS = ROOT / "src" / "rewardlab" / "tasks" / "control" / "continuous.py"
PINS = ["imitation==1.0.1", "gymnasium~=0.29.1", "stable-baselines3~=2.2.1"]


def ensure_venv(venv: Path) -> Path:
    """The imitation venv's python (created and filled on first use)."""
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([py, "-c", "import imitation"], capture_output=True).returncode == 0:
        return py
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    # torch (and nothing else it would pick first) from rewardlab's environment, after the venv's own packages
    Path(site, "zz_rewardlab_torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([py, "-m", "pip", "install", "-q", *PINS], check=True)
    return py


# ------------------------------------------------------------------------------------------ the two sides
def run_rewardlab(seed: int, budget: int, steps: int, rounds: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(1)
    from rewardlab.control.deep import PPOAgent, PPOConfig, evaluate_policy
    from rewardlab.control.preferences import PreferenceConfig, learn_from_preferences
    from rewardlab.tasks.control.continuous import TRAVEL_ID

    t, cpu = time.perf_counter(), time.process_time()
    agent = PPOAgent(TRAVEL_ID, PPOConfig(), steps // rounds, seed)
    cfg = PreferenceConfig(budget=budget, rounds=rounds, segment_length=25, episodes_per_round=8,
                           segments_per_episode=8, hidden=64)  # fmt: skip
    learn_from_preferences(TRAVEL_ID, agent, cfg, seed)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    ev = evaluate_policy(
        TRAVEL_ID, lambda o: agent.model.predict(o, deterministic=True)[0], 10, seed=10_000 + seed
    )
    return {"wall_s": wall, "cpu_s": cpu, "gold": ev["gold"]}


def run_imitation(seed: int, budget: int, steps: int, rounds: int) -> dict[str, float]:
    """imitation's documented quickstart loop, with the settings above."""
    import importlib.util

    import numpy as np
    import torch

    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("rewardlab_continuous", CONTINUOUS)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["rewardlab_continuous"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    import gymnasium as gym
    from imitation.algorithms import preference_comparisons as pc
    from imitation.rewards.reward_nets import BasicRewardNet
    from imitation.util.networks import RunningNorm
    from imitation.util.util import make_vec_env
    from stable_baselines3 import PPO

    gym.register("bench/CartPoleGold-v0", entry_point="rewardlab_continuous:make_gold")
    t, cpu = time.perf_counter(), time.process_time()
    rng = np.random.default_rng(seed)
    venv = make_vec_env("bench/CartPoleGold-v0", rng=rng, n_envs=4)
    reward_net = BasicRewardNet(venv.observation_space, venv.action_space, normalize_input_layer=RunningNorm)
    agent = PPO("MlpPolicy", venv, n_steps=512, batch_size=128, n_epochs=10, learning_rate=1e-3, gamma=0.99,
                gae_lambda=0.95, policy_kwargs={"net_arch": [32, 32]}, seed=seed, device="cpu")  # fmt: skip
    trainer = pc.PreferenceComparisons(
        pc.AgentTrainer(algorithm=agent, reward_fn=reward_net, venv=venv, exploration_frac=0.05, rng=rng),
        reward_net, num_iterations=rounds, fragmenter=pc.RandomFragmenter(warning_threshold=0, rng=rng),
        preference_gatherer=pc.SyntheticGatherer(temperature=0, rng=rng),
        reward_trainer=pc.BasicRewardTrainer(preference_model=pc.PreferenceModel(reward_net),
                                             loss=pc.CrossEntropyRewardLoss(), epochs=3, rng=rng),
        fragment_length=25, transition_oversampling=1, initial_comparison_frac=0.1, allow_variable_horizon=False,
        initial_epoch_multiplier=4, query_schedule="hyperbolic",
    )  # fmt: skip
    trainer.train(total_timesteps=steps, total_comparisons=budget)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    env = gym.make("bench/CartPoleGold-v0")
    golds = []
    for k in range(10):
        obs, _ = env.reset(seed=10_000 + seed + k)
        g, done = 0.0, False
        while not done:
            obs, _, term, trunc, info = env.step(agent.predict(obs, deterministic=True)[0])
            g, done = g + float(info["gold_reward"]), term or trunc
        golds.append(g)
    return {"wall_s": wall, "cpu_s": cpu, "gold": float(np.mean(golds))}


SIDES = {"rewardlab": run_rewardlab, "imitation": run_imitation}


def child(args: argparse.Namespace) -> None:
    out = SIDES[args.child](args.seed, args.budget, args.steps, args.rounds)
    print("RESULT " + json.dumps(out), flush=True)


def run_side(side: str, python: str, args: argparse.Namespace, seed: int) -> dict[str, float]:
    cmd = [python, __file__, "--child", side, "--seed", str(seed), "--budget", str(args.budget), "--steps",
           str(args.steps), "--rounds", str(args.rounds)]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT / "src") if side == "rewardlab" else "",
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{side} seed {seed} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))  # type: ignore[no-any-return]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0")
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--steps", type=int, default=64_000, help="total PPO steps of each side")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--only", default="rewardlab,imitation")
    p.add_argument("--venv", type=Path, default=Path("/work/artifacts/imitation-venv"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results-imitation.json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    sides = [s.strip() for s in args.only.split(",") if s.strip()]
    results: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
    for seed in (int(s) for s in args.seeds.split(",")):
        for side in sides:
            python = str(ensure_venv(args.venv)) if side == "imitation" else sys.executable
            results[side].append({"seed": seed, **run_side(side, python, args, seed)})
            print(f"{side} seed {seed}: {results[side][-1]}", file=sys.stderr, flush=True)
    args.out.write_text(json.dumps({"budget": args.budget, "steps": args.steps, "rounds": args.rounds,
                                    "results": results}, indent=2) + "\n")  # fmt: skip
    print(
        "| side | seeds | wall time (s) | CPU time (s) | final gold return (of 200) |\n|---|---|---|---|---|"
    )
    for side, rows in results.items():
        wall, cpu, gold = (sum(r[k] for r in rows) / len(rows) for k in ("wall_s", "cpu_s", "gold"))
        print(f"| {side} | {len(rows)} | {wall:.0f} | {cpu:.0f} | {gold:.1f} |")


if __name__ == "__main__":
    main()
