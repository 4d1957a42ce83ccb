"""Run-folder integrity and clean errors on bad input (issue 16): each test is a probe a user could hit.

Every case would fail without its fix: a raw traceback instead of one line naming the file/line/field, a
partial folder that ``--reuse`` trusts, a rerun that destroys a complete stage, two writers in one folder,
a resumed run whose config silently differs, a report that draws an unfinished run as complete.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rewardlab.cli import main, resume_command
from rewardlab.config import PipelineConfig, load_config
from rewardlab.feedback.records import load_comparisons, load_prompt_completions
from rewardlab.pipelines.run import _done
from rewardlab.runs import (
    COLLAPSE_PATIENCE,
    FolderLock,
    HealthWatch,
    Run,
    lock_path,
    partial_dir,
    unfinished_attempt,
)
from rewardlab.utils import RewardlabError, read_jsonl_numbered

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs/micro.yaml"
SMALL = ["--set", "threads=1", "--set", "pretrain.steps=8", "--set", "sft.steps=6", "--set", "sft.batch_size=64",
         "--set", "pretrain.eval_prompts=16", "--set", "sft.eval_prompts=16", "--set", "sft.checkpoint_every=2",
         "--set", "sft.eval_every=3"]  # fmt: skip
PAIR = {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}


def _one_line_error(err: str) -> str:
    """The error line; library warnings (torch's FutureWarning and its source line) are not ours."""
    lines = [
        x for x in err.strip().splitlines() if x.strip() and "Warning" not in x and "forward_call" not in x
    ]
    assert "Traceback" not in err, err
    assert lines and lines[0].startswith("rewardlab: error:"), err
    return lines[0]


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete pretrain + SFT (SFT with checkpoints), shared by the cases that need models."""
    d = tmp_path_factory.mktemp("integrity")
    assert main(["run", str(MICRO), "--run-dir", str(d), "--quiet", "--stages", "pretrain,sft", *SMALL]) == 0
    return d


# ------------------------------------------------------------------------------- encodings and sizes
def test_a_non_utf8_byte_in_a_config_names_the_file_line_and_offset(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(b"seed: 0\nrun_dir: caf\xe9\n")
    with pytest.raises(RewardlabError, match=r"bad\.yaml:2: not valid UTF-8 \(byte 0xe9 at byte offset 20\)"):
        load_config(cfg)
    assert main(["sft", str(cfg), "--quiet"]) == 2
    assert "not valid UTF-8" in _one_line_error(capsys.readouterr().err)


def test_a_non_utf8_byte_in_a_jsonl_file_names_the_line_and_offset(tmp_path: Path) -> None:
    f = tmp_path / "labels.jsonl"
    good = (json.dumps(PAIR) + "\n").encode()
    f.write_bytes(good + b'{"prompt": "x\xff", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(
        RewardlabError,
        match=rf"labels\.jsonl:2: not valid UTF-8 \(byte 0xff at byte offset {len(good) + 13}\)",
    ):
        load_comparisons(f)


def test_a_record_over_the_size_limit_is_refused_without_reading_it_whole(
    tmp_path: Path, monkeypatch
) -> None:
    f = tmp_path / "huge.jsonl"
    big = {**PAIR, "chosen": "x" * (10 << 20)}  # one 10 MB record
    f.write_text(json.dumps(PAIR) + "\n" + json.dumps(big) + "\n", encoding="utf-8")
    with pytest.raises(
        RewardlabError, match=r"huge\.jsonl:2: record is longer than the limit of 1,048,576 bytes"
    ):
        load_comparisons(f)
    monkeypatch.setenv("REWARDLAB_MAX_RECORD_BYTES", str(11 << 20))  # the limit can be raised
    assert len(load_comparisons(f)) == 2
    monkeypatch.setenv("REWARDLAB_MAX_RECORD_BYTES", "lots")
    with pytest.raises(RewardlabError, match="REWARDLAB_MAX_RECORD_BYTES must be a whole number"):
        read_jsonl_numbered(f)


def test_sft_records_are_validated_like_preference_records(tmp_path: Path) -> None:
    f = tmp_path / "sft.jsonl"
    f.write_text(json.dumps({"prompt": [1, 2], "completion": "4"}) + "\n", encoding="utf-8")
    with pytest.raises(RewardlabError, match=r"sft\.jsonl:1: field 'prompt': message 0 must be an object"):
        load_prompt_completions(f)
    f.write_text(json.dumps({"prompt": "2+2", "completion": "4", "answer": 4}) + "\n", encoding="utf-8")
    with pytest.raises(RewardlabError, match=r"sft\.jsonl:1: unknown field\(s\) 'answer'"):
        load_prompt_completions(f)
    f.write_text(json.dumps({"prompt": "2+2", "completion": "4", "meta": {"id": 1}}) + "\n", encoding="utf-8")
    assert load_prompt_completions(f) == [{"prompt": "2+2", "completion": "4"}]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_gold_in_a_label_file_is_refused(tmp_path: Path, value: str) -> None:
    f = tmp_path / "labels.jsonl"
    f.write_text(
        json.dumps(PAIR)[:-1] + f', "gold_chosen": {value}, "gold_rejected": 0.0}}\n', encoding="utf-8"
    )
    with pytest.raises(
        RewardlabError, match=r"labels\.jsonl:1: field 'gold_chosen': expected a finite number"
    ):
        load_comparisons(f)


# ---------------------------------------------------------------------------- stage folders
def test_a_stage_that_fails_while_saving_leaves_nothing_that_reuse_trusts(base: Path, tmp_path: Path,
                                                                           monkeypatch, capsys) -> None:  # fmt: skip
    run_dir = tmp_path / "r"
    shutil.copytree(base, run_dir, ignore=shutil.ignore_patterns("sft"))
    from transformers import PreTrainedModel

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "sft.partial" / "model"))

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_disk)  # every way a stage saves its model
    assert main(["sft", str(MICRO), "--run-dir", str(run_dir), "--quiet", *SMALL]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "No space left on device" in line and "disk is full" in line and "sft.partial" in line
    cfg = load_config(MICRO, [f"run_dir={run_dir}"])
    assert not (run_dir / "sft").exists() and not _done(cfg, "sft")  # --reuse reruns it
    status = unfinished_attempt(run_dir / "sft")
    assert status is not None and status["state"] == "failed" and "No space left" in status["reason"]
    assert not (partial_dir(run_dir / "sft") / "summary.json").exists()  # the summary comes after the model


def test_rerunning_a_complete_stage_with_a_bad_input_leaves_it_untouched(
    base: Path, tmp_path: Path, capsys
) -> None:
    run_dir = tmp_path / "r"
    shutil.copytree(base, run_dir)
    before = _files(run_dir / "sft")
    bad = tmp_path / "demos.jsonl"
    bad.write_text('{"prompt": "2+2", "completion": 4}\n', encoding="utf-8")
    args = ["sft", str(MICRO), "--run-dir", str(run_dir), "--quiet", *SMALL, "--set", f"sft.data_path={bad}"]
    assert main(args) == 2
    assert "field 'completion'" in _one_line_error(capsys.readouterr().err)
    assert _files(run_dir / "sft") == before  # metrics, log, config and model as they were
    assert _done(load_config(MICRO, [f"run_dir={run_dir}"]), "sft")


def test_commit_refuses_a_stage_without_summary(tmp_path: Path) -> None:
    run = Run(tmp_path / "stage", "stage", staged=True, quiet=True)
    (run.dir / "model").mkdir()
    with pytest.raises(RewardlabError, match=r"has no summary\.json"):
        run.commit()
    assert not (tmp_path / "stage").exists()
    assert unfinished_attempt(tmp_path / "stage")["state"] == "failed"  # type: ignore[index]


def test_a_staged_run_replaces_the_old_folder_only_when_complete(tmp_path: Path) -> None:
    final = tmp_path / "stage"
    first = Run(final, "stage", staged=True, quiet=True)
    first.log_metrics({"train/loss": 1.0}, 1)
    first.write_json("summary.json", {"v": 1})
    assert first.commit() == final and (final / "summary.json").is_file() and not partial_dir(final).exists()
    second = Run(final, "stage", staged=True, quiet=True)
    second.log_metrics({"train/loss": 2.0}, 1)
    assert json.loads((final / "summary.json").read_text())["v"] == 1  # the complete one is still there
    second.write_json("summary.json", {"v": 2})
    second.commit()
    assert json.loads((final / "summary.json").read_text())["v"] == 2
    assert [json.loads(x)["train/loss"] for x in (final / "metrics.jsonl").read_text().splitlines()] == [2.0]


# ------------------------------------------------------------------------------------------ locks
_HOLD = """
import sys, time
from pathlib import Path
from rewardlab.runs import FolderLock
FolderLock(Path(sys.argv[1]), "x").acquire()
print("locked", flush=True)
time.sleep(60)
"""


def _holder(lock: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path: Path) -> None:
    final = tmp_path / "stage"
    proc = _holder(lock_path(final))
    try:
        with pytest.raises(
            RewardlabError, match=rf"the stage folder .*stage is in use by process {proc.pid}"
        ):
            Run(final, "stage", staged=True, quiet=True)
        assert not partial_dir(final).exists()  # refused before touching anything
    finally:
        proc.kill()
        proc.wait()
    run = Run(final, "stage", staged=True, quiet=True)  # the killed holder's lock is not stale
    assert f"took over the lock of process {proc.pid}" in (run.dir / "run.log").read_text()
    run.write_json("summary.json", {})
    run.commit()


def test_two_pipelines_cannot_share_a_run_folder(tmp_path: Path, capsys) -> None:
    proc = _holder(tmp_path / ".rewardlab-run.lock")
    try:
        assert main(["run", str(MICRO), "--run-dir", str(tmp_path), "--quiet", "--stages", "pretrain"]) == 2
        assert f"in use by process {proc.pid}" in _one_line_error(capsys.readouterr().err)
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_in_this_process_blocks_a_second_lock(tmp_path: Path) -> None:
    a = FolderLock(tmp_path / ".x.lock", "x")
    a.acquire()
    with pytest.raises(RewardlabError, match=f"in use by process {os.getpid()}"):
        FolderLock(tmp_path / ".x.lock", "x").acquire()
    a.release()
    FolderLock(tmp_path / ".x.lock", "x").acquire()


# ------------------------------------------------------------------------------------------ resume
def _killed_sft(base: Path, tmp_path: Path) -> Path:
    """A copy of ``base`` whose SFT was killed after its step-4 checkpoint."""
    run_dir = tmp_path / "r"
    shutil.copytree(base, run_dir, ignore=shutil.ignore_patterns("sft"))
    env = {**os.environ, "REWARDLAB_TEST_SIGKILL_AFTER": "5", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "rewardlab.cli",
        "sft",
        str(MICRO),
        "--run-dir",
        str(run_dir),
        "--quiet",
        *SMALL,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (partial_dir(run_dir / "sft") / "checkpoint").is_dir()
    return run_dir


def test_resume_refuses_a_config_that_changes_training(base: Path, tmp_path: Path, capsys) -> None:
    run_dir = _killed_sft(base, tmp_path)
    args = ["sft", str(MICRO), "--run-dir", str(run_dir), "--quiet", *SMALL, "--resume"]
    assert main([*args, "--set", "sft.optim.lr=0.01", "--set", "sft.steps=5"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "changes training" in err
    assert "sft.optim.lr: 0.001 -> 0.01" in err and "sft.steps: 6 -> 5" in err
    assert "warmup_steps" not in err  # a partial --set keeps the section's other defaults
    # what is measured (not the weights) needs --allow-config-change; inert fields pass
    assert main([*args, "--set", "sft.eval_every=2"]) == 2
    assert "--allow-config-change" in capsys.readouterr().err
    assert (
        main([*args, "--set", "sft.eval_every=2", "--set", "sft.checkpoint_every=3", "--allow-config-change"])
        == 0
    )
    summary = json.loads((run_dir / "sft" / "summary.json").read_text())
    assert summary["config_changes_on_resume"] == ["sft.checkpoint_every: 2 -> 3", "sft.eval_every: 3 -> 2"]
    assert "resumed from" in (run_dir / "sft" / "run.log").read_text()


def test_a_changed_config_of_another_stage_does_not_block_resume(base: Path, tmp_path: Path) -> None:
    cfg = load_config(MICRO)
    old = cfg.model_dump(mode="json")
    new = load_config(MICRO, ["ppo.optim.lr=0.5", "threads=1"])
    assert new.check_resume("sft", old) == ["threads: 2 -> 1"]
    with pytest.raises(RewardlabError, match=r"ppo\.optim\.lr: 5e-05 -> 0\.5"):
        new.check_resume("ppo", old)
    with pytest.raises(RewardlabError, match=r"seed: 0 -> 3"):
        load_config(MICRO, ["seed=3"]).check_resume("sft", old)


# ------------------------------------------------------------------------------------- signals
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_print_one_line_with_the_command_that_resumes(
    base: Path, tmp_path: Path, sig
) -> None:
    run_dir = tmp_path / "r"
    shutil.copytree(base, run_dir, ignore=shutil.ignore_patterns("sft"))
    args = ["sft", str(MICRO), "--run-dir", str(run_dir), *SMALL, "--set", "sft.steps=100000"]
    # a background job inherits SIGINT ignored (Python then never raises KeyboardInterrupt): restore the default
    proc = subprocess.Popen([sys.executable, "-m", "rewardlab.cli", *args, "--quiet"], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    metrics = partial_dir(run_dir / "sft") / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().strip()):
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [x for x in err.splitlines() if x.strip() and "Warning" not in x and "forward_call" not in x]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("rewardlab: interrupted") and "sft.partial" in lines[0]
    assert lines[0].endswith(resume_command([*args, "--quiet"]))
    status = unfinished_attempt(run_dir / "sft")
    assert status is not None and status["state"] == "interrupted" and status["step"] is not None


def test_resume_command_adds_resume_once_and_reuse_for_run() -> None:
    assert resume_command(["sft", "c.yaml", "--resume"]) == "rewardlab sft c.yaml --resume"
    assert (
        resume_command(["run", "c.yaml", "--seeds", "0,1"])
        == "rewardlab run c.yaml --seeds 0,1 --reuse --resume"
    )


# ------------------------------------------------------------------------------- I/O failures
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_folder_is_one_clear_line(tmp_path: Path, capsys) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["pretrain", str(MICRO), "--run-dir", str(ro), "--quiet", *SMALL]) == 2
        assert "Permission denied" in _one_line_error(capsys.readouterr().err)
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_an_io_error_while_opening_a_stage_is_one_clear_line(
    tmp_path: Path, monkeypatch, capsys, err: int
) -> None:
    import rewardlab.runs as runs

    def fail(path: Path, status: dict) -> None:
        raise OSError(err, os.strerror(err), str(path / "status.json"))

    monkeypatch.setattr(runs, "_write_status", fail)
    assert main(["pretrain", str(MICRO), "--run-dir", str(tmp_path), "--quiet", *SMALL]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert os.strerror(err) in line and "status.json" in line
    assert FolderLock(lock_path(tmp_path / "pretrain"), "x").acquire() is None  # the lock was released


def test_a_file_size_limit_mid_run_is_one_clear_line(tmp_path: Path) -> None:
    """A real write failure (the file-size limit, EFBIG) while the model is saved: one line, nothing trusted."""
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000)); "
            "from rewardlab.cli import main; sys.exit(main(sys.argv[1:]))")  # fmt: skip
    cmd = [sys.executable, "-c", code, "pretrain", str(MICRO), "--run-dir", str(tmp_path), "--quiet", *SMALL]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_line_error(proc.stderr)
    assert "File too large" in line and "pretrain.partial" in line
    assert not (tmp_path / "pretrain").exists()
    assert unfinished_attempt(tmp_path / "pretrain")["state"] == "failed"  # type: ignore[index]


# ------------------------------------------------------------------------------------- collapse
def test_health_watch_flags_zero_gradients_a_uniform_loss_a_lost_parse_rate_and_divergence() -> None:
    w = HealthWatch()
    for s in range(1, COLLAPSE_PATIENCE):
        assert w.observe({"train/grad_norm": 0.0}, s) == []
    assert w.observe({"train/grad_norm": 0.0}, COLLAPSE_PATIENCE)[0].startswith("collapsed: train/grad_norm")
    assert w.observe({"train/grad_norm": 0.0}, COLLAPSE_PATIENCE + 1) == []  # once
    u = HealthWatch()
    u.vocab_size = 52
    rows = [u.observe({"train/loss": math.log(52) * 1.001}, s) for s in range(1, COLLAPSE_PATIENCE + 1)]
    assert rows[-1] and "ln |V| = 3.951" in rows[-1][0] and not any(rows[:-1])
    p = HealthWatch()
    assert p.observe({"eval/behavior/parse_rate": 0.0}, 1) == []  # never parsed: nothing lost
    assert p.observe({"eval/behavior/parse_rate": 0.7}, 2) == []
    assert "fell to 0 at step 3" in p.observe({"eval/behavior/parse_rate": 0.0}, 3)[0]
    d = HealthWatch()
    for s, v in enumerate([2.0, 1.5, 9.0, 8.0, 7.0], 1):
        d.observe({"train/loss": v}, s)
    assert d.finish()[0].startswith("diverged: train/loss rose from 2 (step 1) to 8")
    ok = HealthWatch()
    for s, v in enumerate([2.0, 1.5, 1.0, 0.9, 0.8], 1):
        ok.observe({"train/loss": v, "train/grad_norm": 0.5}, s)
    assert ok.finish() == [] and ok.warnings == []


def test_a_collapsed_run_says_so_in_its_summary_and_the_report(tmp_path: Path) -> None:
    from rewardlab.report.build import build_report

    arm = tmp_path / "run" / "time-pressed-s0"
    arm.mkdir(parents=True)
    (arm / "arm.json").write_text(json.dumps({"name": "time-pressed", "role": "treatment", "seed": 0}))
    run = Run(arm / "ppo", "ppo", staged=True, quiet=True)
    for s in range(1, COLLAPSE_PATIENCE + 1):
        run.log_metrics({"train/grad_norm": 0.0}, s)
    rows = [{"step": s, "proxy/mean": 0.1 * s, "gold/mean": 0.3, "kl/k1": 0.1 * s, "kl/estimator": "k1"}
            for s in (0, 2, 4)]  # fmt: skip
    (run.dir / "audit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run.write_json("summary.json", {})
    run.commit()
    summary = json.loads((arm / "ppo" / "summary.json").read_text())
    assert summary["warnings"] and summary["warnings"][0].startswith("collapsed: train/grad_norm")
    build_report(tmp_path / "run")
    page = (tmp_path / "run" / "report.html").read_text()
    assert "WARNING: collapsed: train/grad_norm" in page


# ------------------------------------------------------------------------------------- the report
def _arm(run_dir: Path, name: str = "time-pressed-s0") -> Path:
    arm = run_dir / name
    arm.mkdir(parents=True, exist_ok=True)
    (arm / "arm.json").write_text(
        json.dumps({"name": name.rsplit("-s", 1)[0], "role": "treatment", "seed": 0})
    )
    return arm


def _audit(d: Path, rows: list[dict]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "audit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_report_marks_an_unfinished_run_and_prefers_a_complete_one(tmp_path: Path, capsys) -> None:
    from rewardlab.report.build import build_report

    arm = _arm(tmp_path)
    rows = [
        {"step": s, "proxy/mean": 0.1 * s, "gold/mean": 0.3 - 0.01 * s, "kl/k1": 0.2 * s}
        for s in (0, 2, 4, 6)
    ]
    _audit(arm / "ppo.partial", rows)
    (arm / "ppo.partial" / "status.json").write_text(json.dumps({"state": "failed", "step": 6,
                                                                 "reason": "ppo: loss is nan at step 7"}))  # fmt: skip
    build_report(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    s = summary["arms"]["time-pressed-s0"]["methods"]["ppo"]
    assert s["finished"] is False and s["status"] == "failed at step 6: ppo: loss is nan at step 7"
    assert "did not finish" in (tmp_path / "report.html").read_text()
    assert "did not finish" in capsys.readouterr().err  # on the console too
    _audit(arm / "ppo", rows[:2])  # a complete run appears: the unfinished attempt is no longer drawn
    (arm / "ppo" / "summary.json").write_text("{}")
    build_report(tmp_path)
    s = json.loads((tmp_path / "summary.json").read_text())["arms"]["time-pressed-s0"]["methods"]["ppo"]
    assert s["finished"] is True and s["n_points"] == 2


def test_the_report_rejects_non_numeric_metric_values(tmp_path: Path, capsys) -> None:
    from rewardlab.report.build import build_report

    arm = _arm(tmp_path)
    rows = [{"step": 0, "proxy/mean": 0.0, "gold/mean": 0.3, "kl/k1": 0.0},
            {"step": 2, "proxy/mean": "0.9", "gold/mean": 0.2, "kl/k1": 0.5},
            {"step": "4", "proxy/mean": 0.5, "gold/mean": "high", "kl/k1": 1.0},
            {"step": 6, "proxy/mean": 0.7, "gold/mean": 0.1, "kl/k1": 2.0}]  # fmt: skip
    _audit(arm / "ppo", rows)
    build_report(tmp_path)
    s = json.loads((tmp_path / "summary.json").read_text())["arms"]["time-pressed-s0"]["methods"]["ppo"]
    assert s["n_points"] == 3  # the row with step "4" is not a point
    assert s["proxy_start"] == 0.0 and s["proxy_end"] == 0.7
    err = capsys.readouterr().err
    assert "'proxy/mean' has 1 non-numeric value(s) (first: '0.9'" in err
    assert "'step' has 1 non-numeric value(s)" in err
    assert "non-numeric" in (tmp_path / "report.html").read_text()


# ----------------------------------------------------------------------------------- length limits
def test_examples_longer_than_the_model_are_cut_counted_or_refused(
    base: Path, tmp_path: Path, capsys
) -> None:
    from rewardlab.policies.models import load_tokenizer

    tok = load_tokenizer(base / "sft" / "model")
    positions = json.loads((base / "sft" / "model" / "config.json").read_text())["max_position_embeddings"]
    assert tok.model_max_length == positions  # the tokenizer never encodes past the model
    run_dir = tmp_path / "r"
    shutil.copytree(base, run_dir, ignore=shutil.ignore_patterns("sft"))
    data = tmp_path / "long.jsonl"
    long_prompt = " ".join(["what is 1 + 1 ?"] * 40)
    data.write_text("".join(json.dumps({"prompt": p, "completion": "2"}) + "\n"
                            for p in [long_prompt] * 3 + ["what is 1 + 1 ?"] * 61), encoding="utf-8")  # fmt: skip
    args = ["sft", str(MICRO), "--run-dir", str(run_dir), "--quiet", *SMALL, "--set", f"sft.data_path={data}"]
    assert main([*args, "--set", "sft.max_length=100000"]) == 2
    assert f"sft.max_length=100000 is more than the model's {positions} positions" in _one_line_error(
        capsys.readouterr().err
    )
    assert main([*args, "--set", "sft.truncation=error"]) == 2
    assert "example 1 has" in _one_line_error(capsys.readouterr().err)
    assert main([*args, "--set", "sft.max_length=32", "--set", "sft.truncation=keep_start"]) == 0
    summary = json.loads((run_dir / "sft" / "summary.json").read_text())
    assert summary["data/truncated"] == 3
    assert "3 of 64 examples were longer than 32 tokens" in (run_dir / "sft" / "run.log").read_text()


def test_keep_end_and_keep_start_cut_the_prompt_from_opposite_sides() -> None:
    from rewardlab.policies.tokenizer import fit_examples

    prompt, completion = list(range(10)), [100, 101, 999]
    ((p_end, c_end),) = fit_examples([(prompt, completion)], 8, "keep_end")[0]
    ((p_start, c_start),) = fit_examples([(prompt, completion)], 8, "keep_start")[0]
    assert p_end == [5, 6, 7, 8, 9] and p_start == [0, 1, 2, 3, 4] and c_end == c_start == completion
    ((p, c),) = fit_examples([(prompt, list(range(100, 120)))], 8, "keep_end")[0]
    assert len(p) + len(c) == 8 and p == [9] and c[-1] == 119  # the completion keeps its last token (EOS)
    assert fit_examples([(prompt, completion)], 13, "error") == ([(prompt, completion)], 0)
    with pytest.raises(RewardlabError, match="example 1 has 13 tokens, more than the limit of 12"):
        fit_examples([(prompt, completion)], 12, "error", "dpo")


def test_a_partial_sub_section_keeps_the_sections_own_defaults() -> None:
    cfg = load_config(MICRO, ["sft.optim.lr=0.01"])
    assert (
        cfg.sft.optim.lr == 0.01
        and cfg.sft.optim.warmup_steps == PipelineConfig().sft.optim.warmup_steps == 20
    )
    assert load_config(MICRO, ["sft.optim.warmup_steps=0"]).sft.optim.lr == PipelineConfig().sft.optim.lr


def test_the_config_validates_data_limits() -> None:
    with pytest.raises(Exception, match="truncation"):
        PipelineConfig.model_validate({"dpo": {"truncation": "middle"}})
    with pytest.raises(Exception, match="max_length"):
        PipelineConfig.model_validate({"reward": {"max_length": 0}})


def test_config_yaml_of_a_run_is_written_into_the_partial_folder_first(tmp_path: Path) -> None:
    cfg = load_config(MICRO, [f"run_dir={tmp_path}"])
    run = Run(tmp_path / "s", "sft", cfg, staged=True, quiet=True)
    assert yaml.safe_load((run.dir / "config.yaml").read_text())["run_dir"] == str(tmp_path)
    assert run.dir == tmp_path / "s.partial" and not (tmp_path / "s").exists()
    run.abandon("failed", "test")


def test_criteria_count_an_unfinished_method_as_no(tmp_path: Path) -> None:
    from rewardlab.audit.criteria import check_seed

    def method(finished: bool) -> dict:
        return {"kind": "rl", "finished": finished, "behavior_start": 0.0, "behavior_end": 0.9, "gold_start": 0.3,
                "gold_end": 0.0, "gold_peak": 0.4, "proxy_start": 0.0, "proxy_end": 1.0}  # fmt: skip

    arms = {"b-s0": {"methods": {"ppo": method(False)}}, "c-s0": {"methods": {"ppo": method(True)}}}
    assert check_seed(tmp_path, arms, "b-s0", "c-s0") == [
        ("ppo", "both arms finished", "b-s0: did not finish", False)
    ]
    arms["b-s0"]["methods"]["ppo"]["finished"] = True
    rows = check_seed(tmp_path, arms, "b-s0", "c-s0")
    assert len(rows) == 7 and rows[0][1] == "biased: headline behaviour rises >= 0.30" and rows[0][3]


def test_a_beta_sweep_or_modpo_run_is_compared_on_its_methods_sections() -> None:
    old = load_config(MICRO).model_dump(mode="json")
    assert load_config(MICRO, ["ppo.steps=9"]).check_resume("dpo-b0.1", old) == []
    with pytest.raises(RewardlabError, match=r"dpo\.steps: 20 -> 9"):
        load_config(MICRO, ["dpo.steps=9"]).check_resume("modpo-w0.5", old)


def test_a_tokenizer_claiming_more_positions_than_its_model_is_clamped(tmp_path: Path) -> None:
    """A GPT-2-like folder whose tokenizer says 1024 while the model has 24 positions: never encode past 24."""
    from rewardlab.policies.models import ModelConfig, build_causal_lm, load_tokenizer
    from rewardlab.policies.tokenizer import build_task_tokenizer, encode_examples
    from rewardlab.tasks.arithmetic import TASK_WORDS

    tok = build_task_tokenizer(TASK_WORDS, model_max_length=1024)
    model = build_causal_lm(ModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                                        max_position_embeddings=24), tok)  # fmt: skip
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.model_max_length == 24
    ((p, c),) = encode_examples(loaded, [" ".join(["what is 1 + 1 ?"] * 20)], ["2"])
    assert len(p) + len(c) == 24 and c[-1] == loaded.eos_token_id


def test_a_diverged_pretraining_finishes_with_a_loud_warning(tmp_path: Path, capsys) -> None:
    """A learning rate far too large: exit 0 (it did finish) but the log, summary and console say it diverged."""
    args = ["pretrain", str(MICRO), "--run-dir", str(tmp_path), "--quiet", *SMALL, "--set", "pretrain.steps=40",
            "--set", "pretrain.optim.lr=5"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((tmp_path / "pretrain" / "summary.json").read_text())
    assert len(summary["warnings"]) == 1 and summary["warnings"][0].startswith("diverged: train/loss ends at")
    assert "worse than a uniform guess" in capsys.readouterr().err
    assert "WARNING diverged" in (tmp_path / "pretrain" / "run.log").read_text()
