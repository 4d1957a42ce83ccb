"""Best-of-n selection: the proxy's favourite of every group, against brute force."""

from __future__ import annotations

import pytest


def test_best_of_n_indices_keep_each_groups_maximum_against_brute_force() -> None:
    import random

    import torch

    from rewardlab.pipelines.bon import best_of_n_indices

    rng = random.Random(0)
    proxy = torch.tensor(
        [[rng.choice([0.0, 0.5, 1.0, -1.0]) + rng.random() * 0.01 for _ in range(8)] for _ in range(5)]
    )
    for n in (1, 2, 4, 8):
        got = best_of_n_indices(proxy, n).tolist()
        for p in range(5):
            want = [max(range(g, g + n), key=lambda j, p=p: (proxy[p, j].item(), -j)) for g in range(0, 8, n)]
            assert got[p] == want, (n, p)
    tie = torch.tensor([[0.3, 0.3, 0.1, 0.3]])
    assert best_of_n_indices(tie, 2).tolist() == [[0, 3]]  # the first of equals
    with pytest.raises(ValueError, match="must divide"):
        best_of_n_indices(tie, 3)
