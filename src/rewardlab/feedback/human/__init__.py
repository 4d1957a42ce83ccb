"""``label.source: human``: a web app that collects preference comparisons from people (issue 19).

:mod:`~rewardlab.feedback.human.db` is the SQLite store, :mod:`~rewardlab.feedback.human.server` the
Starlette app, :mod:`~rewardlab.feedback.human.stats` the export to comparisons and the agreement
statistics, :mod:`~rewardlab.feedback.human.source` the :class:`~rewardlab.feedback.base.LabelFile` the
label stage reads, and :mod:`~rewardlab.feedback.human.commands` the ``rewardlab label serve | enqueue |
add-annotator | export`` commands. docs/human-labeling.md walks through the loop.
"""
