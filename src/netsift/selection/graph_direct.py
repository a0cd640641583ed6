"""The group's first consumers on the graph path: the product over the shared mask once, each candidate's own
channels on top.

A consumer whose input is candidate-independent is linear in its input: with the (K, C) candidate masks
written as a shared part ``u`` (their per-channel mode: c·1_S for GFS) plus a sparse per-candidate rest ``d_k``
(c·e_j), ``W(x ⊙ m_k) + b = [W(x ⊙ u) + b] + W(x ⊙ d_k)``. :func:`prepare_direct` runs the bracket once per
call; :func:`run_direct` adds each candidate's own channels' contribution (a grouped convolution over the
candidates). Grouped convolutions, non-zero padding modes and masks without a sparse rest take the plain masked
computation (:func:`mask_stacked` for consumers whose input already depends on the candidate).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masking import Masker
from .scoring_stats import ScoringStats, layer_macs, layer_macs_grouped


@dataclass
class Direct:
    """A first consumer's per-call values."""

    x: Tensor  # the consumer's input with the fixed masks of other groups applied (B, C, …)
    trial: Tensor  # (K, C) candidate masks in the consumer's input space
    base: Tensor | None  # the product over the shared mask (B, O, …), or None: plain masked products
    idx: Tensor | None  # (K, R) input channels where a candidate's mask differs from the shared one
    vals: Tensor | None  # (K, R) by how much
    base_macs: int = 0


def channel_view(mod: nn.Module, v: Tensor, x_dim: int, stacked: bool = False) -> Tensor:
    """``v`` ((C,), or (K, C) if ``stacked``) shaped to scale the channel axis of an input with ``x_dim``
    dimensions ((B, C, …) for a convolution, (B, …, C) for a linear layer; (K, B, …) if ``stacked``)."""
    lead = (v.shape[0], 1) if stacked else (1,)
    if isinstance(mod, nn.Linear):
        return v.view(*lead, *(1,) * (x_dim - len(lead) - 1), -1)
    return v.view(*lead, -1, *(1,) * (x_dim - len(lead) - 1))


def mask_stacked(masker: Masker, gi: int, mod: nn.Module, x: Tensor, chunk: Tensor, k: int) -> Tensor:
    """Scale a consumer's stacked input (K·B, C, …) by the fixed masks and the k-th candidate's mask."""
    scale = masker.input_masks(mod, gi, chunk)  # (K, C)
    fixed = masker.fixed_scale(mod, gi)
    if fixed is not None:
        scale = scale * fixed
    xs = x.view(k, x.shape[0] // k, *x.shape[1:])
    return (xs * channel_view(mod, scale.to(x.device, x.dtype), xs.dim(), stacked=True)).view_as(x)


def prepare_direct(masker: Masker, gi: int, mod: nn.Module, x: Tensor, masks: Tensor, st: ScoringStats) -> Direct:
    """Per call: the consumer's input with fixed masks applied, and its product over the shared mask."""
    fixed = masker.fixed_scale(mod, gi)
    xe = x if fixed is None else x * channel_view(mod, fixed.to(x.device, x.dtype), x.dim())
    trial = masker.input_masks(mod, gi, masks).to(x.device, x.dtype)  # (K, C)
    shared = torch.mode(trial, 0).values
    rest = trial - shared
    r = int((rest != 0).sum(1).max()) if rest.numel() else 0
    linear_ok = (isinstance(mod, nn.Linear) and xe.dim() == 2) or (
        isinstance(mod, nn.Conv2d) and mod.groups == 1 and mod.padding_mode == "zeros")
    if not linear_ok or 2 * r > trial.shape[1]:
        return Direct(xe, trial, None, None, None)
    base = mod.forward(xe * channel_view(mod, shared, xe.dim()))
    macs = layer_macs(mod, base)
    st.shared_macs += macs
    _, idx = rest.abs().topk(max(r, 1), dim=1)
    vals = rest.gather(1, idx)
    return Direct(xe, trial, base, idx, vals, macs)


def run_direct(d: Direct, mod: nn.Module, start: int, k: int, st: ScoringStats) -> Tensor:
    """The consumer's stacked output (K·B, O, …) for candidates ``start`` … ``start + k``."""
    xe = d.x
    b = xe.shape[0]
    if d.base is None:  # plain masked product of each candidate
        m = d.trial[start:start + k]
        xs = xe.unsqueeze(0) * channel_view(mod, m, xe.dim() + 1, stacked=True)
        out = mod.forward(xs.view(k * b, *xe.shape[1:]))
        st.candidate_macs += layer_macs(mod, out)
        st.plain_suffix_macs += layer_macs(mod, out)
        return out
    idx, vals = d.idx[start:start + k], d.vals[start:start + k]  # (K, R)
    r = idx.shape[1]
    st.plain_suffix_macs += k * d.base_macs
    if isinstance(mod, nn.Linear):
        xg = xe[:, idx]  # (B, K, R)
        wg = mod.weight[:, idx] * vals  # (O, K, R)
        delta = torch.einsum("bkr,okr->kbo", xg, wg)
        st.candidate_macs += delta.numel() * r
        return (delta + d.base).reshape(k * b, -1)
    flat = idx.reshape(-1)
    w = mod.weight[:, flat] * vals.reshape(1, -1, 1, 1)  # (O, K·R, kh, kw)
    o = w.shape[0]
    w = w.view(o, k, r, *w.shape[2:]).transpose(0, 1).reshape(k * o, r, *w.shape[2:])
    delta = F.conv2d(xe[:, flat], w, None, mod.stride, mod.padding, mod.dilation, k)  # (B, K·O, H, W)
    st.candidate_macs += layer_macs_grouped(delta, r, mod)
    base = d.base
    out = torch.empty((k, b) + tuple(base.shape[1:]), dtype=base.dtype, device=base.device)
    torch.add(delta.view(b, k, *base.shape[1:]).transpose(0, 1), base, out=out)
    return out.view(k * b, *base.shape[1:])
