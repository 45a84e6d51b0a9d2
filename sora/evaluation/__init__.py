"""Evaluation: ranking metrics, a model beside its baselines on test, training curves, the promotion rule.

Owns the metrics (:mod:`sora.evaluation.metrics`), the evaluation of a trained model beside MostPop,
EASE and the other baselines (:mod:`sora.evaluation.evaluate`), training-curve plots
(:mod:`sora.evaluation.plots`) and the pure challenger-vs-champion rule
(:mod:`sora.evaluation.promotion`).

May import: :mod:`sora.config`, :mod:`sora.data`, :mod:`sora.model`, :mod:`sora.training`.
"""
