"""Data: the dataset contract and everything that reads, checks, stores and splits it before training.

Owns the contract (:mod:`sora.data.contract`: the ``Dataset``, loading, item texts), fetching public data
sets (:mod:`sora.data.fetch`), validation (:mod:`sora.data.validation`) and drift
(:mod:`sora.data.drift`), splits (:mod:`sora.data.split`) and the next-item protocol's histories
(:mod:`sora.data.protocol`), storage by path or URI (:mod:`sora.data.storage`) and immutable data
snapshots (:mod:`sora.data.snapshot`).

May import: :mod:`sora.config`. Nothing here knows about models, training, MLflow or serving
(``tests/test_layers.py`` holds the directions and the one exception).
"""
