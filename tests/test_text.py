import numpy as np
import pytest

from sora.config import TextConfig
from sora.model.text import EmbeddingCache, HashEncoder, ItemEmbeddings, embed_items, load_encoder


class CountingEncoder(HashEncoder):
    def __init__(self):
        super().__init__(16)
        self.encoded = 0

    def encode(self, texts):
        self.encoded += len(texts)
        return super().encode(texts)


def test_second_run_encodes_nothing_and_a_change_reencodes_one(tmp_path, tiny_dataset):
    items = tiny_dataset.items
    cache = EmbeddingCache(tmp_path / "cache")
    enc = CountingEncoder()
    first, stats = embed_items(items, "{title}. {categories}", enc, cache, progress=False)
    assert enc.encoded == len(items) and stats.encoded == len(items) and stats.cached == 0
    again, stats = embed_items(items, "{title}. {categories}", enc, cache, progress=False)
    assert enc.encoded == len(items) and stats.encoded == 0 and stats.cached == len(items)
    np.testing.assert_array_equal(first.vectors, again.vectors)
    changed = items.copy()
    changed.loc[3, "title"] = "A brand new title"
    third, stats = embed_items(changed, "{title}. {categories}", enc, cache, progress=False)
    assert enc.encoded == len(items) + 1 and stats.encoded == 1
    assert not np.allclose(third.vectors[3], first.vectors[3])
    np.testing.assert_array_equal(third.vectors[4], first.vectors[4])


def test_other_encoder_does_not_share_cache(tmp_path, tiny_dataset):
    cache = EmbeddingCache(tmp_path)
    embed_items(tiny_dataset.items, "{title}", HashEncoder(16), cache, progress=False)
    _, stats = embed_items(tiny_dataset.items, "{title}", HashEncoder(32), cache, progress=False)
    assert stats.cached == 0


def test_embeddings_artifact_round_trip(tmp_path, tiny_dataset):
    emb, _ = embed_items(tiny_dataset.items, "{title}", HashEncoder(8), None, progress=False)
    emb.save(tmp_path / "e.parquet")
    again = ItemEmbeddings.load(tmp_path / "e.parquet")
    assert again.item_ids == emb.item_ids and again.encoder_id == "hash-8"
    np.testing.assert_allclose(again.vectors, emb.vectors)
    np.testing.assert_allclose(again.aligned(["i3", "i1"]), emb.vectors[[3, 1]])
    with pytest.raises(KeyError):
        again.aligned(["missing"])


@pytest.mark.slow
def test_bundled_encoder_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = load_encoder(TextConfig())
    vecs = enc.encode(["Toy Story (1995). Animation, Comedy", "Toy Story 2 (1999). Animation, Comedy",
                       "Schindler's List (1993). Drama, War"])
    assert vecs.shape == (3, 384) and enc.encoder_id.startswith("all-MiniLM-L6-v2-")
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2]  # the sequel is closer than the war drama
