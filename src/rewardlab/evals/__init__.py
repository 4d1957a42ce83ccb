"""Behaviour evaluations of any local causal LM (``rewardlab eval``).

* Anthropic's model-written evaluations (Perez et al. 2022): two-choice log-prob comparisons, the rate
  of the behaviour named by each set, with a Wilson interval;
* TruthfulQA MC1 and MC2 (Lin, Hilton and Evans 2022) from answer log-probs;
* GSM8K (Cobbe et al. 2021): exact match of the final number of a greedy generation.

``metrics`` holds the pure formulas, ``data`` the readers, ``scoring`` the model calls, ``run`` the command.
The package sits above ``policies`` and ``tasks`` and below ``methods``: the audit may call it.
"""
