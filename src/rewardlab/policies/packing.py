"""Shared-prefix packing: sequences that start alike become ONE row (``prefix + first + second``; a prompt and
all its sampled responses, :func:`pack_prompt_groups`).

A 4D attention mask lets ``first`` tokens see the prefix and earlier ``first`` tokens, and ``second``
tokens see the prefix and earlier ``second`` tokens (never ``first``); ``second``'s positions restart
at ``len(prefix)``. For a causal model every hidden state then equals the one of the two separate
sequences ``prefix + first`` and ``prefix + second``, and the prefix is encoded once instead of twice.
DPO packs prompt + chosen + rejected this way (:func:`rewardlab.optimize.dpo.collate_pairs`); a causal
reward model packs the two sequences of a comparison by their longest common prefix
(:func:`rewardlab.rewards.model.packed_pair_scores`); PPO/GRPO/RLOO (``ppo.shared_prompt``) pack each prompt with
all of its sampled responses (:func:`pack_prompt_groups`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

#: Model types whose decoder takes a 4D float attention mask with explicit positions (and whose outputs then equal
#: the separate sequences' up to float rounding): the ones a shared prefix can be packed for.
PACKABLE_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral"})


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
    return PackedRows(ids, pos, segment_mask(seg, dtype), first_last, second_last)


def segment_mask(seg: Tensor, dtype: torch.dtype) -> Tensor:
    """The additive ``[R, 1, W, W]`` mask of packed rows whose columns are labelled ``seg`` [R, W]: 0 for the
    shared prefix, ``k > 0`` for the k-th sequence after it, -1 for padding. A token attends causally to the
    prefix and to its own sequence; padding attends only to itself, so no softmax row is empty."""
    width = seg.shape[1]
    q = torch.arange(width)
    sq, sk = seg[:, :, None], seg[:, None, :]
    allowed = (q[:, None] >= q[None, :]) & (sk >= 0) & ((sk == 0) | (sk == sq))
    allowed |= torch.eye(width, dtype=torch.bool)
    return torch.zeros((seg.shape[0], 1, width, width), dtype=dtype).masked_fill(
        ~allowed[:, None], torch.finfo(dtype).min
    )


def prompt_groups(prompt_ids: Tensor, prompt_mask: Tensor) -> list[Tensor] | None:
    """The rows of each distinct prompt of a left-padded batch (``[B, P]``), groups in order of first
    appearance, or ``None`` when no prompt repeats."""
    keys = torch.cat([prompt_ids * prompt_mask, prompt_mask], dim=1)
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)
    n_groups = int(inverse.max()) + 1
    if n_groups == len(keys):
        return None
    rows = torch.arange(len(keys), device=inverse.device)
    first = torch.full((n_groups,), len(keys), device=inverse.device).scatter_reduce(0, inverse, rows, "amin")
    return [rows[inverse == g] for g in first.argsort().tolist()]


@dataclass
class PackedGroups:
    """One right-padded row per distinct prompt: the prompt, then each of its responses after it. ``input_ids`` and
    ``position_ids`` are [R, W], ``attention_mask`` the additive float mask [R, 1, W, W]; the original row ``i``
    of a batch lives in packed row ``rows[i]``, and its response token ``t`` is predicted at column
    ``cols[i, t]`` (the prompt's last token for ``t = 0``, its own previous token after that; for ``t`` past the
    response, the prompt's last token: those entries are padding, masked by the caller)."""

    input_ids: Tensor
    position_ids: Tensor
    attention_mask: Tensor
    rows: Tensor
    cols: Tensor

    @property
    def first_col(self) -> int:
        """The first column any response token is predicted at: the LM head is needed from here on."""
        return int(self.cols.min())

    def reads(self) -> tuple[Tensor, Tensor]:
        """The columns each packed row is read at, ``read`` [R, K] (its rows' ``cols`` one after another, ``K`` the
        largest group's count times ``T``, shorter rows padded with column 0, the prompt's first token), and
        ``at`` [B, T], where row ``i``'s token ``t`` is among them: ``read[rows[i], at[i, t]] == cols[i, t]``."""
        t = self.cols.shape[1]
        r = self.input_ids.shape[0]
        member = torch.nn.functional.one_hot(self.rows, r)  # [B, R]
        rank = (member.cumsum(0) - 1).gather(1, self.rows[:, None])[:, 0]  # i's index within its packed row
        at = rank[:, None] * t + torch.arange(t, device=self.cols.device)
        read = torch.zeros((r, int(member.sum(0).max()) * t), dtype=torch.long, device=self.cols.device)
        read[self.rows[:, None], at] = self.cols
        return read, at


def pack_prompt_groups(
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    pad_id: int,
    dtype: torch.dtype = torch.float32,
) -> PackedGroups | None:
    """Pack a left-padded prompt batch and its right-padded responses (``[B, P]``, ``[B, T]``, as
    :class:`~rewardlab.policies.sampling.SampleBatch` holds them) into one row per distinct prompt.

    In a row, every response sees the prompt and its own earlier tokens, never another response's, and its
    positions continue the prompt's, so each hidden state equals that of the response's own sequence up to
    float rounding while the prompt is encoded once per group instead of once per response (GRPO/RLOO groups,
    PPO's ``samples_per_prompt``). Returns ``None`` when no prompt repeats (nothing to save).
    """
    groups = prompt_groups(prompt_ids, prompt_mask)
    if groups is None:
        return None
    b, t_max = response_ids.shape
    lengths = response_mask.sum(dim=1).tolist()
    members = [g.tolist() for g in groups]
    prompts = {g[0]: prompt_ids[g[0]][prompt_mask[g[0]].bool()].tolist() for g in members}
    width = max(len(prompts[g[0]]) + sum(lengths[i] for i in g) for g in members)
    r = len(members)
    ids = torch.full((r, width), pad_id, dtype=torch.long)
    pos = torch.zeros((r, width), dtype=torch.long)
    seg = torch.full((r, width), -1, dtype=torch.long)  # 0 prompt, j + 1 the group's j-th response, -1 pad
    rows = torch.zeros(b, dtype=torch.long)
    cols = torch.zeros((b, t_max), dtype=torch.long)
    for g, group in enumerate(members):
        prompt = prompts[group[0]]
        p = len(prompt)
        ids[g, :p] = torch.tensor(prompt, dtype=torch.long)
        pos[g, :p] = torch.arange(p)
        seg[g, :p] = 0
        start = p
        for j, i in enumerate(group):
            n = int(lengths[i])
            ids[g, start : start + n] = response_ids[i, :n]
            pos[g, start : start + n] = torch.arange(p, p + n)
            seg[g, start : start + n] = j + 1
            rows[i] = g
            cols[i, :] = p - 1
            cols[i, 1:n] = torch.arange(start, start + n - 1)
            start += n
    device = response_ids.device
    mask = segment_mask(seg, dtype)
    return PackedGroups(ids.to(device), pos.to(device), mask.to(device), rows.to(device), cols.to(device))
