# rewardlab: two commands on a fresh machine.
#   make demo   create .venv, install torch (CPU wheel) then rewardlab, run the demonstration (configs/demo.yaml, ~4 min)
#   make test   same install, then the test suite
#   make bench  rewardlab vs TRL throughput, side by side (benchmarks/RESULTS.md)
#   make mutation  mutation testing of the measuring code with mutmut (docs/testing.md; not in CI)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint bench mutation clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned, so that nothing later pulls a CUDA build; a torch already in the venv is kept.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/rewardlab run configs/demo.yaml

test: install
	$(PY) -m pytest -m "not slow" -q

test-all: install
	$(PY) -m pytest -q

# rewardlab against TRL 1.16 side by side (benchmarks/bench_trl.py): make bench [BENCH_ARGS=--quick]
BENCH_ARGS ?=
# The full-PPO row runs TRL 1.12's PPOTrainer (the last TRL with PPO) from its own venv, .venv-trl-ppo.
.PHONY: bench-trl-ppo-env
bench-trl-ppo-env:
	PYTHON=$(PYTHON) TORCH_VERSION=$(TORCH_VERSION) bash benchmarks/trl_ppo_env.sh

bench: install bench-trl-ppo-env
	$(PIP) install -q -e ".[bench]"
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_trl.py $(BENCH_ARGS)

# Mutation testing (docs/testing.md): mutmut mutates the measuring functions below ([tool.mutmut] in
# pyproject.toml names the files and the fast tests that may kill them; each mutant runs only the tests
# that executed its function). Writes the survivors to docs/mutation-survivors.md and prints the score;
# docs/mutation-equivalents.txt lists the equivalent mutants excluded from it, each with its reason.
MUTATION_CHILDREN ?= 2
MUTATION_SCOPE := \
	'rewardlab.losses.*' \
	'rewardlab.audit.laws.*' \
	'rewardlab.audit.criteria.x_check_seed__mutmut_*' \
	'rewardlab.audit.criteria.x__seed_pairs__mutmut_*' \
	'rewardlab.audit.criteria.x__seeds__mutmut_*' \
	'rewardlab.audit.criteria.x__labeller__mutmut_*' \
	'rewardlab.audit.criteria.x_criteria_rows__mutmut_*' \
	'rewardlab.audit.criteria.x_criteria_table__mutmut_*' \
	'rewardlab.audit.criteria.x_criteria_summary__mutmut_*' \
	'rewardlab.audit.policy_eval.x_score_sample__mutmut_*' \
	'rewardlab.audit.policy_eval.x_score_responses__mutmut_*' \
	'rewardlab.audit.policy_eval.x_behavior_metrics__mutmut_*' \
	'rewardlab.audit.policy_eval.x_summarize__mutmut_*' \
	'rewardlab.audit.policy_eval.x_gold_parts__mutmut_*' \
	'rewardlab.audit.tracker.x_position_ids_from_mask__mutmut_*' \
	'rewardlab.audit.tracker.x_response_logprobs__mutmut_*' \
	'rewardlab.report.analysis.xǁMethodRunǁcolumn__mutmut_*' \
	'rewardlab.report.analysis.xǁMethodRunǁkl__mutmut_*' \
	'rewardlab.report.analysis.xǁMethodRunǁsqrt_kl__mutmut_*' \
	'rewardlab.report.analysis.x__num__mutmut_*' \
	'rewardlab.report.analysis.x_row_kl__mutmut_*' \
	'rewardlab.report.analysis.x_group_runs__mutmut_*' \
	'rewardlab.report.analysis.x_mean_curve__mutmut_*' \
	'rewardlab.report.analysis.x__nanmean0__mutmut_*' \
	'rewardlab.report.analysis.x_fit_runs__mutmut_*' \
	'rewardlab.report.analysis.x__first_last_finite__mutmut_*' \
	'rewardlab.report.analysis.x_law_dict__mutmut_*' \
	'rewardlab.report.analysis.x_headline_key__mutmut_*' \
	'rewardlab.report.analysis.x_summarize_method__mutmut_*' \
	'rewardlab.report.analysis.x_compare_methods__mutmut_*' \
	'rewardlab.report.analysis.x_build_summary__mutmut_*' \
	'rewardlab.rewards.model.x_collate_sequences__mutmut_*' \
	'rewardlab.rewards.model.xǁRewardScoresǁconservative__mutmut_*' \
	'rewardlab.rewards.model.xǁRewardModelǁraw_member_scores__mutmut_*' \
	'rewardlab.rewards.model.xǁRewardModelǁnormalize__mutmut_*' \
	'rewardlab.rewards.model.xǁRewardModelǁ__call____mutmut_*'

# Counts the verdicts of the mutants in scope, writes the survivors (with their diffs) and prints the score.
define MUTATION_REPORT
import collections, fnmatch, sys
from pathlib import Path
from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
from mutmut.utils.file_utils import walk_mutatable_files
out_path, scope = Path(sys.argv[1]), sys.argv[2:]
equivalent = {}
for line in Path("docs/mutation-equivalents.txt").read_text(encoding="utf-8").splitlines():
    name, _, reason = line.strip().partition(" ")
    if name and not name.startswith("#"):
        equivalent[name] = reason.strip()
rows = []
for path in walk_mutatable_files():
    data = SourceFileMutationData(path=path)
    data.load()
    for name, code in data.exit_code_by_key.items():
        if any(fnmatch.fnmatch(name, p) for p in scope):
            rows.append((name, status_by_exit_code[code], path))
detected = ("killed", "timeout")
counts = collections.Counter(status for _, status, _ in rows)
eq = [r for r in rows if r[0] in equivalent and r[1] not in detected]
stale = sorted(r[0] for r in rows if r[0] in equivalent and r[1] in detected)
unchecked = collections.Counter(r[0].rsplit("__mutmut_", 1)[0] for r in rows if r[1] == "not checked")
alive = [r for r in rows if r[0] not in equivalent and r[1] not in (*detected, "not checked")]
killed = counts["killed"] + counts["timeout"]
total = len(rows) - len(eq) - sum(unchecked.values())
score = f"{killed} of {total} mutants killed ({100.0 * killed / max(total, 1):.1f}%); {len(eq)} equivalent mutants excluded"
if unchecked:
    score += f"; {sum(unchecked.values())} of {len(rows)} not checked (the run was stopped)"
lines = ["# Surviving mutants", "", "Written by `make mutation` (docs/testing.md explains how to read it).", "",
         f"**Score: {score}.** Verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".", ""]
for name, status, path in sorted(alive):
    lines += [f"## `{name}` ({status})", "", "```diff", get_diff_for_mutant(name, path=path).strip(), "```", ""]
if unchecked:
    lines += ["# Not checked", ""] + [f"- `{f}`: {n}" for f, n in sorted(unchecked.items())] + [""]
lines += ["# Equivalent mutants (excluded from the score)", ""]
lines += [f"- `{name}`: {equivalent[name]}" for name, _, _ in sorted(eq)]
if stale:
    lines += ["", "Listed as equivalent but killed (remove them from docs/mutation-equivalents.txt):", ""]
    lines += [f"- `{name}`" for name in stale]
out_path.write_text(chr(10).join(lines) + chr(10), encoding="utf-8")
print(f"mutation score: {score}; survivors in {out_path}")
endef
export MUTATION_REPORT

mutation: install
	rm -rf mutants
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children $(MUTATION_CHILDREN) $(MUTATION_SCOPE)
	$(PY) -c "$$MUTATION_REPORT" docs/mutation-survivors.md $(MUTATION_SCOPE)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache mutants
