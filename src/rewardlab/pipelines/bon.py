"""Recipe: best-of-n against the proxy, n = 1, 2, 4, ... max_n (or the divisors of max_n in ``bon.ns``), from the SFT policy.

For each prompt, ``max_n`` completions are sampled once; for each n they are cut into ``max_n / n``
disjoint groups and the proxy's favourite of each group is kept, so every n is estimated from the same
samples with ``max_n / n`` draws per prompt. KL(best-of-n || base) = log n - (n - 1) / n (analytic).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from rewardlab.audit.policy_eval import (
    describe_metrics,
    generate_responses,
    gold_parts,
    score_sample,
    summarize,
)
from rewardlab.audit.tracker import save_samples
from rewardlab.config import PipelineConfig
from rewardlab.losses import best_of_n_kl
from rewardlab.pipelines.common import eval_problems, load_stage_model, setup_stage, stage_input
from rewardlab.policies.models import load_tokenizer
from rewardlab.rewards.model import RewardModel
from rewardlab.runs import Run


def best_of_n_indices(proxy: torch.Tensor, n: int) -> torch.Tensor:
    """For each prompt, the index of the proxy's favourite in each of its ``N / n`` disjoint groups of ``n``.

    ``proxy`` is ``[P, N]`` (N samples per prompt, N a multiple of n); returns ``[P, N / n]`` indices into the
    prompt's N samples: group ``g`` holds samples ``g*n .. g*n + n - 1`` and keeps its highest-proxy one (the
    first on a tie). Best-of-n (Nakano et al. 2021; Gao et al. 2022) selects the *maximum* proxy.
    """
    P, N = proxy.shape
    if n < 1 or N % n:
        raise ValueError(f"best_of_n_indices: n={n} must divide the {N} samples per prompt")
    groups = proxy.reshape(P, N // n, n)
    return groups.argmax(dim=-1) + torch.arange(0, N, n, device=proxy.device)[None, :]


def run_bon(cfg: PipelineConfig, quiet: bool = False) -> Path:
    task = setup_stage(cfg, 6)
    bc = cfg.bon
    policy_path = stage_input(cfg, bc.policy_path, "sft", "model", "policy")
    reward_path = stage_input(cfg, bc.reward_path, "reward", "model", "reward model")
    run = Run(cfg.stage_dir("bon"), "bon", cfg, cfg.report_to, quiet, staged=True)
    run.write_json("../arm.json", cfg.arm_info())
    tok, policy, rm = (
        load_tokenizer(policy_path),
        load_stage_model(cfg, run, policy_path, "cpu").eval(),
        RewardModel.load(reward_path),
    )
    problems = eval_problems(task, bc.prompts)
    N = bc.max_n
    prompts = [task.prompt(p) for p in problems for _ in range(N)]
    run.info(f"sampling {N} completions for each of {len(problems)} prompts")
    responses = generate_responses(policy, tok, prompts, max_new_tokens=bc.max_new_tokens, temperature=bc.temperature,
                                   batch_size=1024, generator=torch.Generator().manual_seed(cfg.seed * 13 + 6))  # fmt: skip
    proxy = torch.tensor(rm(prompts, responses)).view(len(problems), N)
    (run.dir / "samples").mkdir(exist_ok=True)
    rows = []
    with (run.dir / "audit.jsonl").open("w", encoding="utf-8") as f:
        for n in bc.n_values():
            best = best_of_n_indices(proxy, n)  # [P, N/n] flat index in the prompt's N
            sel_problems, sel_samples = [], []
            for i, p in enumerate(problems):
                for j in best[i].tolist():
                    sel_problems.append(p)
                    sel_samples.append(score_sample(task, p, responses[i * N + j], float(proxy[i, j])))
            row = {"n": n, "kl": best_of_n_kl(n), "kl/sqrt": math.sqrt(best_of_n_kl(n)),
                   **summarize(task, sel_problems, sel_samples),
                   **gold_parts(sel_samples, task.info.gold_parts)}  # fmt: skip
            rows.append(row)
            f.write(json.dumps(row) + "\n")
            run.log_metrics(row, n)
            save_samples(run.dir / "samples" / f"n_{n}.jsonl", sel_samples[:: N // n], bc.samples_to_save)
            run.info(
                f"n={n:3d} KL {row['kl']:.2f}: proxy {row['proxy/mean']:+.3f}; {describe_metrics(task, row)}"
            )
    run.write_json("summary.json", {"rows": rows, "seconds": run.elapsed})
    return run.commit()
