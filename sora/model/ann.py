"""Approximate top-k for large catalogues: an inverted-file index (faiss ``IndexIVFFlat``, inner product).

Scores are dot products (``user · item``), so retrieval is maximum-inner-product search. Below
``serve.ann_min_items`` items the recommender ranks exactly (one matrix-vector product); at or above
it, :meth:`sora.model.recommender.Recommender.save` builds this index over the item vectors and writes it
as ``ann.faiss`` beside the weights. Serving then asks the index for candidates (``k`` + the items to
exclude + ``serve.ann_candidates``), adds the items the item–item head reaches from the user's
history, and scores that candidate set exactly: the index only decides which items are looked at.

The index: ``nlist`` k-means cells (``serve.ann_nlist``; 0 = ``4·√I``) trained on at most
``64 · nlist`` sampled vectors, ``nprobe`` cells visited per query (``serve.ann_nprobe``). Vectors are
stored uncompressed (flat), so an index costs about the item vectors' own memory.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

INDEX_FILE = "ann.faiss"


def auto_nlist(num_items: int) -> int:
    return int(max(1, min(num_items // 39, round(4 * np.sqrt(num_items)))))  # faiss wants ≥ 39 points per cell


@dataclass
class AnnIndex:
    index: object  # faiss.IndexIVFFlat
    nprobe: int

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, D) queries → (B, k) inner products and item indices, best first (-1 where fewer were found)."""
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.index.nprobe = self.nprobe
        if queries.ndim == 1:
            queries = queries[None]
        k = max(1, min(int(k), self.size))
        params = faiss.SearchParametersIVF(nprobe=self.nprobe)
        return self.index.search(queries, k, params=params)

    def save(self, path: str | Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path, nprobe: int) -> AnnIndex:
        import faiss

        return cls(faiss.read_index(str(path)), nprobe)

    def memory_bytes(self) -> int:
        """Vectors + ids + centroids: what the index holds in RAM."""
        d = int(self.index.d)
        return self.size * (4 * d + 8) + self.nlist * 4 * d


def build_index(vectors: np.ndarray, nlist: int = 0, nprobe: int = 32, seed: int = 0) -> AnnIndex:
    """An IVF inner-product index over ``vectors`` (I, D)."""
    import faiss

    start = time.perf_counter()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    nlist = nlist or auto_nlist(n)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(n, min(n, 64 * nlist), replace=False)] if n > 64 * nlist else x
    index.train(sample)
    index.add(x)
    log.info("ann index: %d items, %d cells, nprobe %d, built in %.1fs", n, nlist, nprobe,
             time.perf_counter() - start)
    return AnnIndex(index, min(nprobe, nlist))
