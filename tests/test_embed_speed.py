"""Embedding throughput (issue 15, deliverable 6): length-sorted batches, cheap cache I/O, same vectors."""

import numpy as np
import pandas as pd
import pytest

from sora.model.text import EmbeddingCache, HashEncoder, ItemEmbeddings, embed_texts, text_hash


class Spy(HashEncoder):
    def __init__(self):
        super().__init__(16)
        self.batches: list[list[str]] = []

    def encode(self, texts):
        self.batches.append(list(texts))
        return super().encode(texts)


def texts(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{rng.integers(1000)}" for _ in range(rng.integers(1, 60))) for _ in range(n)]


def test_batches_hold_texts_of_similar_length_longest_first():
    spy = Spy()
    data = texts()
    out, stats = embed_texts(data, spy, batch_size=32, progress=False)
    lengths = [len(t) for b in spy.batches for t in b]
    assert lengths == sorted(lengths, reverse=True)
    assert all(len(b) <= 32 for b in spy.batches) and stats.encoded == len(set(data))
    # same vectors, in the caller's order, as encoding everything at once
    assert np.allclose(out, HashEncoder(16).encode(data))


def test_duplicates_are_encoded_once():
    spy = Spy()
    out, stats = embed_texts(["a b", "c", "a b"], spy, progress=False)
    assert stats.encoded == 2 and sum(len(b) for b in spy.batches) == 2
    assert np.array_equal(out[0], out[2])


def test_cache_round_trip_and_old_files(tmp_path):
    data = texts(50)
    cache = EmbeddingCache(tmp_path)
    first, _ = embed_texts(data, HashEncoder(16), cache, progress=False)
    spy = Spy()
    spy.encoder_id = "hash-16"
    again, stats = embed_texts(data, spy, cache, progress=False)
    assert stats.encoded == 0 and stats.cached == 50 and not spy.batches
    assert np.array_equal(first, again)
    # a cache file written by the previous code (pandas, list<double> per row) still reads
    old = pd.DataFrame({"hash": [text_hash("x")], "vector": [[0.5] * 16]})
    old.to_parquet(tmp_path / "hash-16.parquet", index=False)
    assert np.allclose(EmbeddingCache(tmp_path).load("hash-16")[text_hash("x")], 0.5)


def test_item_embeddings_round_trip(tmp_path):
    v = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    emb = ItemEmbeddings([f"i{k}" for k in range(5)], [f"t{k}" for k in range(5)], v, "enc")
    emb.save(tmp_path / "e.parquet")
    back = ItemEmbeddings.load(tmp_path / "e.parquet")
    assert back.item_ids == emb.item_ids and back.texts == emb.texts and back.encoder_id == "enc"
    assert back.vectors.dtype == np.float32 and np.array_equal(back.vectors, v)
    empty = ItemEmbeddings([], [], np.zeros((0, 8), np.float32), "enc")
    empty.save(tmp_path / "z.parquet")
    assert ItemEmbeddings.load(tmp_path / "z.parquet").vectors.shape[0] == 0


def test_cache_store_writes_vectors_without_a_python_list_per_row(tmp_path, monkeypatch):
    """Storing 20k vectors must not build a Python list per row (``tolist`` was most of a cold `sora embed`):
    every array handed to Arrow is a flat numpy buffer or the list of hashes, never a list of vectors."""
    import pyarrow

    handed = []
    real_array = pyarrow.array
    monkeypatch.setattr(pyarrow, "array", lambda obj, *a, **kw: (handed.append(obj), real_array(obj, *a, **kw))[1])
    entries = {f"h{k}": np.full(384, k, np.float32) for k in range(20_000)}
    cache = EmbeddingCache(tmp_path)
    cache.store("enc", entries)
    assert handed and not any(isinstance(o, list) and o and not isinstance(o[0], str) for o in handed)
    assert any(isinstance(o, np.ndarray) and o.size == 20_000 * 384 for o in handed)
    back = cache.load("enc")
    assert len(back) == 20_000 and back["h7"][0] == 7.0 and back["h19999"].dtype == np.float32


@pytest.mark.slow
def test_bundled_encoder_runs_one_forward_per_batch_and_matches_sentence_transformers():
    """What keeps `sora embed` level with sentence-transformers (the speed itself is measured in
    ``benchmarks/embed_speed.py``, not here): each batch is one ``model.encode`` call that does not split
    it again, batches hold texts of similar length, and the vectors are the model's own, in input order."""
    from sora.config import TextConfig
    from sora.model.text import load_encoder

    enc = load_encoder(TextConfig())
    data = [f"Movie number {k} ({1950 + k % 70}). " + "Drama, Comedy. " * (k % 5) for k in range(300)]
    calls = []
    inner = enc.model.encode
    enc.model.encode = lambda texts, **kw: (calls.append((list(texts), kw["batch_size"])), inner(texts, **kw))[1]
    out, stats = embed_texts(data, enc, None, batch_size=128, progress=False)
    assert [len(t) for t, _ in calls] == [128, 128, 44] and all(b == len(t) for t, b in calls)
    lengths = [len(x) for t, _ in calls for x in t]
    assert lengths == sorted(lengths, reverse=True) and stats.encoded == 300
    direct = inner(data, batch_size=128, normalize_embeddings=True, show_progress_bar=False)
    assert out.dtype == np.float32 and np.allclose(out, direct, atol=1e-5)


@pytest.mark.slow
def test_text_num_threads_applies_while_encoding_only():
    import torch

    from sora.config import TextConfig
    from sora.model.text import load_encoder

    before = torch.get_num_threads()
    enc = load_encoder(TextConfig(num_threads=1))
    seen = []
    inner = enc.model.encode
    enc.model.encode = lambda *a, **kw: (seen.append(torch.get_num_threads()), inner(*a, **kw))[1]
    out = enc.encode(["a short title", "another one"])
    assert seen == [1] and torch.get_num_threads() == before and out.shape == (2, enc.dim)
