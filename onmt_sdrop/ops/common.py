"""What every backend shares: the compact layout, the windowed weight and its gradient fold.

Compact tensors are ``(G, B, kmax)``: column ``j`` of group ``g`` is unit
``perm[(offsets[g] + j) % H]``, zero past ``counts[g]`` (see :class:`~onmt_sdrop.masks.StepMask`).
Weights are permuted once per batch (:func:`permute_weight`), after which each group's kept
rows/columns are one contiguous slice of ``WindowedWeight.ext``. Gathers, scatters and the
permutation are index copies that torch does well on every device, so both backends use these.
"""
from __future__ import annotations

import weakref

import torch
from torch.autograd import Function
from torch.utils.weak import WeakIdKeyDictionary

from ..masks import StepMask


# ---------------------------------------------------------------- gather / scatter (cheap copies)

def gather(x: torch.Tensor, mask: StepMask, columns_major: bool = False) -> torch.Tensor:
    """Dense ``(G, B, H)`` -> compact ``(G, B, kmax)``, scaled: the dropped value, kept columns only.
    ``columns_major``: each group's ``(B, kmax)`` block stored column by column."""
    g, b, _ = x.shape
    idx = mask.window_index()[:, None, :].expand(g, b, mask.kmax)
    weight = mask.column_weight(x.dtype)[:, None, :]
    if not columns_major:
        return torch.gather(x, 2, idx) * weight
    # the same gather along the units of x^T, whose result is (G, kmax, B) in memory
    return (torch.gather(x.transpose(1, 2), 1, idx.transpose(1, 2))
            * weight.transpose(1, 2)).transpose(1, 2)


def scatter(xc: torch.Tensor, mask: StepMask) -> torch.Tensor:
    """Compact ``(G, B, kmax)`` -> dense ``(G, B, H)`` with zeros at the dropped units."""
    g, b, _ = xc.shape
    idx = mask.window_index()[:, None, :].expand(g, b, mask.kmax)
    # padding columns are zero and point at dropped units, so a plain scatter is exact
    return xc.new_zeros(g, b, mask.size).scatter(2, idx, xc)


def new_output(like: torch.Tensor, shape, mask: StepMask, width_is_count: bool,
               order=(0, 1, 2)) -> torch.Tensor:
    """The ``(G, B, N)`` output of a grouped GEMM: empty when every group writes its part whole
    (known from the host-side windows), zeros when some part is left untouched (groups with no
    kept unit, or compact columns past a group's count). ``order``: the axes in storage order,
    outermost first (``(0, 2, 1)``: each group's block column-major; ``(1, 0, 2)``: batch-major
    rows)."""
    covered = all(k for _, k in mask.windows)
    whole = covered and (not width_is_count or all(k == mask.kmax for _, k in mask.windows))
    strides = [0, 0, 0]
    step = 1
    for a in reversed(order):
        strides[a], step = step, step * shape[a]
    out = output_buffer(like, shape, strides)
    return out if whole else out.zero_()


# On a CPU a buffer over glibc's mmap threshold (32 MB: the generator's permuted weight, its
# gradient, the logits) is mapped afresh at every allocation and page-faulted in on first touch,
# about 6 us per 4 KB page on this project's KVM machine: some 50 ms per buffer and batch. So
# large CPU buffers are kept (per weight, or one for the logits) and handed out again once nothing
# uses their memory any more: no tensor, view or detached alias of what was handed out (a graph
# kept for another backward keeps its buffers from reuse).
REUSE_BYTES = 16 << 20
_kept = WeakIdKeyDictionary()   # owner -> {role: (buffer, its storage's use count when idle)}


_use_count = getattr(torch._C, "_storage_Use_Count", None)   # private; without it, no reuse


def keeps_buffer(device: torch.device, nbytes: int) -> bool:
    """Whether a buffer of ``nbytes`` on ``device`` is one to keep (large, on a CPU)."""
    return device.type == "cpu" and nbytes >= REUSE_BYTES


def _storage_users(t: torch.Tensor) -> int:
    return _use_count(t.untyped_storage()._cdata)


def _kept_buffer(owner, role, fits, make) -> torch.Tensor:
    """The buffer kept for ``owner`` and ``role`` if ``fits(buffer)`` and nothing else uses its
    memory, else a new one from ``make()`` (kept from now on)."""
    if _use_count is None:
        return make()
    kept = _kept.setdefault(owner, {})
    buf, idle = kept.get(role, (None, None))
    if buf is None or not fits(buf) or _storage_users(buf) != idle:
        buf = make()
        kept[role] = (buf, _storage_users(buf))
    return buf


def reusable_buffer(w: torch.Tensor, role: str, shape, dtype, view=None) -> torch.Tensor:
    """``view(buffer)`` (default: the buffer) of an uninitialised contiguous buffer on ``w``'s
    device: large CPU buffers are kept per ``w`` and ``role`` and handed out again once nothing
    handed out from them is alive."""
    shape = torch.Size(shape)
    view = view or (lambda t: t)
    if not keeps_buffer(w.device, shape.numel() * dtype.itemsize):
        return view(torch.empty(shape, dtype=dtype, device=w.device))
    buf = _kept_buffer(w, role, lambda b: b.shape == shape and b.dtype == dtype,
                       lambda: torch.empty(shape, dtype=dtype))
    out = view(buf)
    return buf.view(shape) if out is buf else out   # never the kept tensor itself


class _Key:
    """A weakly referable key of :data:`_kept` for buffers that belong to no weight."""


_OUTPUTS = _Key()


def output_buffer(like: torch.Tensor, shape, strides) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` and ``strides`` on ``like``'s device and dtype, and
    not a view: autograd lets the callers of a Function write its outputs in place only if they
    are not views. A large CPU one (the logits, 70-100 MB) lives in a kept buffer: fresh, its
    pages were faulted in again at every batch, which the compacted generator, writing it a tile
    at a time, paid up to 160 ms per training step for on this project's CPU machine. Its length
    changes with every batch, so the buffer grows (with a quarter to spare) to the longest seen."""
    shape = torch.Size(shape)
    numel = shape.numel()
    if not keeps_buffer(like.device, numel * like.dtype.itemsize):
        return like.new_empty_strided(shape, strides)
    # one buffer per width and dtype: outputs of different sites do not take each other's
    buf = _kept_buffer(_OUTPUTS, (shape[-1], like.dtype), lambda b: b.numel() >= numel,
                       lambda: torch.empty(numel + numel // 4, dtype=like.dtype))
    return like.new_empty(0).set_(buf.untyped_storage(), 0, shape, strides)


def accumulate_mm(dw: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``dw += a @ b``; under autocast ``a, b`` are half and the gradient buffer stays float32
    (the product accumulated in float by the GEMM, rounded once)."""
    if dw.dtype == a.dtype:
        dw.addmm_(a, b)
    else:
        dw.add_(a @ b)


TRANSPOSE_BLOCK = 512


def transpose_copy(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``dst.copy_(src.t())`` (both 2-D, contiguous) in blocks of :data:`TRANSPOSE_BLOCK` along
    the longer side: each block's reads and writes stay in the CPU's caches, where one whole
    transposing copy of the generator's 10,000 x 500 weight strides through memory (on this
    project's 2-core machine 19 ms against 14 for the blocks; its gradient's, with the inverse
    permutation before it, 17 against 9)."""
    rows, cols = dst.shape
    b = TRANSPOSE_BLOCK
    if cols >= rows:
        for j in range(0, cols, b):
            dst[:, j:j + b].copy_(src[j:j + b].t())
    else:
        for j in range(0, rows, b):
            dst[j:j + b].copy_(src[:, j:j + b].t())
    return dst


class WindowedWeight:
    """A weight with one axis in extended permuted order (``H + kmax`` long), for one batch.

    Every group reads its kept slice of ``ext``. The ops do not compute their weight gradients in
    their own backward: they hand the operands to :meth:`defer`, and :class:`_Fold` computes the
    sum of all of them at once, after the last op's backward (autograd runs a node's backward only
    when every consumer of its output has run), then hands it to the real parameter. So the
    per-step callers of the input-fed decoder leave one grouped weight-gradient GEMM over all
    steps, as haste does, instead of one per step.
    """

    def __init__(self, w: torch.Tensor, mask: StepMask, dim: int, window_major: bool = False):
        self.index = mask.ext_perm().to(w.device)
        self.dim = dim
        # window_major: the window axis outermost in memory (``ext`` is then a transposed view),
        # so each group's slice, and its slice of the weight gradient, is one contiguous block,
        # which a CPU GEMM reads and writes much faster than a strided column range
        self.window_major = window_major and dim != 0
        self.weight = w
        if self.window_major:
            w_t = reusable_buffer(w, "t", w.shape[::-1], w.dtype,
                                  lambda buf: transpose_copy(buf, w.detach()))
            self.ext = reusable_buffer(w, "ext", (len(self.index), w_t.shape[1]), w.dtype,
                                       lambda buf: torch.index_select(w_t, 0, self.index,
                                                                      out=buf).t())
            self.inverse = mask.inverse_perm().to(w.device)
        else:
            self.ext = w.detach().index_select(dim, self.index)
        self.pending = []
        self.token = _Fold.apply(w, self)
        self._cast = None

    def ext_as(self, dtype) -> torch.Tensor:
        """``ext`` in ``dtype`` (autocast's half), converted once per batch, not once per step."""
        if dtype == self.ext.dtype:
            return self.ext
        if self._cast is None or self._cast.dtype != dtype:
            self._cast = self.ext.to(dtype)
        return self._cast

    def defer(self, grouped_dw, a: torch.Tensor, b: torch.Tensor, mask: StepMask) -> None:
        """Record ``grouped_dw(a, b, mask, grad)``, a backend's weight-gradient GEMM, for the fold."""
        self.pending.append((grouped_dw, a, b, mask))

    def weight_grad(self, shape, dtype):
        """The real parameter's gradient (``shape``, ``dtype``) from :meth:`folded_grad`, or None."""
        grad = self.folded_grad()
        if grad is None:
            return None
        if self.window_major:
            # rows of ext: the units perm ++ perm[:kmax]; add the repeated rows onto their first
            # copies (the buffer is ours), then read the units back in order: no zeroed buffer and
            # no scattered adds; autograd's one transposed copy puts it into .grad
            by_row = grad.t()
            units = len(self.inverse)
            by_row[: len(self.index) - units] += by_row[units:]
            dw_t = reusable_buffer(self.weight, "grad_t", shape[::-1], by_row.dtype,
                                   lambda buf: torch.index_select(by_row[:units], 0, self.inverse,
                                                                  out=buf))
            # a fresh contiguous gradient, which autograd hands to .grad as it is, instead of a
            # transposed view it would copy (one whole transposing copy)
            return transpose_copy(torch.empty(shape, dtype=by_row.dtype, device=by_row.device),
                                  dw_t).to(dtype)
        dw = torch.zeros(shape, dtype=dtype, device=grad.device)
        return dw.index_add_(self.dim, self.index, grad.to(dtype))

    def folded_grad(self):
        """The gradient of ``ext`` (float32 or wider) from every deferred GEMM, or None."""
        if not self.pending:
            return None
        by_fn: dict = {}
        for fn, a, b, m in self.pending:
            by_fn.setdefault(fn, []).append((a, b, m))
        self.pending = []
        a0 = next(iter(by_fn.values()))[0][0]
        dtype = torch.promote_types(a0.dtype, torch.float32)
        if self.window_major:   # the layout of ext
            grad = reusable_buffer(self.weight, "grad", self.ext.shape[::-1], dtype,
                                   lambda buf: buf.zero_().t())
        else:
            grad = reusable_buffer(self.weight, "grad", self.ext.shape, dtype, torch.Tensor.zero_)
        for fn, recs in by_fn.items():
            if len(recs) == 1:
                a, b, m = recs[0]
            else:   # per-step calls: all steps in one grouped GEMM
                a = torch.cat([r[0] for r in recs])
                b = torch.cat([r[1] for r in recs])
                m = StepMask.cat([r[2] for r in recs])
            fn(a, b, m, grad)
        return grad


class _Fold(Function):
    """The token of a weight whose gradient its ``holder`` gathers (:class:`WindowedWeight`,
    :class:`StepSummedWeight`): every op that reads the weight takes the token as an input, so
    this backward runs after all of theirs and asks the holder for the whole gradient at once."""

    @staticmethod
    def forward(ctx, w, holder):
        # weakly: the ops reading the weight hold it while the graph lives, and it must die with
        # the graph (reusable_buffer waits for that), not wait in a cycle with its token
        ctx.holder = weakref.ref(holder)
        ctx.shape, ctx.dtype = w.shape, w.dtype
        return w.new_zeros(())

    @staticmethod
    def backward(ctx, _):
        return ctx.holder().weight_grad(ctx.shape, ctx.dtype), None


def permute_weight(w: torch.Tensor, mask: StepMask, dim: int) -> WindowedWeight:
    """``w`` prepared for the windows of ``mask`` along axis ``dim`` (once per batch)."""
    return WindowedWeight(w, mask, dim)


def permute_weight_window_major(w: torch.Tensor, mask: StepMask, dim: int) -> WindowedWeight:
    """:func:`permute_weight` with the window axis outermost in memory (for CPU GEMMs)."""
    return WindowedWeight(w, mask, dim, window_major=True)


class StepSummedWeight:
    """A dense weight that per-step ops read (the input-fed decoder's ``W_hh``), with its gradient
    ``sum_t dG_t^T h_{t-1}`` computed by ONE GEMM over all steps after the last step's backward,
    as haste does, instead of one short GEMM (inner dimension B) and one accumulation per step.

    ``w`` is what the step reads (detached, so the step computes no weight gradient); each step
    passes its gate pre-activation through :meth:`tap`, whose gradient is ``dG_t``."""

    def __init__(self, w: torch.Tensor):
        self.w = w.detach()
        self.pending = []
        self.token = _Fold.apply(w, self)

    def tap(self, gates_in: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        """``gates_in`` unchanged; in backward its gradient and ``h_prev`` go to the fold."""
        return _Tap.apply(gates_in, self.token, self, h_prev)

    def weight_grad(self, shape, dtype):
        """``sum_t dG_t^T h_{t-1}`` over every tapped step, in ``dtype``, or None."""
        pending, self.pending = self.pending, []
        if not pending:
            return None
        d_gates = torch.cat([d for d, _ in pending])
        h_prev = torch.cat([h for _, h in pending]).to(d_gates.dtype)
        return (d_gates.t() @ h_prev).to(dtype)


class _Tap(Function):
    @staticmethod
    def forward(ctx, gates_in, token, sw, h_prev):
        ctx.sw = sw
        ctx.save_for_backward(h_prev)
        return gates_in.view_as(gates_in)

    @staticmethod
    def backward(ctx, d_gates):
        h_prev, = ctx.saved_tensors
        ctx.sw.pending.append((d_gates, h_prev))
        return d_gates, None, None, None




# ---------------------------------------------------------------- the autograd op
#
# A backend supplies the six grouped GEMMs of kernels/grouped_gemm.cu's table (consumer_fwd,
# consumer_dx, consumer_dw, producer_fwd, producer_dx, producer_dw); one Function runs either side
# (consumer: compact input, full output; producer: full input, compact output) for every backend.

class WindowedGEMM(Function):
    """``y = fwd(x, W)`` with ``dx`` in backward and the weight gradient ``dw`` deferred to the
    weight's fold."""

    @staticmethod
    def forward(ctx, x, token, ww, mask, fwd, dx, dw):
        y = fwd(x, ww.ext_as(x.dtype), mask)
        ctx.ww, ctx.mask, ctx.dx, ctx.dw = ww, mask, dx, dw
        ctx.save_for_backward(x)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, = ctx.saved_tensors
        dy = dy.to(x.dtype)
        dx = ctx.dx(dy, ctx.ww.ext_as(x.dtype), ctx.mask) if ctx.needs_input_grad[0] else None
        if ctx.needs_input_grad[1]:
            ctx.ww.defer(ctx.dw, dy, x, ctx.mask)
        return dx, None, None, None, None, None, None


def consumer(gemms, xc, ww, mask):
    """Consumer GEMM of backend ``gemms``: ``Y_g = X_g[:, K_g] @ W[:, K_g]^T`` on compact input."""
    return WindowedGEMM.apply(xc, ww.token, ww, mask, gemms.consumer_fwd, gemms.consumer_dx,
                              gemms.consumer_dw)


def producer(gemms, x, ww, mask):
    """Producer GEMM of backend ``gemms``: ``Y_g[:, K_g] = X_g @ W[K_g, :]^T``, kept columns only."""
    return WindowedGEMM.apply(x, ww.token, ww, mask, gemms.producer_fwd, gemms.producer_dx,
                              gemms.producer_dw)
