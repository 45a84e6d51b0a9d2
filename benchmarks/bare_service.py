"""A bare BentoML service doing the same top-k as Sora's /recommend (random vectors of the same shape).

Started by benchmarks/serving.py beside Sora's service, so the framework's own cost is visible.
Shapes come from BARE_USERS, BARE_ITEMS, BARE_DIM.
"""

import os

import bentoml
import torch


@bentoml.service(name="bare-topk", workers=1)
class BareTopK:
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        n_users, n_items, dim = (int(os.environ.get(k, d)) for k, d in
                                 (("BARE_USERS", 943), ("BARE_ITEMS", 1682), ("BARE_DIM", 64)))
        self.users = torch.randn(n_users, dim, generator=g)
        self.items = torch.randn(n_items, dim, generator=g)

    @bentoml.api
    def recommend(self, user_id: str, k: int = 10) -> dict:
        u = int(user_id) % len(self.users)
        top = torch.topk(self.users[u] @ self.items.T, k)
        return {"items": [{"item_id": str(i), "score": float(s)} for s, i in
                          zip(top.values.tolist(), top.indices.tolist(), strict=True)]}
