"""Model: the parts of a Sora model and the fitted artifact that bundles and scores them.

Owns item-text embeddings (:mod:`sora.model.text`), the interaction graph (:mod:`sora.model.graph`)
and its propagation on any torch device (:mod:`sora.model.gnn`), item–item similarity and EASE
(:mod:`sora.model.itemsim`), the transition head (:mod:`sora.model.transitions`), the network
(:mod:`sora.model.network`), SASRec (:mod:`sora.model.sasrec`), ∞-AE (:mod:`sora.model.infinite_ae`)
and the λ walk it shares with selection (:mod:`sora.model.walk`), and the ``Recommender`` artifact
(:mod:`sora.model.recommender`: save / load / score) with what it scores through: the approximate
top-k index (:mod:`sora.model.ann`), the NumPy fast path (:mod:`sora.model.fastpath`) and explanations
(:mod:`sora.model.explain`). The artifact lives here, below training, the registry and serving, because
all three import it.

May import: :mod:`sora.config`, :mod:`sora.data`.
"""
