"""The fused softmax cross-entropy (sora.training.softmax) is autograd's masked cross-entropy, value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from sora.training import softmax
from sora.training.softmax import IGNORE, softmax_cross_entropy


@pytest.mark.parametrize("rows_per_chunk", [7, 10_000])  # several chunks, and one
def test_same_loss_and_gradients_as_autograd(monkeypatch, rows_per_chunk):
    monkeypatch.setattr(softmax, "chunk_rows", lambda num_items, device: rows_per_chunk)
    gen = torch.Generator().manual_seed(0)
    b, d, n = 50, 8, 120
    h = torch.randn(b, d, generator=gen, dtype=torch.float64)
    w = torch.randn(n, d, generator=gen, dtype=torch.float64)
    target = torch.randint(0, n, (b,), generator=gen)
    target[::6] = IGNORE  # padded positions: no loss, no gradient
    allowed = torch.rand(n, generator=gen) > 0.3
    allowed[target.clamp(min=0)] = True
    bias = torch.randn(b, n, generator=gen, dtype=torch.float64)

    def grads(loss_fn, dtype):
        hh, ww = (t.detach().clone().to(dtype).requires_grad_() for t in (h, w))
        loss = loss_fn(hh, ww)
        (2.5 * loss).backward()
        return loss.detach(), hh.grad, ww.grad

    ref = grads(lambda hh, ww: F.cross_entropy((hh @ ww.T + bias).masked_fill(~allowed[None], -torch.inf), target,
                                               ignore_index=IGNORE), torch.float64)
    got = grads(lambda hh, ww: softmax_cross_entropy(hh, ww, target, allowed, bias.float()), torch.float32)
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-6)
    # no mask, no bias: plain cross-entropy
    plain = softmax_cross_entropy(h.float(), w.float(), target)
    torch.testing.assert_close(plain.double(), F.cross_entropy(h @ w.T, target, ignore_index=IGNORE),
                               rtol=1e-5, atol=1e-6)


def test_an_ignored_row_next_to_a_masked_first_item_keeps_the_loss_finite():
    """A padded position stands in target 0; with item 0 masked (no training interaction) the loss is still
    autograd's, not inf · 0 = NaN."""
    gen = torch.Generator().manual_seed(1)
    h, w = torch.randn(6, 4, generator=gen), torch.randn(9, 4, generator=gen)
    target = torch.tensor([3, IGNORE, 5, IGNORE, 8, 1])
    allowed = torch.ones(9, dtype=torch.bool)
    allowed[0] = False
    want = F.cross_entropy((h @ w.T).masked_fill(~allowed[None], -torch.inf), target, ignore_index=IGNORE)
    got = softmax_cross_entropy(h, w, target, allowed)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, want)


def test_a_bias_that_needs_a_gradient_is_refused():
    h, w = torch.randn(3, 2), torch.randn(4, 2)
    with pytest.raises(ValueError, match="constant bias"):
        softmax_cross_entropy(h, w, torch.tensor([0, 1, 2]), bias=torch.zeros(3, 4, requires_grad=True))
