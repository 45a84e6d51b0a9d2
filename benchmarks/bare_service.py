"""A bare BentoML service doing the same work as each of Sora's endpoints (random vectors of the same shape).

Started by benchmarks/serving.py beside Sora's service, so the framework's own cost is visible: what
a user would write first, plain ``@bentoml.api`` methods over in-memory tensors, no checks, no item–item
head, no titles. Ids are integers (taken modulo the table size). Shapes come from BARE_USERS,
BARE_ITEMS, BARE_DIM.
"""

import os

import bentoml
import torch


def _top(scores: torch.Tensor, k: int) -> dict:
    top = torch.topk(scores, k)
    return {"items": [{"item_id": str(i), "score": float(s)} for s, i in
                      zip(top.values.tolist(), top.indices.tolist(), strict=True)]}


@bentoml.service(name="bare-topk", workers=1)
class BareTopK:
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        n_users, n_items, dim = (int(os.environ.get(k, d)) for k, d in
                                 (("BARE_USERS", 943), ("BARE_ITEMS", 1682), ("BARE_DIM", 64)))
        self.users = torch.randn(n_users, dim, generator=g)
        self.items = torch.randn(n_items, dim, generator=g)
        self.unit = torch.nn.functional.normalize(self.items, dim=1)

    @bentoml.api
    def recommend(self, user_id: str, k: int = 10) -> dict:
        return _top(self.items @ self.users[int(user_id) % len(self.users)], k)

    @bentoml.api
    def recommend_from_history(self, item_ids: list[str], k: int = 10) -> dict:
        idx = torch.tensor([int(i) % len(self.items) for i in item_ids])
        return _top(self.items @ self.items[idx].mean(0), k)

    @bentoml.api
    def similar_items(self, item_id: str, k: int = 10) -> dict:
        return _top(self.unit @ self.unit[int(item_id) % len(self.items)], k)

    @bentoml.api
    def score(self, user_id: str, item_ids: list[str]) -> dict:
        idx = torch.tensor([int(i) % len(self.items) for i in item_ids])
        s = self.items[idx] @ self.users[int(user_id) % len(self.users)]
        return {"items": [{"item_id": i, "score": float(v)} for i, v in zip(item_ids, s.tolist(), strict=True)]}
