"""Benchmark :func:`rewardlab.policies.sampling.sample` against ``model.generate`` on CPU.

Builds tiny local Llama models with the arithmetic task tokenizer (nothing is downloaded), then
times the two samplers alternately (A B A B ...) on the same left-padded prompt batch, both forced
to produce exactly ``--new-tokens`` tokens per row (EOS disabled in ``sample``,
``min_new_tokens`` in ``generate``), and prints new tokens/s for each and the speed-up
(``generate`` time / ``sample`` time) as min/median/max over the repeats. It also checks that greedy
outputs (with EOS enabled) are identical.

    python benchmarks/bench_sampler.py --sizes 1m,11m --batch 64,256 --new-tokens 24 --repeats 5
    python benchmarks/bench_sampler.py --sizes 1m --batch 256 --group 8   # GRPO-style repeated prompts

``--compiled`` adds a third sampler, ``sample`` with the decode step compiled
(``rewardlab.kernels.fast_decoder.COMPILE_DECODE``, i.e. ``REWARDLAB_COMPILE_DECODE=1``), timed in the same
rotation; its first call (the compile) is reported separately from the steady-state rate. ``--assets DIR``
uses ``bench_trl.py``'s saved models and prompts (``benchmarks/bench_assets.py``) instead of building them;
its sampler row is ``--assets DIR --batch 8 --group 4 --new-tokens 48 --threads 1``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import PreTrainedModel

from rewardlab.kernels import fast_decoder
from rewardlab.policies.models import (
    ModelConfig,
    build_causal_lm,
    load_causal_lm,
    load_tokenizer,
    num_parameters,
)
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


def _spread(xs: list[float], digits: int = 2) -> str:
    return "/".join(f"{x:.{digits}f}" for x in (min(xs), statistics.median(xs), max(xs)))


def bench_one(
    model: PreTrainedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    new_tokens: int,
    repeats: int,
    eos: int,
    pad: int,
    compiled: bool = False,
) -> dict[str, float | bool | str]:
    """Time ``sample`` vs ``generate`` (ABAB; ABC rotated with ``compiled``) and check greedy agreement."""
    batch = ids.shape[0]
    gen = torch.Generator().manual_seed(0)

    def run_sample(compile_decode: bool = False) -> None:
        fast_decoder.COMPILE_DECODE = compile_decode
        try:
            out = sample(
                model, ids, mask, max_new_tokens=new_tokens, eos_token_id=-1, pad_token_id=pad, generator=gen
            )
        finally:
            fast_decoder.COMPILE_DECODE = False
        assert out.response_ids.shape == (batch, new_tokens)

    def run_compiled() -> None:
        run_sample(compile_decode=True)

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

    first_compiled = _timed(run_compiled) if compiled else 0.0  # the compile (and a first call)
    run_sample()  # warm-up (allocator, lazy inits)
    run_generate()
    times: dict[str, list[float]] = {"sample": [], "generate": [], "compiled": []}
    runners = [("sample", run_sample), ("generate", run_generate)]
    if compiled:
        runners.append(("compiled", run_compiled))
    for r in range(repeats):
        # Rotate which goes first so slow drifts in machine load hit all equally.
        k = r % len(runners)
        for name, fn in runners[k:] + runners[:k]:
            times[name].append(_timed(fn))
    t_sample, t_generate = times["sample"], times["generate"]
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
    res: dict[str, float | bool | str] = {
        "sample_tok_s": n_tokens / statistics.median(t_sample),
        "generate_tok_s": n_tokens / statistics.median(t_generate),
        "speedup_min": speedups[0],
        "speedup_median": statistics.median(speedups),
        "speedup_max": speedups[-1],
        "greedy_identical": identical,
    }
    if compiled:
        t_comp = times["compiled"]
        res.update(
            compiled_tok_s=n_tokens / statistics.median(t_comp),
            compiled_first_s=first_compiled,
            compiled_steady_s=statistics.median(t_comp),
            tok_s=" ".join(
                f"{k} {_spread([n_tokens / t for t in times[k]], 0)}"
                for k in ("generate", "sample", "compiled")
            ),
            compiled_speedup=_spread([g / c for g, c in zip(t_generate, t_comp)]),
            compiled_vs_sample=_spread([s / c for s, c in zip(t_sample, t_comp)]),
        )
    return res


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
    parser.add_argument(
        "--compiled", action="store_true", help="also time sample with the decode step compiled"
    )
    parser.add_argument(
        "--assets", default=None, help="bench_trl.py's assets folder (its models and prompts)"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES and args.assets is None]
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose from {sorted(SIZES)}")
    batches = [int(b) for b in args.batch.split(",") if b.strip()]

    assets = Path(args.assets) if args.assets else None
    tokenizer = load_tokenizer(assets / "tokenizer") if assets else build_task_tokenizer(TASK_WORDS)
    eos, pad = int(tokenizer.eos_token_id), int(tokenizer.pad_token_id)  # type: ignore[arg-type]
    if args.group < 1:
        parser.error("--group must be >= 1")
    n_distinct = -(-max(batches) // args.group)
    if assets:  # bench_trl's prompts, in dataset order
        lines = (assets / "pairs.jsonl").read_text(encoding="utf-8").splitlines()[:n_distinct]
        distinct = [json.loads(line)["prompt"] for line in lines]
    else:
        distinct = [p.text for p in ArithmeticTask().sample_problems(n_distinct, seed=args.seed)]
    texts = [t for t in distinct for _ in range(args.group)]
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
        if assets:
            model = load_causal_lm(assets / "models" / size)
        else:
            model = build_causal_lm(SIZES[size], tokenizer, seed=args.seed)
        model.eval()
        for batch in batches:
            ids, mask = all_ids[:batch], all_mask[:batch]
            keep = int(mask.sum(0).nonzero()[0])  # drop all-pad columns of this slice
            ids, mask = ids[:, keep:], mask[:, keep:]
            res = bench_one(
                model, ids, mask, new_tokens=args.new_tokens, repeats=args.repeats, eos=eos, pad=pad,
                compiled=args.compiled,
            )  # fmt: skip
            speed = f"{res['speedup_min']:.2f}/{res['speedup_median']:.2f}/{res['speedup_max']:.2f}"
            print(
                f"{size:>5} {num_parameters(model) / 1e6:>7.2f}M {batch:>5} {ids.shape[1]:>6} "
                f"{res['sample_tok_s']:>13,.0f} {res['generate_tok_s']:>15,.0f} {speed:>21} "
                f"{res['greedy_identical']!s:>11}",
                flush=True,
            )
            if args.compiled:
                fast_decoder.COMPILE_DECODE = True
                probe = fast_decoder.FastDecoder.build(
                    model, batch, ids.shape[1] + args.new_tokens, exact=False
                )
                fast_decoder.COMPILE_DECODE = False
                what = (
                    "compiled"
                    if probe is not None and probe.compiled
                    else "NOT compiled (oneDNN-packed sizes)"
                )
                print(
                    f"      decode step {what}: {res['compiled_tok_s']:,.0f} tok/s, speed-up over generate "
                    f"{res['compiled_speedup']}, over sample {res['compiled_vs_sample']} (min/med/max); first "
                    f"call {res['compiled_first_s']:.1f} s (compile) vs {res['compiled_steady_s']:.3f} s steady; "
                    f"tok/s min/med/max: {res['tok_s']}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
