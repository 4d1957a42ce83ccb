"""Recipe: Direct Preference Heads (DPH) rerank n samples of the frozen SFT policy.

Hadji-Kyriacou & Arandjelović 2024 (arXiv:2405.20053): a small reward head on the policy's final hidden state
learns the arm's rater preferences (:func:`rewardlab.losses.dph_loss`, cDPO-style label smoothing) while the
language model stays frozen; at inference the policy samples n responses and the head keeps its favourite.

The samples are best-of-n's (``bon`` section: prompts, ``max_n``, temperature, length, and its seed), so the
rows of ``<arm>/dph/audit.jsonl`` and ``<arm>/bon/audit.jsonl`` differ only in who picks: the head inside the
policy or the separately trained reward model. Each row is audited like best-of-n: proxy (the separate reward
model's score of the picked response), gold, behaviours and KL(reranked || policy) <= log n - (n - 1)/n (the
analytic bound the report also uses for best-of-n), so both land on the same gold-vs-sqrt(KL) figure.
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
from rewardlab.feedback.records import Comparison, load_comparisons
from rewardlab.losses import best_of_n_kl
from rewardlab.optimize.dph import PairFeatures, PreferenceHead, final_hidden_states, head_scores, train_head
from rewardlab.optimize.dpo import model_fingerprint
from rewardlab.pipelines.bon import best_of_n_indices
from rewardlab.pipelines.common import eval_problems, load_stage_model, setup_stage, stage_input
from rewardlab.policies.models import load_tokenizer
from rewardlab.policies.tokenizer import Limits, encode_examples
from rewardlab.rewards.model import RewardModel
from rewardlab.rewards.train import comparison_accuracies
from rewardlab.runs import Run
from rewardlab.utils import RewardlabError, atomic_dir

#: best-of-n's sampling seed offset (``pipelines.bon``): the same samples for both rerankers.
BON_SAMPLE_SEED_OFFSET = 6


def save_head(head: PreferenceHead, path: Path, **info: object) -> Path:
    """``path/head.pt`` (state dict) and ``path/head.json`` (its shape and how it was trained), atomically."""

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        torch.save(head.state_dict(), tmp / "head.pt")
        meta = {"hidden_size": head.hidden_size, "pooler": head.pooler, **info}
        (tmp / "head.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    return atomic_dir(path, write)


def load_head(path: Path | str) -> PreferenceHead:
    """A head saved by :func:`save_head`."""
    meta = json.loads((Path(path) / "head.json").read_text(encoding="utf-8"))
    head = PreferenceHead(int(meta["hidden_size"]), bool(meta["pooler"]))
    head.load_state_dict(torch.load(Path(path) / "head.pt", map_location="cpu", weights_only=True))
    return head.eval()


def run_dph(cfg: PipelineConfig, quiet: bool = False) -> Path:
    # 1. the task and the inputs: the frozen policy, the arm's labels, the separate RM (audit proxy only)
    task = setup_stage(cfg, 8)
    dc, bc = cfg.dph, cfg.bon
    policy_path = stage_input(cfg, dc.policy_path, "sft", "model", "policy")
    reward_path = stage_input(cfg, dc.reward_path, "reward", "model", "reward model")
    train_path = stage_input(cfg, dc.data_path, "label", "train.jsonl", "comparisons")
    eval_path = stage_input(cfg, dc.eval_path, "label", "eval.jsonl", "eval comparisons")
    run = Run(cfg.stage_dir("dph"), "dph", cfg, cfg.report_to, quiet, staged=True)
    run.write_json("../arm.json", cfg.arm_info())
    tok = load_tokenizer(policy_path)
    pad = int(tok.pad_token_id)  # type: ignore[arg-type]
    policy = load_stage_model(cfg, run, policy_path, "cpu").eval().requires_grad_(False)
    lm_before = model_fingerprint(policy)
    limits = Limits.for_stage(tok, dc, "dph")

    # 2. the frozen policy's final hidden state at each pair side's EOS, computed once
    all_train = load_comparisons(train_path)
    comps = [c for c in all_train if not (dc.drop_ties and c.tie)]
    eval_comps = load_comparisons(eval_path)[: dc.eval_pairs]
    if not comps:
        raise RewardlabError(f"dph: no training pairs in {train_path}")

    def features(cs: list[Comparison]) -> PairFeatures:
        prompts = [c.prompt for c in cs]
        ch = encode_examples(tok, prompts, [c.chosen for c in cs], limits)
        rj = encode_examples(tok, prompts, [c.rejected for c in cs], limits)
        return PairFeatures(final_hidden_states(policy, ch, pad, dc.feature_batch_size),
                            final_hidden_states(policy, rj, pad, dc.feature_batch_size))  # fmt: skip

    train, held = features(comps), features(eval_comps)
    run.info(f"hidden states of {len(train)} train / {len(held)} held-out pairs ({len(all_train) - len(comps)} ties "
             f"dropped) in {run.elapsed:.0f}s")  # fmt: skip

    # 3. train the head (the LM is not in the graph), then score it as a reward model on held-out labels
    torch.manual_seed(cfg.seed * 1000 + 8)
    head = PreferenceHead(train.chosen.shape[1], dc.pooler)
    stats = train_head(head, train, dc, run, seed=cfg.seed * 1000 + 8)
    accuracy = {k.replace("eval/", "head/", 1): v
                for k, v in comparison_accuracies(head_scores(head, held.chosen), head_scores(head, held.rejected),
                                                  eval_comps).items()}  # fmt: skip
    run.log_metrics(accuracy, int(stats["steps"]))
    run.info(f"head accuracy vs rater labels {accuracy.get('head/accuracy_rater', float('nan')):.3f}, "
             f"vs gold {accuracy.get('head/accuracy_gold', float('nan')):.3f}")  # fmt: skip
    save_head(
        head, run.dir / "head", loss=dc.loss, label_smoothing=dc.label_smoothing, policy=str(policy_path)
    )

    # 4. best-of-n's samples: max_n per held-out prompt, same seed; the head's and the separate RM's scores
    problems = eval_problems(task, bc.prompts)
    N = bc.max_n
    prompts = [task.prompt(p) for p in problems for _ in range(N)]
    run.info(f"sampling {N} completions for each of {len(problems)} prompts (best-of-n's samples)")
    gen = torch.Generator().manual_seed(cfg.seed * 13 + BON_SAMPLE_SEED_OFFSET)
    responses = generate_responses(policy, tok, prompts, max_new_tokens=bc.max_new_tokens, temperature=bc.temperature,
                                   batch_size=1024, generator=gen)  # fmt: skip
    sample_feats = final_hidden_states(policy, encode_examples(tok, prompts, responses, limits), pad,
                                       dc.feature_batch_size)  # fmt: skip
    score = head_scores(head, sample_feats).view(len(problems), N)
    proxy = torch.tensor(RewardModel.load(reward_path)(prompts, responses)).view(len(problems), N)

    # 5. for n = 1, 2, 4 .. max_n (or bon.ns): the head's favourite of each group of n, audited like best-of-n
    (run.dir / "samples").mkdir(exist_ok=True)
    rows = []
    with (run.dir / "audit.jsonl").open("w", encoding="utf-8") as f:
        for n in bc.n_values():
            best = best_of_n_indices(score, n)
            sel_problems, sel_samples, sel_scores = [], [], []
            for i, p in enumerate(problems):
                for j in best[i].tolist():
                    sel_problems.append(p)
                    sel_samples.append(score_sample(task, p, responses[i * N + j], float(proxy[i, j])))
                    sel_scores.append(float(score[i, j]))
            row = {"n": n, "kl": best_of_n_kl(n), "kl/sqrt": math.sqrt(best_of_n_kl(n)),
                   **summarize(task, sel_problems, sel_samples), **gold_parts(sel_samples, task.info.gold_parts),
                   "dph/score_mean": sum(sel_scores) / len(sel_scores)}  # fmt: skip
            rows.append(row)
            f.write(json.dumps(row) + "\n")
            run.log_metrics(row, n)
            save_samples(run.dir / "samples" / f"n_{n}.jsonl", sel_samples[:: N // n], dc.samples_to_save)
            run.info(f"n={n:3d}: head {row['dph/score_mean']:+.3f}, proxy {row['proxy/mean']:+.3f}; "
                     f"{describe_metrics(task, row)}")  # fmt: skip

    # 6. the language model is bitwise what it was (checked, not assumed), then the summary
    lm_unchanged = model_fingerprint(policy) == lm_before
    if not lm_unchanged:
        raise RewardlabError("dph: the language model's weights changed while training the head")
    run.write_json("summary.json", {"rows": rows, "head": {**stats, **accuracy}, "lm_unchanged": lm_unchanged,
                                    "pairs_train": len(train), "pairs_eval": len(held), "seconds": run.elapsed})  # fmt: skip
    return run.commit()
