"""Shared-prefix packing: two sequences that start alike become ONE row ``prefix + first + second``.

A 4D attention mask lets ``first`` tokens see the prefix and earlier ``first`` tokens, and ``second``
tokens see the prefix and earlier ``second`` tokens (never ``first``); ``second``'s positions restart
at ``len(prefix)``. For a causal model every hidden state then equals the one of the two separate
sequences ``prefix + first`` and ``prefix + second``, and the prefix is encoded once instead of twice.
DPO packs prompt + chosen + rejected this way (:func:`rewardlab.optimize.dpo.collate_pairs`); a causal
reward model packs the two sequences of a comparison by their longest common prefix
(:func:`rewardlab.rewards.model.packed_pair_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PackedRows:
    """Right-padded packed rows: token ids and positions [R, W], an additive float mask [R, 1, W, W],
    and the column of each row's last ``first`` token and last ``second`` token [R] (in the prefix when
    that side adds no token of its own)."""

    input_ids: Tensor
    position_ids: Tensor
    attention_mask: Tensor
    first_last: Tensor
    second_last: Tensor

    def to(self, device: torch.device | str) -> PackedRows:
        return PackedRows(**{k: v.to(device) for k, v in self.__dict__.items()})


def split_common_prefix(a: Sequence[int], b: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """``(prefix, a_rest, b_rest)`` with ``prefix`` the longest common prefix of ``a`` and ``b``."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return list(a[:n]), list(a[n:]), list(b[n:])


def pack_shared_prefix(
    rows: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]],
    pad_id: int,
    dtype: torch.dtype = torch.float32,
) -> PackedRows:
    """Pack ``(prefix, first, second)`` triples, one row each (see the module docstring).

    Padding attends only to itself, so no softmax row is empty; it is never read.
    """
    if not rows:
        raise ValueError("pack_shared_prefix: no rows")
    if any(not p and (not f or not s) for p, f, s in rows):
        raise ValueError("pack_shared_prefix: a side with no token at all (empty prefix and empty side)")
    b = len(rows)
    width = max(len(p) + len(f) + len(s) for p, f, s in rows)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    pos = torch.zeros((b, width), dtype=torch.long)
    seg = torch.full((b, width), -1, dtype=torch.long)  # 0 prefix, 1 first, 2 second, -1 pad
    first_last = torch.zeros(b, dtype=torch.long)
    second_last = torch.zeros(b, dtype=torch.long)
    for i, (p_ids, f_ids, s_ids) in enumerate(rows):
        p, f, s = len(p_ids), len(f_ids), len(s_ids)
        ids[i, : p + f + s] = torch.tensor([*p_ids, *f_ids, *s_ids], dtype=torch.long)
        pos[i, : p + f] = torch.arange(p + f)
        pos[i, p + f : p + f + s] = torch.arange(p, p + s)
        seg[i, :p], seg[i, p : p + f], seg[i, p + f : p + f + s] = 0, 1, 2
        first_last[i] = p + f - 1
        second_last[i] = p + f + s - 1 if s else p - 1
    q = torch.arange(width)
    causal = q[:, None] >= q[None, :]
    sq, sk = seg[:, :, None], seg[:, None, :]
    allowed = causal & (sk >= 0) & ((sk == 0) | (sk == sq))
    allowed |= torch.eye(width, dtype=torch.bool)
    mask = torch.zeros((b, 1, width, width), dtype=dtype).masked_fill(
        ~allowed[:, None], torch.finfo(dtype).min
    )
    return PackedRows(ids, pos, mask, first_last, second_last)
