"""Benchmark :func:`rewardlab.policies.sampling.sample` against ``model.generate`` on CPU.

Builds tiny local Llama models with the arithmetic task tokenizer (nothing is downloaded), then
times the two samplers alternately (A B A B ...) on the same left-padded prompt batch, both forced
to produce exactly ``--new-tokens`` tokens per row (EOS disabled in ``sample``,
``min_new_tokens`` in ``generate``), and prints new tokens/s for each and the speed-up
(``generate`` time / ``sample`` time) as min/median/max over the repeats. It also checks that greedy
outputs (with EOS enabled) are identical.

    python benchmarks/bench_sampler.py --sizes 1m,11m --batch 64,256 --new-tokens 24 --repeats 5
    python benchmarks/bench_sampler.py --sizes 1m --batch 256 --group 8   # GRPO-style repeated prompts
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from transformers import PreTrainedModel

from rewardlab.policies.models import ModelConfig, build_causal_lm, num_parameters
from rewardlab.policies.sampling import encode_prompts, sample
from rewardlab.policies.tokenizer import build_task_tokenizer
from rewardlab.tasks.arithmetic import TASK_WORDS, ArithmeticTask

SIZES: dict[str, ModelConfig] = {
    "1m": ModelConfig(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=352),
    "11m": ModelConfig(hidden_size=384, num_layers=4, num_heads=6, intermediate_size=1536),
}


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_one(
    model: PreTrainedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    new_tokens: int,
    repeats: int,
    eos: int,
    pad: int,
) -> dict[str, float | bool]:
    """Time ``sample`` vs ``generate`` (ABAB) and check greedy agreement on one batch."""
    batch = ids.shape[0]
    gen = torch.Generator().manual_seed(0)

    def run_sample() -> None:
        out = sample(
            model, ids, mask, max_new_tokens=new_tokens, eos_token_id=-1, pad_token_id=pad, generator=gen
        )
        assert out.response_ids.shape == (batch, new_tokens)

    def run_generate() -> None:
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                eos_token_id=eos,
                pad_token_id=pad,
            )
        assert out.shape == (batch, ids.shape[1] + new_tokens)

    run_sample()  # warm-up (allocator, lazy inits)
    run_generate()
    t_sample: list[float] = []
    t_generate: list[float] = []
    for r in range(repeats):
        # Alternate which goes first so slow drifts in machine load hit both equally.
        if r % 2 == 0:
            t_sample.append(_timed(run_sample))
            t_generate.append(_timed(run_generate))
        else:
            t_generate.append(_timed(run_generate))
            t_sample.append(_timed(run_sample))
    speedups = sorted(g / s for g, s in zip(t_generate, t_sample))

    greedy = sample(
        model, ids, mask, max_new_tokens=new_tokens, eos_token_id=eos, pad_token_id=pad, greedy=True
    )
    with torch.inference_mode():
        ref = model.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
        )[:, ids.shape[1] :]
    identical = ref.shape == greedy.response_ids.shape and bool((ref == greedy.response_ids).all())

    n_tokens = batch * new_tokens
    return {
        "sample_tok_s": n_tokens / statistics.median(t_sample),
        "generate_tok_s": n_tokens / statistics.median(t_generate),
        "speedup_min": speedups[0],
        "speedup_median": statistics.median(speedups),
        "speedup_max": speedups[-1],
        "greedy_identical": identical,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1m,11m", help=f"comma-separated model sizes from {sorted(SIZES)}")
    parser.add_argument("--batch", default="64,256", help="comma-separated batch sizes")
    parser.add_argument("--new-tokens", type=int, default=24, help="tokens generated per row")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each sampler")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--group",
        type=int,
        default=1,
        help="repeat each prompt this many times (GRPO/RLOO groups, best-of-n)",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose from {sorted(SIZES)}")
    batches = [int(b) for b in args.batch.split(",") if b.strip()]

    tokenizer = build_task_tokenizer(TASK_WORDS)
    eos, pad = int(tokenizer.eos_token_id), int(tokenizer.pad_token_id)  # type: ignore[arg-type]
    if args.group < 1:
        parser.error("--group must be >= 1")
    n_distinct = -(-max(batches) // args.group)
    problems = ArithmeticTask().sample_problems(n_distinct, seed=args.seed)
    texts = [p.text for p in problems for _ in range(args.group)]
    all_ids, all_mask = encode_prompts(tokenizer, texts)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, new tokens {args.new_tokens}, "
        f"repeats {args.repeats}, prompts repeated x{args.group}; speed-up = generate time / sample time"
    )
    header = (
        f"{'size':>5} {'params':>8} {'batch':>5} {'prompt':>6} {'sample tok/s':>13} {'generate tok/s':>15} "
        f"{'speed-up min/med/max':>21} {'greedy same':>11}"
    )
    print(header)
    print("-" * len(header))
    for size in sizes:
        model = build_causal_lm(SIZES[size], tokenizer, seed=args.seed)
        model.eval()
        for batch in batches:
            ids, mask = all_ids[:batch], all_mask[:batch]
            keep = int(mask.sum(0).nonzero()[0])  # drop all-pad columns of this slice
            ids, mask = ids[:, keep:], mask[:, keep:]
            res = bench_one(
                model, ids, mask, new_tokens=args.new_tokens, repeats=args.repeats, eos=eos, pad=pad
            )
            speed = f"{res['speedup_min']:.2f}/{res['speedup_median']:.2f}/{res['speedup_max']:.2f}"
            print(
                f"{size:>5} {num_parameters(model) / 1e6:>7.2f}M {batch:>5} {ids.shape[1]:>6} "
                f"{res['sample_tok_s']:>13,.0f} {res['generate_tok_s']:>15,.0f} {speed:>21} "
                f"{res['greedy_identical']!s:>11}",
                flush=True,
            )


if __name__ == "__main__":
    main()
