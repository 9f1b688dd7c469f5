r"""The slot table: one static KV cache whose rows are the requests being decoded, each at its own position.

A server decodes many requests at once, and they arrive and finish at different times. The cache
is allocated once, ``[slots, n_kv, max_seq_len, h_d]`` per layer: row ``i`` is *slot* ``i``, owned
by one request from the moment it is admitted until it finishes, when the slot is free for the
next one. Two kinds of forward pass use it:

* **prefill**: a new request's prompt runs through the model alone, writing its keys and values
  into its own row only (the other rows are not touched, so the requests there go on unharmed);
* **decode**: one token of *every* busy slot in a single batched forward, each row at its own
  position: one request may be at position 5 and its neighbour at 200. Positions are per row
  (``input_pos`` of shape ``[b, 1]``), and so are RoPE's angles and the causal mask.

The batch of a decode step is the prefix of the table up to the highest busy slot (a view of the
cache, no copy): a request takes the lowest free slot, so the rows in use stay packed at the top.
A free slot below a busy one costs a wasted row until the next request fills it.

>>> import torch
>>> from llama.model.config import ModelConfig
>>> from llama.model.transformer import Transformer
>>> _ = torch.manual_seed(0)
>>> model = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=64, max_seq_len=32)).eval()
>>> table = SlotTable(model, slots=2)
>>> a, b = table.take(), table.take()
>>> table.prefill(a, [1, 5, 7]).shape, table.prefill(b, [1, 9]).shape
(torch.Size([64]), torch.Size([64]))
>>> table.lengths
[3, 2]
>>> table.decode({a: 3, b: 4}).shape       # both slots in one forward, at positions 3 and 2
torch.Size([2, 64])
>>> table.release(a); table.free_slots()
[0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from llama.model.attention import KVCache, causal_mask
from llama.model.transformer import Transformer

__all__ = ["SlotCache", "SlotTable"]


# --8<-- [start:slot_cache]
class SlotCache(KVCache):
    """A :class:`~llama.model.attention.KVCache` over all slots, of which each forward reads and writes some rows.

    :attr:`rows` (a ``slice`` of the batch dimension) says which rows the next forward uses: one
    row for a prefill, ``0 .. hi-1`` for a decode step. Slicing the leading dimension is a view, so
    no keys or values are copied. Positions are either shared by the rows (``[s]``, a prefill) or
    one per row (``[b, s]``, a decode step in which every request is at its own position).

    Args:
        slots: rows of the cache, the most requests decoded together.
        max_seq_len: positions per slot.
        n_kv_heads: key/value heads.
        head_dim: width of a head.
        dtype: storage type of the cache.
        device: where the cache lives.
        mask: ``causal_mask(max_seq_len)``, shared by the caches of all layers (built if ``None``), as for
            :class:`~llama.model.attention.KVCache`.

    Shape:
        buffers ``k``, ``v``: ``[slots, n_kv, max_seq_len, h_d]``.
    """

    def __init__(self, slots: int, max_seq_len: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 mask: torch.Tensor | None = None) -> None:
        super().__init__(slots, max_seq_len, n_kv_heads, head_dim, dtype, device, mask)
        self.rows = slice(0, slots)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store ``k``, ``v`` (``[b, n_kv, s, h_d]``) in rows :attr:`rows` at ``input_pos``.

        Args:
            input_pos: ``[s]`` (the same positions in every row) or ``[b, s]`` (row ``r`` writes at
                ``input_pos[r]``).
            k: the new keys, ``b`` the number of rows selected.
            v: the new values, likewise.

        Returns:
            ``(keys, values, mask)``: the selected rows' whole buffers ``[b, n_kv, max_seq_len, h_d]``
            (views) and the causal-mask rows of the positions, ``[s, max_seq_len]`` for shared
            positions or ``[b, 1, s, max_seq_len]`` for per-row ones (broadcast over the heads).

        Raises:
            ValueError: ``k`` has another number of rows than :attr:`rows` selects.
        """
        keys, values = self.k[self.rows], self.v[self.rows]
        if k.shape[0] != keys.shape[0]:
            raise ValueError(f"{k.shape[0]} sequences do not fit the {keys.shape[0]} rows selected ({self.rows})")
        if input_pos.dim() == 1:
            keys.index_copy_(2, input_pos, k)
            values.index_copy_(2, input_pos, v)
            return keys, values, self.mask[input_pos]
        # Row r, head h, position input_pos[r, j] <- k[r, h, j]: the two index tensors broadcast to
        # [b, s] and select [b, s, n_kv, h_d] (advanced indices first), hence the transpose.
        row = torch.arange(k.shape[0], device=k.device).unsqueeze(1)
        keys[row, :, input_pos] = k.transpose(1, 2)
        values[row, :, input_pos] = v.transpose(1, 2)
        return keys, values, self.mask[input_pos].unsqueeze(1)
# --8<-- [end:slot_cache]


# --8<-- [start:table]
class SlotTable:
    """Slots of one static KV cache, their lengths, and the two forward passes that fill them.

    Args:
        model: the model, in ``eval()`` mode. The table installs its cache for each of its own
            forward passes only, so the model can still be used for anything else in between.
        slots: how many requests can be decoded together (rows of the cache).
        max_seq_len: positions per slot, the longest prompt + reply (default: the model's).

    Raises:
        ValueError: ``slots`` is not a positive integer, or ``max_seq_len`` exceeds the model's.
    """

    def __init__(self, model: Transformer, slots: int, max_seq_len: int | None = None) -> None:
        if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
            raise ValueError(f"slots must be a positive integer, got {slots!r}")
        config = model.config
        self.max_seq_len = max_seq_len or config.max_seq_len
        if self.max_seq_len > config.max_seq_len:
            raise ValueError(f"max_seq_len={self.max_seq_len} exceeds the model's {config.max_seq_len}")
        self.model, self.slots = model, slots
        weight = model.tok_embeddings.weight
        self.device = weight.device
        mask = causal_mask(self.max_seq_len, device=self.device)  # one table, shared by every layer
        self.caches = [SlotCache(slots, self.max_seq_len, config.n_kv_heads, config.head_dim, weight.dtype,
                                 self.device, mask) for _ in model.layers]
        #: Positions written in each slot (the next token of slot i goes to position lengths[i]).
        self.lengths = [0] * slots
        self.busy = [False] * slots

    def free_slots(self) -> list[int]:
        """The free slots, lowest first."""
        return [i for i in range(self.slots) if not self.busy[i]]

    def take(self) -> int:
        """Mark the lowest free slot busy and return it (lowest: keeps the decode batch short).

        Raises:
            RuntimeError: every slot is busy (the scheduler admits only into free slots).
        """
        free = self.free_slots()
        if not free:
            raise RuntimeError(f"all {self.slots} slots are busy")
        self.busy[free[0]], self.lengths[free[0]] = True, 0
        return free[0]

    def release(self, slot: int, failed: bool = False) -> None:
        """Free ``slot``. Its keys and values stay in the cache, unseen: the next prefill overwrites
        them, and the causal mask hides every position a request has not written itself. After a
        request that ``failed`` they are zeroed: they may hold NaN, which the mask does not hide
        (:meth:`~llama.model.attention.KVCache.reset`)."""
        if failed:
            for cache in self.caches:
                cache.reset(slot)
        self.busy[slot], self.lengths[slot] = False, 0

    @torch.inference_mode()
    def _forward(self, rows: slice, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        for cache in self.caches:
            cache.rows = rows
        with self.model.using_cache(self.caches):
            return self.model(tokens, input_pos=input_pos, last_only=True)[:, -1]
    # --8<-- [end:table]

    # --8<-- [start:prefill]
    def prefill(self, slot: int, ids: Sequence[int]) -> torch.Tensor:
        """Run a prompt through the model into ``slot``'s row; the logits after its last id (``[vocab]``).

        Only that row of the cache is written: the other slots' requests go on at the next decode
        step as if nothing had happened.

        Raises:
            ValueError: the prompt is empty or does not fit the slot's ``max_seq_len`` positions.
        """
        if not 0 < len(ids) <= self.max_seq_len:
            raise ValueError(f"a prompt of {len(ids)} ids does not fit a slot of {self.max_seq_len} positions")
        tokens = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        logits = self._forward(slice(slot, slot + 1), tokens, torch.arange(len(ids), device=self.device))
        self.lengths[slot] = len(ids)
        return logits[0]
    # --8<-- [end:prefill]

    # --8<-- [start:decode]
    def decode(self, tokens: Mapping[int, int]) -> torch.Tensor:
        """Feed one token to each slot in ``tokens`` (``{slot: id}``), all in one batched forward.

        The batch is rows ``0 .. hi-1``, ``hi`` one past the highest slot given: each row's token
        goes to that slot's own next position. A row inside it that is not given (a free slot, or
        one waiting for its prefill) is fed token 0 at position 0, a wasted row whose key the
        next prefill of that slot overwrites.

        Returns:
            ``[hi, vocab]`` logits: row ``i`` is the next-token distribution of slot ``i``.

        Raises:
            ValueError: a slot given is full (its next position would be ``max_seq_len``), or a busy
                slot below the highest one given is left out (its row would be overwritten).
        """
        hi = max(tokens) + 1
        skipped = [i for i in range(hi) if self.busy[i] and i not in tokens]
        if skipped:
            raise ValueError(f"busy slots {skipped} are in the batch but get no token: give every busy slot one")
        ids, positions = [0] * hi, [0] * hi
        for slot, token in tokens.items():
            if self.lengths[slot] >= self.max_seq_len:
                raise ValueError(f"slot {slot} is full: all {self.max_seq_len} positions are written")
            ids[slot], positions[slot] = token, self.lengths[slot]
        logits = self._forward(slice(0, hi), torch.tensor(ids, device=self.device).view(hi, 1),
                               torch.tensor(positions, device=self.device).view(hi, 1))
        for slot in tokens:
            self.lengths[slot] += 1
        return logits
    # --8<-- [end:decode]
