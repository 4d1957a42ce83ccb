"""Probe rewardlab with bad inputs and faults as a new user would, and count how each one ends.

    python scripts/probe_faults.py [--out DIR] [--only NAME,...]

Each probe runs the real CLI in a fresh process on a copy of a tiny micro run (pretrain + SFT) and is
classified:

* ``clear error``: a non-zero exit whose stderr starts with a ``rewardlab: ...`` line (library warnings
  aside; a config error lists its fields on the next lines) naming what is wrong (each probe checks for its
  own words: a file, a line, a field);
* ``raw traceback``: a Python traceback on stderr;
* ``silent``: exit 0 (or an unclear message) where the input was wrong;
* ``trusted partial``: after the failure, a stage folder that ``--reuse`` would trust but that the failed
  command wrote (or destroyed: a complete stage changed by a failed rerun).

It prints one row per probe and the counts per class (issue 16's closing note quotes them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs/micro.yaml"
SMALL = ["--set", "threads=1", "--set", "pretrain.steps=8", "--set", "sft.steps=6", "--set", "sft.batch_size=64",
         "--set", "pretrain.eval_prompts=16", "--set", "sft.eval_prompts=16", "--set", "sft.checkpoint_every=2",
         "--set", "label.num_prompts=64", "--set", "reward.normalize_prompts=16"]  # fmt: skip
PAIR = {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@dataclass
class Probe:
    name: str
    args: Callable[[Path], list[str]]  # CLI arguments, given the probe's run folder
    expect: tuple[str, ...]  # words the error line must contain
    prepare: Callable[[Path], None] = lambda d: None
    watch: tuple[str, ...] = ()  # stage folders (relative) that must not change or appear on failure
    signal_after: tuple[int, str] | None = None  # (signal, file whose first row means "started")
    code: str | None = None  # run this Python instead of the CLI (argv after it: the CLI arguments)
    check: Callable[[Path, str], bool] | None = None  # extra check on success-by-design probes (report)
    result: dict = field(default_factory=dict)


def _digest(d: Path) -> str | None:
    if not d.exists():
        return None
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(d)).encode() + p.read_bytes())
    return h.hexdigest()


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _label_file(d: Path, text: bytes | str) -> list[str]:
    f = _write(d / "in" / "labels.jsonl", text)
    return ["label", str(MICRO), "--run-dir", str(d), "--quiet", *SMALL, "--set", "label.source=file",
            "--set", f"label.file.path={f}", "--set", "label.name=file"]  # fmt: skip


def _sft_file(d: Path, text: str) -> list[str]:
    f = _write(d / "in" / "sft.jsonl", text)
    return ["sft", str(MICRO), "--run-dir", str(d), "--quiet", *SMALL, "--set", f"sft.data_path={f}"]


def _sft(d: Path, *extra: str) -> list[str]:
    return ["sft", str(MICRO), "--run-dir", str(d), "--quiet", *SMALL, *extra]


def _yaml(d: Path, text: bytes | str) -> list[str]:
    return ["sft", str(_write(d / "in" / "c.yaml", text)), "--run-dir", str(d), "--quiet"]


def _kill_sft(d: Path) -> None:
    """Leave ``sft.partial`` as a SIGKILL after the step-4 checkpoint leaves it."""
    shutil.rmtree(d / "sft")
    env = {**ENV, "REWARDLAB_TEST_SIGKILL_AFTER": "5"}
    subprocess.run(
        [sys.executable, "-m", "rewardlab.cli", *_sft(d)], env=env, capture_output=True, timeout=600
    )


def _audit_run(d: Path, rows: list[dict], partial: bool = False) -> None:
    arm = d / "time-pressed-s0"
    _write(arm / "arm.json", json.dumps({"name": "time-pressed", "role": "treatment", "seed": 0}))
    folder = arm / ("ppo.partial" if partial else "ppo")
    _write(folder / "audit.jsonl", _jsonl(rows))
    if partial:
        _write(folder / "status.json", json.dumps({"state": "failed", "step": 4, "reason": "loss is nan"}))


_ROWS = [{"step": s, "proxy/mean": 0.1 * s, "gold/mean": 0.3 - 0.01 * s, "kl/k1": 0.2 * s} for s in (0, 2, 4)]
_HOLD = ("import sys, time; from pathlib import Path; from rewardlab.runs import FolderLock; "
         "FolderLock(Path(sys.argv[1]), 'x').acquire(); print('locked', flush=True); time.sleep(600)")  # fmt: skip
_FSIZE = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
          "resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000)); "
          "from rewardlab.cli import main; sys.exit(main(sys.argv[1:]))")  # fmt: skip


def probes() -> list[Probe]:
    long = " ".join(["what is 1 + 1 ?"] * 60)
    return [
        # config files and overrides
        Probe(
            "config: non-UTF-8 byte",
            lambda d: _yaml(d, b"seed: 0\nrun_dir: caf\xe9\n"),
            ("UTF-8", "c.yaml:2", "offset"),
        ),
        Probe("config: malformed YAML", lambda d: _yaml(d, "seed: [0\n"), ("malformed YAML", "c.yaml")),
        Probe("config: unknown key", lambda d: _yaml(d, "sft:\n  stepz: 3\n"), ("sft.stepz", "unknown key")),
        Probe("config: wrong type", lambda d: _yaml(d, "sft:\n  steps: many\n"), ("sft.steps",)),
        Probe("config: top level not a mapping", lambda d: _yaml(d, "- 1\n"), ("mapping",)),
        Probe("--set without =", lambda d: _sft(d, "--set", "sft.steps"), ("expected key=value",)),
        Probe("--set into a scalar", lambda d: _sft(d, "--set", "seed.x=1"), ("not a section",)),
        Probe(
            "--seeds not numbers",
            lambda d: ["run", str(MICRO), "--run-dir", str(d), "--seeds", "0,x"],
            ("--seeds",),
        ),
        Probe(
            "--allow-config-change alone",
            lambda d: _sft(d, "--allow-config-change"),
            ("only applies with --resume",),
        ),
        # label files
        Probe(
            "labels: non-UTF-8 byte",
            lambda d: _label_file(d, _jsonl([PAIR]).encode() + b'{"prompt": "\xff"}\n'),
            ("UTF-8", "labels.jsonl:2", "offset"),
            watch=("file-s0/label",),
        ),
        Probe(
            "labels: a 10 MB record",
            lambda d: _label_file(d, _jsonl([PAIR, {**PAIR, "chosen": "x" * (10 << 20)}])),
            ("labels.jsonl:2", "longer than the limit"),
        ),
        Probe(
            "labels: malformed JSON",
            lambda d: _label_file(d, _jsonl([PAIR]) + "{oops\n"),
            ("labels.jsonl:2", "malformed JSON"),
        ),
        Probe(
            "labels: missing field",
            lambda d: _label_file(d, _jsonl([{"prompt": "x", "chosen": "a"}])),
            ("labels.jsonl:1", "rejected"),
        ),
        Probe(
            "labels: gold NaN",
            lambda d: _label_file(d, _jsonl([PAIR]).replace("}", ', "gold_chosen": NaN}')),
            ("labels.jsonl:1", "gold_chosen", "finite"),
        ),
        Probe(
            "labels: chosen is a number",
            lambda d: _label_file(d, _jsonl([{**PAIR, "chosen": 4}])),
            ("labels.jsonl:1", "chosen"),
        ),
        Probe(
            "labels: file missing",
            lambda d: [
                "label",
                str(MICRO),
                "--run-dir",
                str(d),
                "--quiet",
                "--set",
                "label.source=file",
                "--set",
                f"label.file.path={d}/none.jsonl",
            ],
            ("none.jsonl",),
        ),
        # SFT files, models, stages
        Probe(
            "sft: prompt [1, 2]",
            lambda d: _sft_file(d, _jsonl([{"prompt": [1, 2], "completion": "4"}])),
            ("sft.jsonl:1", "prompt"),
            watch=("sft",),
        ),
        Probe(
            "sft: unknown key",
            lambda d: _sft_file(d, _jsonl([{"prompt": "a", "completion": "b", "answer": 4}])),
            ("sft.jsonl:1", "answer"),
            watch=("sft",),
        ),
        Probe(
            "sft: completion a number",
            lambda d: _sft_file(d, _jsonl([{"prompt": "a", "completion": 4}])),
            ("sft.jsonl:1", "completion"),
            watch=("sft",),
        ),
        Probe("sft: empty file", lambda d: _sft_file(d, ""), ("no records",), watch=("sft",)),
        Probe(
            "sft: model folder without config",
            lambda d: _sft(d, "--set", f"sft.model_path={d}/in"),
            ("no saved tokenizer",),
            prepare=lambda d: (d / "in").mkdir(),
            watch=("sft",),
        ),
        Probe(
            "ppo before a reward model",
            lambda d: ["ppo", str(MICRO), "--run-dir", str(d), "--quiet"],
            ("reward model", "not found"),
        ),
        Probe(
            "sft: max_length above the positions",
            lambda d: _sft(d, "--set", "sft.max_length=100000"),
            ("positions",),
            watch=("sft",),
        ),
        Probe(
            "sft: example too long, truncation=error",
            lambda d: [
                *_sft_file(d, _jsonl([{"prompt": long, "completion": "2"}] * 8)),
                "--set",
                "sft.truncation=error",
            ],
            ("example 1 has",),
            watch=("sft",),
        ),
        Probe(
            "sft: NaN loss (lr 1e30)",
            lambda d: _sft(d, "--set", "sft.optim.lr=1e30"),
            ("nan",),
            watch=("sft",),
        ),
        # resume, locks, signals, I/O
        Probe(
            "resume with another learning rate",
            lambda d: _sft(d, "--resume", "--set", "sft.optim.lr=0.01"),
            ("changes training", "sft.optim.lr"),
            prepare=_kill_sft,
        ),
        Probe(
            "resume with another eval_every (no flag)",
            lambda d: _sft(d, "--resume", "--set", "sft.eval_every=2"),
            ("--allow-config-change",),
            prepare=_kill_sft,
        ),
        Probe("a second writer on a stage", lambda d: _sft(d), ("in use by process",), watch=("sft",)),
        Probe(
            "Ctrl-C",
            lambda d: _sft(d, "--set", "sft.steps=100000"),
            ("interrupted", "--resume"),
            watch=("sft",),
            signal_after=(signal.SIGINT, "sft.partial/metrics.jsonl"),
        ),
        Probe(
            "SIGTERM",
            lambda d: _sft(d, "--set", "sft.steps=100000"),
            ("interrupted", "--resume"),
            watch=("sft",),
            signal_after=(signal.SIGTERM, "sft.partial/metrics.jsonl"),
        ),
        Probe(
            "run folder inside a file (not a directory)",
            lambda d: ["pretrain", str(MICRO), "--run-dir", str(d / "f" / "x"), "--quiet"],
            ("Not a directory",),
            prepare=lambda d: _write(d / "f", ""),
        ),
        Probe(
            "file-size limit while saving (EFBIG)",
            lambda d: _sft(d),
            ("File too large", "sft.partial"),
            watch=("sft",),
            code=_FSIZE,
        ),
        # the report
        Probe(
            "report: unfinished run",
            lambda d: ["report", str(d)],
            ("did not finish",),
            prepare=lambda d: _audit_run(d, _ROWS, partial=True),
            check=lambda d, err: "did not finish" in (d / "report.html").read_text(),
        ),
        Probe(
            "report: non-numeric metric",
            lambda d: ["report", str(d)],
            ("non-numeric",),
            prepare=lambda d: _audit_run(d, [*_ROWS[:2], {**_ROWS[2], "gold/mean": "high"}]),
            check=lambda d, err: "non-numeric" in (d / "report.html").read_text(),
        ),
    ]


def _error_lines(err: str) -> list[str]:
    return [x for x in err.splitlines() if x.strip() and "Warning" not in x and "forward_call" not in x
            and not x.startswith("  warnings.warn")]  # fmt: skip


def run_probe(p: Probe, base: Path, work: Path) -> dict:
    d = work / p.name.replace(" ", "_").replace("/", "_").replace(":", "")
    shutil.copytree(base, d)
    p.prepare(d)
    before = {w: _digest(d / w) for w in p.watch}
    holder = None
    if p.name == "a second writer on a stage":
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD, str(d / ".sft.lock")], stdout=subprocess.PIPE, text=True
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    cmd = (
        [sys.executable, "-c", p.code, *p.args(d)]
        if p.code
        else [sys.executable, "-m", "rewardlab.cli", *p.args(d)]
    )
    t = time.perf_counter()
    if p.signal_after:
        sig, started = p.signal_after
        proc = subprocess.Popen(
            cmd,
            env=ENV,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.time() + 300
        while time.time() < deadline and not ((d / started).is_file() and (d / started).read_text().strip()):
            time.sleep(0.2)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        rc = proc.returncode
    else:
        done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
        rc, err = done.returncode, done.stderr
    if holder is not None:
        holder.kill()
        holder.wait()
    lines = _error_lines(err)
    if p.check is not None:  # the command must succeed and say what is wrong
        ok = rc == 0 and all(w in err for w in p.expect) and p.check(d, err)
        outcome = "clear error" if ok else ("raw traceback" if "Traceback" in err else "silent")
    elif "Traceback" in err:
        outcome = "raw traceback"
    elif rc == 0:
        outcome = "silent"
    elif lines and lines[0].startswith("rewardlab:") and all(w in "\n".join(lines) for w in p.expect):
        outcome = "clear error"
    else:
        outcome = "unclear error"
    trusted = [w for w in p.watch if _digest(d / w) != before[w]]
    return {"probe": p.name, "outcome": outcome, "trusted_partial": trusted, "exit": rc,
            "seconds": round(time.perf_counter() - t, 1), "line": (lines[0] if lines else "")[:160]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, default=None, help="keep the probe folders here (default: a temp dir)"
    )
    ap.add_argument("--only", default=None, help="comma-separated probe names")
    args = ap.parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="rewardlab-probes-"))
    base = work / "_base"
    if not base.is_dir():
        subprocess.run([sys.executable, "-m", "rewardlab.cli", "run", str(MICRO), "--run-dir", str(base), "--quiet",
                        "--stages", "pretrain,sft", *SMALL], env=ENV, check=True)  # fmt: skip
    wanted = set(args.only.split(",")) if args.only else None
    results = []
    for p in probes():
        if wanted and p.name not in wanted:
            continue
        r = run_probe(p, base, work)
        results.append(r)
        flag = f"  TRUSTED PARTIAL: {r['trusted_partial']}" if r["trusted_partial"] else ""
        print(
            f"{r['outcome']:14s} exit {r['exit']:>4}  {r['seconds']:6.1f}s  {r['probe']}: {r['line']}{flag}",
            flush=True,
        )
    counts = Counter(r["outcome"] for r in results)
    print("\n| outcome | probes |\n|---|---|")
    for k in ("clear error", "unclear error", "raw traceback", "silent"):
        print(f"| {k} | {counts.get(k, 0)} |")
    print(f"| trusted partial files | {sum(bool(r['trusted_partial']) for r in results)} |")
    print(f"| total | {len(results)} |")
    (work / "probes.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
