"""Training: prepare once, run the epoch loop, choose on valid.

Owns preparation (:mod:`sora.training.prep`), the loop (:mod:`sora.training.loop`), selection on
valid (:mod:`sora.training.selection`), device placement (:mod:`sora.training.device`), checkpoints
(:mod:`sora.training.checkpoint`), the item–item head trained into the logits
(:mod:`sora.training.heads`) and the facade ``train_model`` (:mod:`sora.training.train`).

May import: :mod:`sora.config`, :mod:`sora.data`, :mod:`sora.model`, and
:mod:`sora.evaluation.metrics` (the metric definitions early stopping and selection rank with).
"""
