"""Benchmark ``ppo.shared_prompt``: one training forward-backward of PPO's ``policy_forward`` over prompt groups,
one row per sample vs one row per prompt (:func:`rewardlab.policies.packing.pack_prompt_groups`).

Builds ``bench_trl.py``'s local Llama models (``benchmarks/bench_assets.py``; nothing is downloaded), makes a
batch of ``--groups`` prompts of ``--prompt-len`` random tokens, each with ``--samples`` responses of
``--response-len`` tokens, and times ``policy_forward`` (log-probs and entropy of every response token, a value
head on the trunk) plus the backward of their sum, the two layouts alternating, one torch thread by default.
Prints the median milliseconds of each and the speed-up, per size and shape::

    python benchmarks/bench_packing.py                                   # the benchmark's GRPO shape and a long one
    python benchmarks/bench_packing.py --shapes 16x48x4x2 --sizes 11m --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rewardlab.optimize.ppo import SharedValueHead, policy_forward
from rewardlab.policies.models import load_causal_lm
from rewardlab.policies.sampling import SampleBatch


def grouped_batch(vocab: int, prompt_len: int, response_len: int, samples: int, groups: int) -> SampleBatch:
    """``groups`` random prompts, each repeated ``samples`` times with its own random full-length response."""
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(5, vocab, (groups, prompt_len), generator=g).repeat_interleave(samples, dim=0)
    responses = torch.randint(5, vocab, (groups * samples, response_len), generator=g)
    ones = torch.ones_like
    return SampleBatch(prompts, ones(prompts), responses, ones(responses), torch.zeros(responses.shape),
                       torch.zeros(len(responses), dtype=torch.bool))  # fmt: skip


def time_layouts(model: torch.nn.Module, batch: SampleBatch, repeats: int) -> dict[str, float]:
    """Median seconds of one forward-backward per layout (``rows``: one per sample; ``packed``: one per prompt)."""
    critic = SharedValueHead(model.config.hidden_size)  # type: ignore[union-attr]
    torch.nn.init.normal_(critic.head.weight, std=0.02)

    def step(shared_prompt: bool) -> float:
        t0 = time.perf_counter()
        out = policy_forward(
            model, critic, batch, 1.0, shared_prompt, entropy=True
        )  # as ppo_update's forward
        (out.logprobs.sum() + out.values.sum()).backward()  # type: ignore[operator]
        model.zero_grad(set_to_none=True)
        critic.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for layout in (False, True):  # warm-up
        step(layout)
    times: dict[str, list[float]] = {"rows": [], "packed": []}
    for r in range(repeats):
        order = [("rows", False), ("packed", True)]
        for name, layout in order if r % 2 == 0 else order[::-1]:
            times[name].append(step(layout))
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1m,11m")
    ap.add_argument("--shapes", default="16x48x4x2,128x128x8x1",
                    help="comma list of PROMPTxRESPONSExSAMPLESxGROUPS (token counts)")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--assets", default=None, help="reuse bench_trl.py's assets folder (default: build one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_assets import build_assets

    sizes = [s for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        assets = Path(args.assets) if args.assets else build_assets(tmp, sizes=sizes)
        print(
            "| size | prompt x response x samples x groups | one row per sample ms | one row per prompt ms | speed-up |"
        )
        print("|---|---|---|---|---|")
        for size in sizes:
            model = load_causal_lm(assets / "models" / size).train()
            for shape in args.shapes.split(","):
                p, r, k, g = (int(x) for x in shape.split("x"))
                batch = grouped_batch(int(model.config.vocab_size), p, r, k, g)
                t = time_layouts(model, batch, args.repeats)
                print(f"| {size} | {shape} | {t['rows'] * 1e3:.1f} | {t['packed'] * 1e3:.1f} | "
                      f"{t['rows'] / t['packed']:.2f}x |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
