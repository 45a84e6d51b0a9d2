"""Serving: the request path over a trained ``Recommender`` (the BentoML service in ``sora_serving`` is
thin over it).

Owns the serving core (:mod:`sora.serving.core`: the model holder, request checks and the handlers the
service calls), new items without retraining (:mod:`sora.serving.items`) and offline batch scoring
(:mod:`sora.serving.batch`).

May import: :mod:`sora.config`, :mod:`sora.data`, :mod:`sora.model`, and :mod:`sora.registry` (to
resolve ``models:/`` URIs). Never training or evaluation code.
"""
