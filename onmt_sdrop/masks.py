"""Dropout masks for the four patterns of Sarma et al. (2021).

==========  ============  ===========  ===============================
pattern     within batch  across time  compactable (dropped = no work)
==========  ============  ===========  ===============================
element     different     different    no   (stock ``nn.Dropout``)
sample      different     same         no   (variational dropout)
step        same          different    yes  (the paper's choice)
fixed       same          same         yes  (ablation)
==========  ============  ===========  ===============================

A :class:`StepMask` keeps, at each group ``g`` (a time step), ``counts[g]`` of the ``size`` units,
the same units for every sample of the batch. The kept set is a *window* of a random permutation:
``K_g = perm[(offsets[g] + j) % size]`` for ``j < counts[g]``. For a uniformly random ``perm``
each ``K_g`` is a uniformly random subset, exactly as plain step dropout; the window form lets a
consumer permute its weight once per batch and then read each step's kept rows as a contiguous
slice, with no per-step copy. ``perm`` is drawn anew at every forward pass (every batch).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

PATTERNS = ("step", "fixed", "sample", "element")
COMPACT_PATTERNS = ("step", "fixed")
COUNTS = ("fixed", "bernoulli")


def kept_count(size: int, p: float) -> int:
    """Units kept per step under the fixed-count rule: ``size - round(p * size)``."""
    return size - int(round(p * size))


def host_index(values, device) -> torch.Tensor:
    """A long tensor of the host ints ``values`` on ``device``; to a GPU through pinned memory and
    asynchronously, since a pageable copy would make the host wait for the GPU to drain."""
    t = torch.tensor(values, dtype=torch.long)
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@dataclass(eq=False)
class StepMask:
    """Kept units per group (time step), shared by every sample of the batch.

    perm:    (size,) long, a permutation of the units
    offsets: (G,) long, window start of each group in ``perm``
    counts:  (G,) long, number of kept units of each group (``<= kmax``)
    scale:   (G,) float, the inverse keep rate applied to kept units
    windows: the (offset, count) of each group as Python ints. Masks are drawn on the host, so
             sampling records them for free; backends plan their GEMMs from them without ever
             reading a device tensor back (no host sync in forward or backward). Under CUDA
             graphs the device tensors are refilled and the offsets here go stale: a plan that
             must hold for every refill reads ``align``, not the offsets.
    align:   every offset is a multiple of it, in this mask and in every refill of its buffer

    The index tensors the ops need (:meth:`window_index`, :meth:`column_weight`, the groups that
    share a window) are made once per mask, on the mask's device, and sliced for a single step.
    """

    perm: torch.Tensor
    offsets: torch.Tensor
    counts: torch.Tensor
    scale: torch.Tensor
    size: int
    kmax: int
    windows: tuple = None
    align: int = 1

    def __post_init__(self):
        if self.windows is None:   # a mask built by hand (tests): read its windows once
            self.windows = tuple(zip(self.offsets.tolist(), self.counts.tolist()))
        self._cache = {}
        self._parent = None

    @property
    def groups(self) -> int:
        return len(self.windows)

    @property
    def device(self) -> torch.device:
        return self.perm.device

    def to(self, device) -> "StepMask":
        """This mask on ``device``. From the host to a GPU it is ONE asynchronous copy from pinned
        memory (:meth:`packed`): four pageable copies would each wait for the GPU to drain."""
        device = torch.device(device)
        if device.type != "cuda" or self.perm.device.type != "cpu":
            return StepMask(self.perm.to(device), self.offsets.to(device), self.counts.to(device),
                            self.scale.to(device), self.size, self.kmax, self.windows, self.align)
        return self.packed_to(device)

    def packed_to(self, device) -> "StepMask":
        """This mask on ``device`` as views of one buffer (:meth:`unpacked`); to a GPU by one
        asynchronous copy from pinned memory."""
        pin = torch.device(device).type == "cuda"
        return self.unpacked(self.packed(pin=pin).to(device, non_blocking=pin))

    def packed(self, pin: bool = False) -> torch.Tensor:
        """perm, offsets, counts and the scale's float64 bits in one int64 host tensor."""
        parts = (self.perm, self.offsets, self.counts, self.scale.double().view(torch.int64))
        out = torch.empty(sum(t.numel() for t in parts), dtype=torch.int64, pin_memory=pin)
        return torch.cat(parts, out=out)

    def unpacked(self, buffer: torch.Tensor) -> "StepMask":
        """A mask of this one's shape whose tensors are views of ``buffer`` (see :meth:`packed`);
        writing a newly packed mask into ``buffer`` changes it in place (CUDA graphs do)."""
        h, g = self.size, self.groups
        m = StepMask(buffer[:h], buffer[h:h + g], buffer[h + g:h + 2 * g],
                     buffer[h + 2 * g:h + 3 * g].view(torch.float64), self.size, self.kmax,
                     self.windows, self.align)
        m.buffer = buffer
        return m

    def _cached(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def step(self, g) -> "StepMask":
        """The mask of group ``g`` (an int or a slice) as a mask of its own; its index tensors
        are slices of this mask's (made once for all steps)."""
        sl = slice(g, g + 1) if isinstance(g, int) else g
        sub = StepMask(self.perm, self.offsets[sl], self.counts[sl], self.scale[sl], self.size,
                       self.kmax, self.windows[sl], self.align)
        sub._parent = (self, sl)
        return sub

    @staticmethod
    def cat(masks) -> "StepMask":
        """The groups of several masks of one batch (one ``perm``), in order, as one mask."""
        first = masks[0]
        assert all(m.perm is first.perm for m in masks), "masks of different batches"
        return StepMask(first.perm, torch.cat([m.offsets for m in masks]),
                        torch.cat([m.counts for m in masks]), torch.cat([m.scale for m in masks]),
                        first.size, first.kmax, sum((m.windows for m in masks), ()),
                        min(m.align for m in masks))

    def ext_perm(self) -> torch.Tensor:
        """``perm`` followed by its first ``kmax`` entries: every window is a contiguous slice."""
        return self._cached(("ext",), lambda: torch.cat([self.perm, self.perm[: self.kmax]]))

    def inverse_perm(self) -> torch.Tensor:
        """``inverse[u]`` = the position of unit ``u`` in ``perm``."""
        def make():
            inverse = torch.empty_like(self.perm)
            return inverse.scatter_(0, self.perm, torch.arange(self.size, device=self.device))
        return self._cached(("inverse",), make)

    def window_positions(self) -> torch.Tensor:
        """(G, kmax) position in ``perm`` of each compact column: ``(offsets[g] + j) % size``."""
        def make():
            if self._parent is not None:
                parent, sl = self._parent
                return parent.window_positions()[sl]
            j = torch.arange(self.kmax, device=self.device)
            return (self.offsets[:, None] + j[None, :]) % self.size
        return self._cached(("positions",), make)

    def window_index(self) -> torch.Tensor:
        """(G, kmax) unit index of each compact column; columns past ``counts[g]`` are dropped units."""
        def make():
            if self._parent is not None:
                parent, sl = self._parent
                return parent.window_index()[sl]
            return self.perm[self.window_positions()]
        return self._cached(("index",), make)

    def column_weight(self, dtype=torch.float32) -> torch.Tensor:
        """(G, kmax) scale for kept compact columns, 0 for the padding past ``counts[g]``."""
        def make():
            if self._parent is not None:
                parent, sl = self._parent
                return parent.column_weight(dtype)[sl]
            j = torch.arange(self.kmax, device=self.device)
            keep = j[None, :] < self.counts[:, None]
            return keep.to(dtype) * self.scale[:, None].to(dtype)
        return self._cached(("weight", dtype), make)

    def dense(self, dtype=torch.float32) -> torch.Tensor:
        """(G, size) multiplicative mask: ``scale`` at kept units, 0 elsewhere."""
        out = torch.zeros(self.groups, self.size, dtype=dtype, device=self.device)
        return out.scatter_(1, self.window_index(), self.column_weight(dtype))

    def window_groups(self):
        """[(offset, count, groups)] for each distinct window with kept units: ``groups`` is None
        when every group has that window, an int for a window of one group, else a long tensor
        of group indices on the mask's device. Steps that share a window share one GEMM."""
        def make():
            by_window: dict = {}
            for g, w in enumerate(self.windows):
                by_window.setdefault(w, []).append(g)
            if len(by_window) == 1:
                (o, k), = by_window
                return [(o, k, None)] if k else []
            return [(o, k, gs[0] if len(gs) == 1 else host_index(gs, self.device))
                    for (o, k), gs in by_window.items() if k > 0]
        return self._cached(("groups",), make)


def sample_step_mask(groups: int, size: int, p: float, *, count: str = "fixed",
                     fixed: bool = False, distinct: int = 0, align: int = 1,
                     generator: torch.Generator | None = None) -> StepMask:
    """Draw a :class:`StepMask` for ``groups`` time steps of a ``size``-wide activation.

    ``count="fixed"`` keeps exactly ``kept_count(size, p)`` units per step and scales by
    ``size / k``; ``"bernoulli"`` draws each step's count from Binomial(size, 1 - p) and scales by
    ``1 / (1 - p)``, the expected value of Bernoulli dropout either way. ``fixed=True`` keeps the same
    units at every step (the "fixed" pattern). ``distinct=R > 0`` draws R masks and gives each step
    one of them at random (uniformly, independently per step): each step's mask is still a uniform
    random subset, but steps that share a mask can share one GEMM on backends that batch them.

    ``align=s > 1`` starts every window at a multiple of ``s`` and pads the compact width
    ``kmax`` to a multiple of ``s`` (at most ``size``; the padding columns are zeros, each step
    still keeps its count): every step's compact columns then start on an ``s``-element boundary
    of the permuted weight, which tensor-core GEMM libraries need (cuBLAS: 16 bytes, ``s = 8``
    in fp16). Each step's kept set is still a uniformly random subset and every unit is kept
    with the same probability, because ``perm`` is uniform; what changes is how the sets of two
    steps overlap (README "Aligned windows").
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {p}")
    if count not in COUNTS:
        raise ValueError(f"count must be one of {COUNTS}, got {count!r}")
    if distinct < 0:
        raise ValueError(f"distinct must be >= 0, got {distinct}")
    if align < 1:
        raise ValueError(f"align must be >= 1, got {align}")
    perm = torch.randperm(size, generator=generator)
    n_off = 1 if fixed else (min(distinct, groups) if distinct else groups)
    offsets = torch.randint(0, -(-size // align), (n_off,), generator=generator) * align
    if count == "fixed":
        k = kept_count(size, p)
        counts = torch.full((n_off,), k, dtype=torch.long)
        scale = torch.full((n_off,), size / max(k, 1), dtype=torch.float32)
    else:
        trials = torch.full((n_off,), float(size), dtype=torch.float64)
        probs = torch.full((n_off,), 1.0 - p, dtype=torch.float64)
        counts = torch.binomial(trials, probs, generator=generator).long()
        scale = torch.full((n_off,), 1.0 / (1.0 - p), dtype=torch.float32)
    if n_off == groups:
        pick = torch.arange(groups)
    elif n_off == 1:
        pick = torch.zeros(groups, dtype=torch.long)
    else:
        pick = torch.randint(0, n_off, (groups,), generator=generator)
    offsets, counts = offsets[pick], counts[pick]
    # padding past a window must be dropped units: kmax <= size keeps it off the window itself
    kmax = min(-(-max(int(counts.max()), 1) // align) * align, size)
    return StepMask(perm, offsets, counts, scale[pick], size, kmax,
                    tuple(zip(offsets.tolist(), counts.tolist())), align)


def sample_dense_mask(shape, p: float, pattern: str, *, dtype=torch.float32,
                      device=None) -> torch.Tensor:
    """Multiplicative mask of shape ``(T, B, H)`` for the non-compactable patterns.

    ``element`` draws every entry; ``sample`` draws one (B, H) mask shared by every step.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {p}")
    t, b, h = shape
    if pattern == "element":
        draw = (t, b, h)
    elif pattern == "sample":
        draw = (1, b, h)
    else:
        raise ValueError(f"dense masks are for 'element' and 'sample', not {pattern!r}")
    keep = torch.rand(draw, device=device) >= p
    return (keep.to(dtype) / (1.0 - p)).expand(t, b, h)
