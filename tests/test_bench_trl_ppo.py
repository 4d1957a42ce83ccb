"""The full-PPO row of ``bench_trl.py`` (rewardlab vs an older TRL's PPOTrainer), without that TRL's venv.

No timing here: the row's numbers come from ``make bench`` (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_trl

BENCH = Path(bench_trl.__file__).parent


def _ppo_row(rl_rate: float, trl_rate: float, rl_rss: float, trl_rss: float) -> dict:
    def run(rate: float, rss: float, **extra: object) -> dict:
        return {
            "samples_per_s": rate,
            "tokens_per_s": 64 * rate,
            "peak_rss_mib": rss,
            "setup_s": 8.0,
            **extra,
        }

    return {"row": "ppo-trl", "size": "1m", "ratios": [rl_rate / trl_rate],
            "rewardlab": [run(rl_rate, rl_rss)], "trl": [run(trl_rate, trl_rss, versions={"trl": "1.12.0"})]}  # fmt: skip


def test_the_ppo_row_names_the_trl_release_and_marks_the_2x_target() -> None:
    table = bench_trl.render_table([_ppo_row(13.0, 6.0, 500, 540), _ppo_row(10.0, 6.0, 560, 540)])
    met, missed = table.splitlines()[2:]
    assert met.startswith("| ppo vs PPOTrainer (trl 1.12.0) | 1m | completions/s | 13.0 | 6.0 |")
    assert "| 2.0x | yes | yes |" in met
    assert "| 2.0x | **no** | **no** |" in missed  # 1.67x, and more memory than TRL


def test_ppo_prompts_follow_the_unshuffled_loader_of_the_trl_side() -> None:
    rows = [{"prompt": f"p{i}"} for i in range(20)]  # two full batches of 8; the last 4 dropped
    assert bench_trl.ppo_step_prompts(rows, 1) == [f"p{i}" for i in range(8)]
    assert bench_trl.ppo_step_prompts(rows, 2) == [f"p{i}" for i in range(8, 16)]
    assert bench_trl.ppo_step_prompts(rows, 3) == bench_trl.ppo_step_prompts(rows, 1)


def test_the_trl_ppo_child_never_imports_rewardlab() -> None:
    code = (
        "import sys; sys.modules['rewardlab'] = None; sys.path.insert(0, sys.argv[1]); import bench_trl_ppo; "
        "print(bench_trl_ppo.reward_model_path(__import__('pathlib').Path('a'), '1m'))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(BENCH)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(Path("a") / "ppo_rm" / "1m" / "members" / "0")
    assert bench_trl.ppo_reward_model_dir(Path("a"), "1m") / "members" / "0" == Path(out.stdout.strip())


def test_a_missing_trl_ppo_venv_skips_the_row_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_trl, "machine_description", lambda: {})  # no torch/transformers import here
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "pairs.jsonl").write_text("")
    bench_trl.main(["--only", "ppo-trl", "--trl-ppo-python", str(tmp_path / "nope" / "python"),
                    "--assets", str(tmp_path / "assets"), "--out", str(tmp_path / "out")])  # fmt: skip
    out = capsys.readouterr().out
    assert f"ppo-trl: no {tmp_path / 'nope' / 'python'} (make bench-trl-ppo-env); skipped" in out
    assert (tmp_path / "out" / "table.md").read_text().count("\n") == 2  # the header only


def test_bf16_skips_the_rows_rewardlab_trains_in_fp32_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_trl, "machine_description", lambda: {})
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "pairs.jsonl").write_text("")
    bench_trl.main(["--only", "rm,ppo-trl", "--dtype", "bfloat16", "--threads", "1", "--sizes", "1m",
                    "--assets", str(tmp_path / "assets"), "--out", str(tmp_path / "out")])  # fmt: skip
    out = capsys.readouterr().out
    assert "rm: skipped under bfloat16" in out and "ppo-trl: skipped under bfloat16" in out
    assert "weights bfloat16" in out
    assert (tmp_path / "out" / "table.md").read_text().count("\n") == 2
    assert bench_trl._dtype({}) == torch.float32 and bench_trl._dtype({"dtype": "bfloat16"}) == torch.bfloat16
    assert bench_trl._trl_common({"dtype": "bfloat16", "steps": 5, "trainer": "sft"}, "o")["bf16"] is True
    assert bench_trl._trl_common({"steps": 5, "trainer": "sft"}, "o")["bf16"] is False
    mixed = {"dtype": "bf16-mixed", "steps": 5, "trainer": "sft"}
    assert bench_trl._dtype(mixed) == torch.float32 and bench_trl._trl_common(mixed, "o")["bf16"] is True
