"""Study 4 (teacher hacking): the KL distances on crafted distributions, the power-law detection signal on
planted curves, the offline batches, and an end-to-end micro run on tiny models."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rewardlab.config import load_config
from rewardlab.losses import distillation_loss, token_kl
from rewardlab.policies.models import ModelConfig, build_causal_lm, save_model
from rewardlab.policies.sampling import SampleBatch
from rewardlab.policies.tokenizer import tokenizer_for_task
from rewardlab.studies.distill import eval_steps, power_law_deviation, sequence_kl, u_shape
from rewardlab.studies.teacher_hacking import TeacherHackingConfig, offline_batches, run_teacher_hacking
from rewardlab.utils import RewardlabError

P, Q = [0.5, 0.5], [0.9, 0.1]
KL_PQ = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # 0.5108
KL_QP = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # 0.3681


def logits(probs: list[float], shape: tuple[int, int]) -> torch.Tensor:
    return torch.tensor(probs).log().expand(*shape, len(probs)).clone()


def test_token_kl_is_the_hand_computed_kl_summed_over_the_mask() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    p, q = logits(P, (2, 3)), logits(Q, (2, 3))
    p[0, 2] = float("nan")  # masked positions never count
    assert token_kl(p, q, mask).tolist() == pytest.approx([2 * KL_PQ, KL_PQ], abs=1e-6)
    assert token_kl(logits(Q, (2, 3)), logits(P, (2, 3)), mask).tolist() == pytest.approx(
        [2 * KL_QP, KL_QP], abs=1e-6
    )
    assert token_kl(logits(P, (2, 3)), logits(P, (2, 3)), mask).tolist() == pytest.approx(
        [0.0, 0.0], abs=1e-7
    )
    # the distillation loss is the token mean of KL(teacher || student)
    assert float(distillation_loss(logits(P, (2, 3)), logits(Q, (2, 3)), mask)) == pytest.approx(
        KL_PQ, abs=1e-6
    )


class Unigram(torch.nn.Module):
    """A 'language model' whose next-token distribution is the same everywhere."""

    def __init__(self, probs: list[float]) -> None:
        super().__init__()
        self.logp = torch.tensor(probs).log()

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logp.expand(*input_ids.shape, len(self.logp)))


def test_sequence_kl_sums_over_each_response_and_averages_over_prompts() -> None:
    # two prompts (left-padded, 3 wide) with responses of 2 and 3 real tokens: mean 2.5 token KLs
    batch = SampleBatch(prompt_ids=torch.tensor([[0, 1, 1], [1, 1, 1]]), prompt_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]),
                        response_ids=torch.tensor([[1, 0, 0], [1, 1, 0]]), response_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]),
                        logprobs=torch.zeros(2, 3), finished=torch.tensor([True, True]))  # fmt: skip
    assert sequence_kl(Unigram(P), Unigram(Q), batch) == pytest.approx(2.5 * KL_PQ, abs=1e-6)
    assert sequence_kl(Unigram(P), Unigram(Q), batch, chunk=1) == pytest.approx(2.5 * KL_PQ, abs=1e-6)


def test_power_law_fit_recovers_planted_parameters_and_flags_a_planted_deviation() -> None:
    steps = eval_steps(200, 16)
    assert steps[0] == 0 and steps[-1] == 200 and steps == sorted(set(steps))
    law = [2.0 * t**-0.5 if t else 3.0 for t in steps]
    clean = power_law_deviation(steps, law, window=(1, 30))
    assert clean.a == pytest.approx(2.0, rel=1e-6) and clean.b == pytest.approx(0.5, rel=1e-6)
    assert clean.r2 == pytest.approx(1.0) and clean.onset is None
    assert max(abs(d) for d in clean.deviation) < 1e-9
    # after step 50 the curve stalls at 1.35x the law: the first later step is flagged, deviation log(1.35)
    bent = [v * (1.35 if t > 50 else 1.0) for t, v in zip(steps, law, strict=True)]
    fit = power_law_deviation(steps, bent, window=(1, 30), threshold=0.1)
    assert fit.b == pytest.approx(0.5, rel=1e-6)
    assert fit.onset == min(t for t in steps if t > 50)
    assert fit.max_deviation == pytest.approx(math.log(1.35), rel=1e-6)
    with pytest.raises(RewardlabError, match="fewer than 2"):
        power_law_deviation(steps, law, window=(0, 1))


def test_u_shape_finds_the_minimum_and_the_rise() -> None:
    u = u_shape([0, 1, 2, 3], [3.0, 1.0, 1.5, 2.0])
    assert u == {"min_step": 1, "min": 1.0, "final": 2.0, "rise": 1.0}
    assert u_shape([0, 1, 2], [3.0, 2.0, 1.0])["rise"] == 0.0


def test_offline_batches_cover_the_dataset_once_per_epoch_and_are_seeded() -> None:
    data = SampleBatch(torch.arange(10)[:, None], torch.ones(10, 1, dtype=torch.long), torch.ones(10, 1, dtype=torch.long),
                       torch.ones(10, 1, dtype=torch.long), torch.zeros(10, 1), torch.ones(10, dtype=torch.bool))  # fmt: skip
    draw = offline_batches(data, 5, seed=3)
    seen = [draw(s, None).prompt_ids[:, 0].tolist() for s in range(1, 5)]
    assert sorted(seen[0] + seen[1]) == list(range(10)) and sorted(seen[2] + seen[3]) == list(range(10))
    again = offline_batches(data, 5, seed=3)
    assert [again(s, None).prompt_ids[:, 0].tolist() for s in range(1, 5)] == seen


def test_teacher_hacking_end_to_end_on_tiny_models(tmp_path) -> None:
    """Oracle and base: two random tiny LMs on the default task's tokenizer; 4 student steps per arm."""
    task = load_config("configs/default.yaml", []).build_task()
    tok = tokenizer_for_task(task)
    tiny = ModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    for name, seed in (("sft", 1), ("pretrain", 2)):
        save_model(build_causal_lm(tiny, tok, seed=seed), tok, tmp_path / "run" / name / "model")
    study = TeacherHackingConfig(set=["threads=1"], run_dir=str(tmp_path / "run"), out_dir=str(tmp_path / "out"), seeds=[0],
                                 teacher_prompts=8, teacher_steps=2, offline_prompts=4, steps=4, batch_size=4,
                                 eval_prompts=8, eval_points=3, max_new_tokens=6, fit_window=(1, 2), lr=0.01)  # fmt: skip
    out = run_teacher_hacking(study, quiet=True)
    table = json.loads((out / "teacher_hacking.json").read_text())
    assert [r["arm"] for r in table["rows"]] == ["offline", "online"]
    curve = table["curves"]["s0/offline"]
    assert [c["step"] for c in curve] == eval_steps(4, 3)
    assert all(np.isfinite([c["proxy"], c["golden"]]).all() and c["proxy"] >= 0 for c in curve)
    assert curve[-1]["proxy"] < curve[0]["proxy"]  # the student moves toward the teacher
    assert (out / "study-teacher-hacking.png").stat().st_size > 0
    assert (out / "teacher-s0" / "config.json").exists()
