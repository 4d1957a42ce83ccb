"""Algorithms for control tasks (environments with a hidden gold reward, :mod:`rewardlab.tasks.control`).

Tabular, exact pieces work on arrays (``P[s, a, s']``, ``R[s, a, s']``) so they never name a concrete
environment: :mod:`~rewardlab.control.tabular` (value iteration, soft value iteration, policy evaluation,
Q-learning), :mod:`~rewardlab.control.shaping` (potential-based and non-potential shaping),
:mod:`~rewardlab.control.epic` (EPIC distance), :mod:`~rewardlab.control.irl` (MCE IRL, ill-posedness),
:mod:`~rewardlab.control.imitation` (behavioural cloning vs procedure cloning on held-out mazes) and
:mod:`~rewardlab.control.sweep` (the Goodhart sweep). Learning from comparisons and the deep path live in
:mod:`~rewardlab.control.preferences` and :mod:`~rewardlab.control.deep`. Environments are built by id with
:func:`rewardlab.tasks.registry.make_env`.
"""
