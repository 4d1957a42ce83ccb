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


def test_bon_n_values_default_powers_of_two_or_the_listed_divisors() -> None:
    from pydantic import ValidationError

    from rewardlab.config import BoNConfig

    assert BoNConfig(max_n=64).n_values() == [1, 2, 4, 8, 16, 32, 64]
    assert BoNConfig(max_n=1).n_values() == [1]
    assert BoNConfig(max_n=96, ns=[96, 3, 1, 3, 12]).n_values() == [1, 3, 12, 96]
    with pytest.raises(ValidationError, match="power of two"):
        BoNConfig(max_n=96)
    with pytest.raises(ValidationError, match=r"divisors of bon\.max_n=96"):
        BoNConfig(max_n=96, ns=[1, 5])
    with pytest.raises(ValidationError, match="divisors"):
        BoNConfig(max_n=64, ns=[])


def test_best_of_n_indices_for_a_divisor_that_is_not_a_power_of_two() -> None:
    import torch

    from rewardlab.pipelines.bon import best_of_n_indices

    proxy = torch.tensor([[0.1, 0.9, 0.2, 0.5, 0.4, 0.3]])
    assert best_of_n_indices(proxy, 3).tolist() == [[1, 3]]
    assert best_of_n_indices(proxy, 6).tolist() == [[1]]
