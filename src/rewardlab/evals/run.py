"""The ``rewardlab eval`` command (filled in below)."""

from __future__ import annotations

import argparse

from rewardlab.utils import RewardlabError


def eval_command(args: argparse.Namespace) -> int:
    raise RewardlabError("rewardlab eval: not implemented yet")
