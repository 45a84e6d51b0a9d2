"""The full-catalogue softmax cross-entropy fused with its output layer, a chunk of rows at a time.

``loss = mean over rows with a target of logsumexp_j(h·w_j + bias_j) − (h·w_t + bias_t)``, the columns
limited to ``allowed`` ones. Autograd's form of that (matmul, mask, log-softmax, NLL) keeps several
(B, I) tensors alive and walks them again in the backward pass (the mask's and the log-softmax's
gradients, the NLL's one-hot); on a CPU those passes over memory, not the arithmetic, are most of a
training step once the catalogue has tens of thousands of items. Here each chunk of rows is one (c, I)
buffer: the logits are made, turned into the softmax in place, the one-hot is subtracted, and both
gradient matmuls run while it is still in cache. The gradients are computed in the forward pass (the
loss is only ever differentiated) and scaled by the incoming gradient in the backward pass.

The same loss and gradients as ``F.cross_entropy(logits.masked_fill(~allowed, -inf), target,
ignore_index=-100)`` to float rounding (tested), in float32 even under autocast. A ``bias`` that needs
a gradient (the head trained in the logits) is not supported: the caller uses autograd's form then.
"""

from __future__ import annotations

import torch

#: target value of a row without a target (a padded position), as ``F.cross_entropy``'s ignore_index
IGNORE = -100


def chunk_rows(num_items: int, device: torch.device) -> int:
    """Rows per chunk: about 32 M logits (128 MB) on a CPU, 256 M on an accelerator (measured at 18k items on
    2 cores: 1.6× autograd's step at 4 M to 64 M logits a chunk, slower below)."""
    budget = 1 << 28 if device.type != "cpu" else 1 << 25
    return max(16, budget // max(num_items, 1))


class _FusedSoftmaxCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, target: torch.Tensor, allowed: torch.Tensor | None,
                bias: torch.Tensor | None) -> torch.Tensor:
        with torch.autocast(h.device.type, enabled=False):
            h, w = h.float(), w.float()
            bias = None if bias is None else bias.float()
            keep = target != IGNORE
            count = keep.sum().clamp(min=1).to(h.dtype)
            safe = torch.where(keep, target, torch.zeros_like(target))
            grad_h = torch.empty_like(h)
            grad_w = torch.zeros_like(w)
            total = h.new_zeros(())
            step = chunk_rows(len(w), h.device)
            for s in range(0, len(h), step):
                hc, tc, kc = h[s:s + step], safe[s:s + step], keep[s:s + step]
                rows = torch.arange(len(hc), device=h.device)
                p = hc @ w.T  # (c, I) logits, then in place the softmax and its gradient
                if bias is not None:
                    p += bias[s:s + step]
                if allowed is not None:
                    p.masked_fill_(~allowed[None, :], -torch.inf)
                picked = p[rows, tc]
                top = p.amax(1, keepdim=True)
                p.sub_(top).exp_()
                z = p.sum(1, keepdim=True)
                lse = top.squeeze(1) + z.squeeze(1).log()
                # an ignored row stands in target 0, which may be masked (-inf): keep its inf out of the sum
                total += torch.where(kc, lse - picked, torch.zeros_like(lse)).sum()
                p.div_(z)
                p[rows, tc] -= 1.0
                p.mul_(kc[:, None].to(p.dtype))  # a row without a target has no gradient
                grad_h[s:s + step] = p @ w
                grad_w.addmm_(p.T, hc)
        ctx.save_for_backward(grad_h, grad_w, count)
        return total / count

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_h, grad_w, count = ctx.saved_tensors
        scale = grad / count
        return grad_h * scale, grad_w * scale, None, None, None


def softmax_cross_entropy(h: torch.Tensor, w: torch.Tensor, target: torch.Tensor,
                          allowed: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Mean softmax cross-entropy of rows ``h`` (B, D) against their ``target`` (B,) (``IGNORE``: no target)
    among the columns ``w`` (I, D) that ``allowed`` (I,) bool keeps (None: all), ``bias`` (B, I) added to the
    logits (a constant: no gradient flows to it)."""
    if bias is not None and bias.requires_grad:
        raise ValueError("the fused softmax takes a constant bias; differentiate the logits with autograd instead")
    return _FusedSoftmaxCrossEntropy.apply(h, w, target, allowed, bias)
