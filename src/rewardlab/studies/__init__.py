"""Failure studies (issue 21): recipes that reuse the pipeline's stages to measure how RLHF fails.

Each study reads a small YAML of its own (``configs/study-<name>.yaml``: the pipeline config it builds on,
``--set``-style overrides, seeds, its knobs), runs or reuses the stages it needs, and writes a table (JSON and
markdown) and a figure (PNG) into its output folder: ``rewardlab study <name> configs/study-<name>.yaml``.

* ``poison`` (:mod:`rewardlab.studies.poison`): Best-of-Venom preference poisoning at 1-5%, attack success
  after reward model + PPO and after DPO, and three defenses measured on the poisoned labels.
* ``false-positives`` (:mod:`rewardlab.studies.false_positives`): time-pressed evaluators judging answers
  before and after RLHF (U-SOPHISTRY): the false-positive rate against gold and what drives it.
* ``irl`` (:mod:`rewardlab.studies.irl`): the PPO policy's reward recovered as ``beta log(pi / pi_ref)`` and by
  max-ent / max-margin IRL over the task's features, scored on held-out preferences.
* ``overopt`` (:mod:`rewardlab.studies.overopt`): Gao et al. 2022's over-optimization study on real text.
"""
