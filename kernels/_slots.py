"""Gradient slots: gradients written where their producer's backward wants them, instead of copied there.

A producer whose backward needs its outputs' gradients side by side in one buffer (``torch.stack`` of the pieces'
gradients, or their concatenation) offers that layout in its forward (``offer(out)``: ``out`` the tensor whose
views it returns). A consumer's backward that allocates an input's gradient asks ``grad_slot(x)`` first: when x
is a view of an offered tensor, it gets the same view of one gradient buffer laid out like that tensor (allocated
on the first request) and writes its gradient there. The producer's backward (``take(slot, grads, views)``) then
finds every piece's gradient already in place and uses the buffer as is: one copy kernel fewer a producer and
step, with the same values (nothing is computed differently; the copy is just not needed).

Safe by construction:
* a piece's slot is handed out once (a second consumer of the same input gets None and a fresh tensor: autograd
  then sums the two, and the producer, seeing a gradient that is not its slot, stacks / concatenates as before);
* ``take`` uses the buffer only if every gradient IS its slot (same address, shape and strides), else it returns
  None and the caller copies from the gradients it was given, which hold the right values either way;
* the registry holds the offered tensors' storage owners (their root tensors) weakly and matches a consumer's input by storage and element range, so
  a freed tensor's address reused by the allocator cannot match; a group leaves the registry at ``take`` or when
  its tensor dies;
* inactive while torch.compile traces (the custom ops' outputs may not alias) and with ``GROUNDTHINK_GRAD_SLOTS=0``.
Consumers must write every element of a slot they accept (the lab kernels write their whole output).
"""
from __future__ import annotations

import os
import weakref

import torch

_GROUPS: list["_Slot"] = []


def _extent(t: torch.Tensor) -> tuple[int, int]:
    """First and last storage element a tensor covers (numel > 0)."""
    lo = t.storage_offset()
    return lo, lo + sum((s - 1) * st for s, st in zip(t.shape, t.stride()) if s > 0)


def _box(t: torch.Tensor, origin: int, R: int) -> tuple[int, int, int, int] | None:
    """The rows [r0, r1] and columns [c0, c1] that t covers when its storage, from ``origin``, is read as rows of
    R elements (a bounding box: a column piece of a matrix, a slice of a stack, a reshape of either), or None when
    t does not keep within one column range (its inner dimensions wrap a row)."""
    lo = t.storage_offset() - origin
    inner = sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if st < R and n > 1)
    outer = [(n - 1) * st for n, st in zip(t.shape, t.stride()) if st >= R and n > 1]
    c0 = lo % R
    if c0 + inner >= R or any(o % R for o in outer):
        return None
    return lo // R, lo // R + sum(outer) // R, c0, c0 + inner


def _active() -> bool:
    return os.environ.get("GROUNDTHINK_GRAD_SLOTS", "1") != "0" and not torch.compiler.is_compiling()


class _Slot:
    """One offered tensor: its layout, a weak reference to it, its gradient buffer once asked for, the ranges
    handed out."""

    def __init__(self, out: torch.Tensor):
        self.ref = weakref.ref(out if out._base is None else out._base)   # the root: alive while any view is
        self.storage = out.untyped_storage().data_ptr()
        self.size, self.stride, self.offset = out.size(), out.stride(), out.storage_offset()
        self.lo, self.hi = _extent(out)
        self.R = out.stride(-2) if out.dim() >= 2 and out.stride(-1) == 1 and out.stride(-2) > 0 else out.numel()
        self.dtype, self.device = out.dtype, out.device
        self.buf: torch.Tensor | None = None
        self.given: list[tuple[int, int, int, int]] = []       # the boxes (``_box``) handed out

    def view(self, x: torch.Tensor, contiguous: bool) -> torch.Tensor | None:
        if (self.ref() is None or x.numel() == 0 or x.dtype != self.dtype or x.device != self.device
                or x.untyped_storage().data_ptr() != self.storage):
            return None
        if contiguous and not x.is_contiguous():    # a slot has x's sizes and strides: the same answer
            return None
        lo, hi = _extent(x)
        box = _box(x, self.offset, self.R)
        if lo < self.lo or hi > self.hi or box is None or any(
                box[0] <= b[1] and b[0] <= box[1] and box[2] <= b[3] and b[2] <= box[3] for b in self.given):
            return None                    # outside the tensor, or overlapping a slot handed out before
        if self.buf is None:
            self.buf = torch.empty_strided(self.size, self.stride, dtype=self.dtype, device=self.device)
        self.given.append(box)
        return self.buf.as_strided(x.size(), x.stride(), self.buf.storage_offset() + x.storage_offset() - self.offset)


def offer(out: torch.Tensor) -> _Slot | None:
    """Register ``out`` (a producer's output, before it returns views of it): consumers' gradients of its views may
    be written into one buffer laid out like it. Returns the handle for ``take`` (None when inactive)."""
    if not _active():
        return None
    _GROUPS[:] = [g for g in _GROUPS if g.ref() is not None]
    slot = _Slot(out)
    _GROUPS.append(slot)
    return slot


def grad_slot(x: torch.Tensor, contiguous: bool = True) -> torch.Tensor | None:
    """For a consumer's backward: where to write the gradient of its input ``x`` (a view shaped and strided like
    x), or None (allocate as usual). ``contiguous``: only when x is contiguous (kernels
    that store densely); a consumer with another layout rule checks x's strides before asking."""
    if not _GROUPS or not _active():
        return None
    for g in _GROUPS:
        d = g.view(x, contiguous)
        if d is not None:
            return d
    return None


def release(slot: _Slot | None) -> None:
    """For a producer's backward that does not use the buffer: the slot leaves the registry."""
    if slot is not None and slot in _GROUPS:
        _GROUPS.remove(slot)


def take(slot: _Slot | None, grads, views) -> torch.Tensor | None:
    """For the producer's backward: its gradient buffer when every gradient in ``grads`` is exactly the matching
    view of it (``views(buf)``: the producer's output views, in order, applied to the buffer), else None. The
    slot leaves the registry either way."""
    if slot is None:
        return None
    release(slot)
    buf = slot.buf
    if buf is None or any(g is None for g in grads):
        return None
    for g, v in zip(grads, views(buf)):
        if g.data_ptr() != v.data_ptr() or g.shape != v.shape or g.stride() != v.stride():
            return None
    return buf
