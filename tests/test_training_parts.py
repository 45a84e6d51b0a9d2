"""The three parts of training (preparation, loop, selection), device choice and the item–item heads.

Over 400 lines on purpose: the three parts share one prepared tiny data set (the module fixture `tiny`).
"""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from sora.config import ConfigError, SoraConfig
from sora.data.protocol import sequences
from sora.data.split import make_split
from sora.evaluation.evaluate import run_baselines
from sora.model.itemsim import cooccurrence_topk, ease_sparse, ease_weights, interaction_matrix
from sora.model.text import HashEncoder
from sora.training import prep as training_prep
from sora.training.loop import fit, run_epochs
from sora.training.losses import softmax_loss
from sora.training.prep import check_item_item_head, dense_head_at, item_item_head, prepare_training
from sora.training.selection import (
    ALPHA_GRID,
    EASE_LAMBDA_START,
    BestEpoch,
    choose_ease_lambda,
    ease_on_valid,
    ease_valid_metric,
    select_alpha,
    select_heads,
)
from sora.training.train import (
    build_model,
    prepare,
    recent_history,
    resolve_device,
    train_model,
    tuning_trials,
)
from tests.conftest import make_dataset

FAST = ["text.model=hash:16", "model.dim=8", "train.max_epochs=2", "train.batch_size=64", "graph.item_knn_k=3",
        "model.history_len=4", "train.device=cpu"]


@pytest.fixture(scope="module")
def tiny():
    ds = make_dataset(n_users=30, n_items=40)
    cfg = SoraConfig().with_overrides(FAST)
    split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
    return ds, cfg, split, emb


# ------------------------------------------------------------------------------------------- preparation

def test_recent_history_matches_a_per_user_loop():
    train = pd.DataFrame({"u": [0, 0, 0, 1, 1, 2, 0], "i": [5, 3, 7, 1, 2, 9, 4], "ts": [1, 3, 3, 5, 4, 0, 2]})
    hist, mask = recent_history(train, 4, 3)
    for u in range(4):
        rows = [(ts, r, i) for r, (uu, i, ts) in enumerate(train[["u", "i", "ts"]].itertuples(index=False)) if uu == u]
        items = [i for _, _, i in sorted(rows, reverse=True)][:3]  # newest first: time, then later row
        assert hist[u, : len(items)].tolist() == items
        assert mask[u].sum() == len(items) and not hist[u, len(items):].any()
    # newest first; of the two items at ts 3 the later row (7) is newer: input order, not item index
    assert hist[0].tolist() == [7, 3, 4]


def test_prepared_once_with_timed_stages(tiny):
    ds, cfg, split, emb = tiny
    prep = prepare_training(split, emb, ds.items, cfg, torch.device("cpu"))
    assert (prep.x_train != split.matrix("train")).nnz == 0
    assert prep.static["train"] is prep.x_train  # one matrix shared by graph, loop, head and the model
    assert {"matrix", "text_knn", "heterograph", "torch_graph", "history", "item_item_head"} <= set(prep.stages)
    assert all(r["seconds"] >= 0 and r["peak_rss_mb"] > 0 for r in prep.stages.values())
    assert prep.hist.shape == (split.num_users, 4) and prep.log_q.shape == (split.num_items,)
    assert len(prep.pairs[0]) == prep.x_train.nnz
    assert isinstance(prep.ii, np.ndarray) and prep.ii.shape == (split.num_items,) * 2
    # reused as is by train_model
    result = train_model(split, emb, ds.items, cfg, progress=False, prepared=prep)
    rec = result.recommender  # the prepared head itself, unless the selection kept another λ (select_heads)
    assert (rec.ii is prep.ii) == (rec.meta["head_lambda"] == prep.ease_lambda) and result.stages == prep.stages


def test_sparse_head_above_ease_max_items(tiny):
    ds, cfg, split, emb = tiny
    small = SoraConfig().with_overrides([*FAST, "graph.ease_max_items=10", "graph.ease_neighbours=5"])
    ii, lam, _ = item_item_head(split.matrix("train"), small.graph)
    assert sp.issparse(ii) and ii.shape == (split.num_items,) * 2 and lam == EASE_LAMBDA_START  # not searched
    assert (np.diff(ii.tocsc().indptr) <= 5).all()  # at most n weights per target item (column)
    rec = train_model(split, emb, ds.items, small, progress=False).recommender
    assert rec.ii is not None and sp.issparse(rec.ii)  # never dropped


def test_head_that_cannot_fit_fails_before_training(tiny, monkeypatch):
    ds, cfg, split, emb = tiny
    import sora.training.prep as tp

    monkeypatch.setattr(tp, "available_memory_bytes", lambda: 1000)
    with pytest.raises(ValueError, match="graph.ease_max_items"):
        check_item_item_head(split.num_items, cfg.graph)
    with pytest.raises(ValueError, match="graph.ease_max_items"):
        train_model(split, emb, ds.items, cfg, progress=False)


def test_empty_valid_split_is_a_clear_error(tiny):
    ds, cfg, split, emb = tiny
    import copy

    empty = copy.copy(split)
    empty.valid = split.valid.iloc[:0]
    with pytest.raises(ValueError, match="valid split is empty"):
        train_model(empty, emb, ds.items, cfg, progress=False)


# ------------------------------------------------------------------------------------------- loop

def test_loop_trains_and_keeps_the_best_epoch(tiny):
    ds, cfg, split, emb = tiny
    prep = prepare_training(split, emb, ds.items, cfg, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(prep, cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loop = run_epochs(model, prep, cfg, progress=False)
    assert [h["epoch"] for h in loop.history] == [1, 2]
    assert all(np.isfinite(h["loss"]) and "valid_ndcg@10" in h for h in loop.history)
    assert loop.best.epoch == 2  # warm-up (5) > max_epochs: only the last epoch is selectable
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    rec = fit(model, prep, None)
    assert rec.user_vectors.shape == (split.num_users, 8) and rec.user_vectors.device.type == "cpu"
    one = run_epochs(build_model(prep, cfg), prep, cfg, progress=False, max_steps=1)
    assert all(h["steps"] == 1 for h in one.history)


# ------------------------------------------------------------------------------------------- selection

def test_softmax_loss_full_catalogue_and_sampled():
    g = torch.Generator().manual_seed(0)
    uv, items = torch.randn(6, 4, generator=g), torch.randn(9, 4, generator=g)
    i = torch.tensor([1, 3, 3, 0, 8, 1])
    log_q = torch.log(torch.rand(9, generator=g))
    tc = SoraConfig().resolved().train
    full = softmax_loss(uv, items, i, log_q, tc)
    assert torch.allclose(full, torch.nn.functional.cross_entropy(uv @ items.T / tc.temperature, i))
    warm = torch.ones(9, dtype=torch.bool)
    warm[[2, 5]] = False  # cold items are no negatives
    masked = (uv @ items.T / tc.temperature).masked_fill(~warm[None, :], -torch.inf)
    assert torch.allclose(softmax_loss(uv, items, i, log_q, tc, warm), torch.nn.functional.cross_entropy(masked, i))
    # above the threshold: in-batch negatives, logQ-corrected, a target's duplicates masked
    tc.full_softmax_max_items = 5
    logits = uv @ items[i].T / tc.temperature - log_q[i][None, :]
    dup = (i[:, None] == i[None, :]) & ~torch.eye(6, dtype=torch.bool)
    want = torch.nn.functional.cross_entropy(logits.masked_fill(dup, -torch.inf), torch.arange(6))
    assert torch.allclose(softmax_loss(uv, items, i, log_q, tc), want, atol=1e-6)
    assert not torch.allclose(want, full)


def test_best_epoch_warmup_and_patience():
    tc = SoraConfig().with_overrides(["train.warmup_epochs=2", "train.min_epochs=3", "train.patience=2"]).train
    best = BestEpoch(tc)
    assert not best.update(1, 0.9, {"w": torch.ones(1)})  # inside warm-up
    assert best.update(2, 0.5, {"w": torch.zeros(1)})
    assert not best.update(3, 0.4, {})
    assert best.epoch == 2 and best.state["w"].item() == 0.0
    assert not best.should_stop(3) and best.should_stop(4)


@pytest.mark.parametrize(("peak", "want", "calls"), [(3, 3, 5), (-2, -2, 5), (0, 0, 3), (9, 5, 6), (-9, -5, 7)])
def test_ease_lambda_walk_climbs_to_the_valid_peak(monkeypatch, peak, want, calls):
    """The walk over 300·2^k follows valid NDCG@10 up or down to its peak, within |k| ≤ 5, one fit per λ."""
    import sora.training.selection as sel

    fits = []
    monkeypatch.setattr(sel, "ease_weights", lambda x, lam: fits.append(lam) or lam)  # the "weights" are λ itself
    metric = lambda lam: (-abs(np.log2(lam / 300) - peak), 0.9 if lam > 300 else 1.0)  # noqa: E731
    choice = choose_ease_lambda(sp.csr_matrix((2, 2)), metric)
    assert choice.lam == pytest.approx(300 * 2.0 ** want) and choice.weights == pytest.approx(choice.lam)
    assert choice.decay == metric(choice.lam)[1]  # the decay that came with the best λ
    assert len(fits) == len(set(fits)) == calls and set(choice.valid) == set(fits)
    assert choice.valid[choice.lam] == max(choice.valid.values())


def test_ease_lambda_chosen_on_valid_is_saved_and_shared_with_the_baselines(tiny):
    ds, cfg, split, emb = tiny
    x = split.matrix("train")
    decays = tuple(cfg.train.head_decays)
    choice = ease_on_valid(x, split, None, decays)
    assert choice.valid and choice.valid[choice.lam] == max(choice.valid.values()) and choice.decay in decays
    metric = ease_valid_metric(x, split, decays)
    assert metric(choice.weights) == (choice.valid[choice.lam], choice.decay)
    assert metric(choice.weights)[0] >= max(metric(ease_weights(x, lam))[0] for lam in (choice.lam / 2, choice.lam * 2))
    prep = prepare_training(split, emb, ds.items, cfg, torch.device("cpu"))
    assert prep.ease_lambda == choice.lam and np.allclose(prep.ii, choice.weights)
    rec = train_model(split, emb, ds.items, cfg, progress=False, prepared=prep).recommender
    # the head's selection starts from EASE's λ and may keep half or twice it; the λ kept is saved
    assert list(rec.meta["head_lambda_grid"])[0] == f"{choice.lam:g}"
    assert rec.config.graph.ease_lambda == rec.meta["head_lambda"] and cfg.graph.ease_lambda is None  # caller's untouched
    plain = ease_on_valid(x, split, None)
    assert run_baselines(split, cfg, ("ease",))["ease"]["lambda"] == plain.lam  # tuned EASE, on its own valid
    fixed = cfg.with_overrides(["graph.ease_lambda=7"])
    assert ease_on_valid(x, split, 7.0).valid == {}  # a given λ is not searched
    assert set(ease_on_valid(x, split, 7.0, decays).valid) == {7.0}  # only the decay is
    assert run_baselines(split, fixed, ("ease",))["ease"]["lambda"] == 7.0
    assert prepare_training(split, emb, ds.items, fixed, torch.device("cpu")).ease_lambda == 7.0
    cold = make_split(ds, cfg.with_overrides(["split.mode=cold-item"]).split)
    assert ease_on_valid(cold.matrix("train"), cold, None).lam == EASE_LAMBDA_START  # cold valid items: no walk
    big = ease_on_valid(x, split, None, search_max_items=split.num_items - 1)  # above the cap: no walk
    assert big.lam == EASE_LAMBDA_START and big.valid == {}


def test_select_alpha_picks_from_the_grid(tiny):
    ds, cfg, split, emb = tiny
    result = train_model(split, emb, ds.items, cfg, progress=False)
    rec = result.recommender
    assert len(rec.meta["alpha_grid"]) == len(ALPHA_GRID) + 1 and "head alone" in rec.meta["alpha_grid"]
    assert result.valid["ndcg@10"] == pytest.approx(max(rec.meta["alpha_grid"].values()))
    unc = rec.meta["valid_uncertainty"]
    assert unc["ndcg@10_se"] > 0 and all(len(v) == 2 for k, v in unc.items() if k.startswith("over"))
    rec.ii = None
    metrics = select_alpha(rec, split.valid["u"].to_numpy(), split.valid["i"].to_numpy(), cfg, split.matrix("train"))
    assert "ndcg@10" in metrics


def test_select_heads_chooses_the_heads_lambda_beside_the_network(tiny):
    ds, cfg, split, emb = tiny
    result = train_model(split, emb, ds.items, cfg.with_overrides(["tune.grid=[]"]), progress=False)
    rec, x = result.recommender, split.matrix("train")
    grid = {float(k): v for k, v in rec.meta["head_lambda_grid"].items()}
    lam = rec.meta["head_lambda"]
    assert len(grid) == 3 and lam in grid and rec.config.graph.ease_lambda == lam
    assert result.valid["ndcg@10"] == pytest.approx(max(grid.values()))
    np.testing.assert_allclose(rec.ii, dense_head_at(x, lam, cfg.graph), rtol=1e-6, atol=1e-9)

    vu, vi = split.valid["u"].to_numpy(), split.valid["i"].to_numpy()
    x_valid = sp.csr_matrix((np.ones(len(vu)), (vu, vi)), shape=x.shape)
    oracle = (x.T @ x_valid).toarray()  # each user's own valid items score highest: better than any EASE
    zeros = np.zeros_like(oracle)
    first, seqs = rec.ii, sequences(split, "train")
    plain = select_heads(rec, vu, vi, cfg, x, seqs, False)
    best = select_heads(rec, vu, vi, cfg, x, seqs, False, None, {1.0: zeros, 2.0: oracle}.get, (lam, 1.0, 2.0))
    assert rec.meta["head_lambda"] == 2.0 and rec.ii is oracle and best["ndcg@10"] > plain["ndcg@10"]
    assert rec.meta["alpha_grid"] and max(rec.meta["alpha_grid"].values()) == best["ndcg@10"]
    rec.ii = first
    kept = select_heads(rec, vu, vi, cfg, x, seqs, False, None, {1.0: zeros, 2.0: zeros}.get, (lam, 1.0, 2.0))
    assert rec.meta["head_lambda"] == lam and rec.ii is first and kept == plain
    # with the transition head, each λ runs the whole selection; the winner's transition head is kept
    kept = select_heads(rec, vu, vi, cfg, x, seqs, True, None, {1.0: zeros, 2.0: oracle}.get, (lam, 1.0, 2.0))
    assert rec.meta["head_lambda"] == 2.0 and rec.ii is oracle and "transition_grid" in rec.meta
    assert kept["ndcg@10"] == max(rec.meta["head_lambda_grid"].values())
    assert (rec.transitions is None) == (rec.beta == 0.0) == (rec.transition_rows is None)
    fixed = train_model(split, emb, ds.items, cfg.with_overrides(["tune.grid=[]", "graph.ease_lambda=50"]),
                        progress=False).recommender
    assert "head_lambda_grid" not in fixed.meta and fixed.config.graph.ease_lambda == 50  # a given λ is kept


def test_tuning_trains_each_grid_value_and_keeps_the_best_on_valid(tiny, monkeypatch):
    ds, cfg, split, emb = tiny
    grid = cfg.with_overrides(['tune.grid=["train.temperature=0.3,1.0", "train.lr=0.01,0.02"]'])
    assert tuning_trials(grid) == [["train.temperature=0.3", "train.lr=0.01"], ["train.temperature=0.3", "train.lr=0.02"],
                                   ["train.temperature=1.0", "train.lr=0.01"], ["train.temperature=1.0", "train.lr=0.02"]]
    built = []  # the heads at the other λs the heads' selection tries: one (I, I) inverse each
    monkeypatch.setattr(training_prep, "dense_head_at", lambda x, lam, g: built.append(lam) or dense_head_at(x, lam, g))
    result = train_model(split, emb, ds.items, grid, progress=False)
    trials = result.recommender.meta["tuning"]
    tried = [float(k) for k in result.recommender.meta["head_lambda_grid"]][1:]
    assert len(tried) == 2 and sorted(built) == sorted(tried)  # built once, shared by the four trials
    assert [t["overrides"] for t in trials] == tuning_trials(grid)
    best = max(trials, key=lambda t: t["valid_ndcg@10"])
    assert result.valid["ndcg@10"] == best["valid_ndcg@10"]
    chosen = result.recommender.config.train
    assert [f"train.temperature={chosen.temperature}", f"train.lr={chosen.lr}"] == best["overrides"]
    # each trial is the single training it names (same seed, same data)
    alone = train_model(split, emb, ds.items, cfg.with_overrides(["tune.grid=[]", *trials[-1]["overrides"]]),
                        progress=False)
    assert alone.valid["ndcg@10"] == pytest.approx(trials[-1]["valid_ndcg@10"], abs=1e-6)
    assert "tuning" not in alone.recommender.meta


@pytest.mark.parametrize("entry", ["train.temperature", "train.temperature=", "split.seed=1,2", "tune.grid=x",
                                   "model.nope=1,2", "train.temperature=0.2,,1"])
def test_bad_tuning_grid_is_a_config_error(entry):
    with pytest.raises(ConfigError, match="tune.grid"):
        SoraConfig().with_overrides([f'tune.grid=["{entry}"]'])


# ------------------------------------------------------------------------------------------- device

def test_device_selection_never_crashes(tiny):
    with pytest.raises(ValueError, match="train.device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="train.device=cuda"):
            resolve_device("cuda")
        assert resolve_device("auto").type == "cpu"
    ds, cfg, split, emb = tiny
    rec = train_model(split, emb, ds.items, cfg, progress=False).recommender
    assert rec.meta["device"]["type"] == "cpu" and rec.meta["device"]["name"]


# ------------------------------------------------------------------------------------------- item–item heads

def _random_matrix(nu=60, ni=12, p=0.6, seed=0):
    rng = np.random.default_rng(seed)
    dense = rng.random((nu, ni)) < p
    u, i = np.nonzero(dense)
    return interaction_matrix(u, i, nu, ni)


def test_sparse_ease_with_full_neighbourhoods_is_ease():
    x = _random_matrix()
    assert ((x.T @ x).toarray() > 0).all()  # every pair co-occurs, so a full neighbourhood is every item
    dense = ease_weights(x, 10.0)
    sparse = ease_sparse(x, 10.0, neighbours=x.shape[1] - 1, gram_k=x.shape[1]).toarray()
    np.testing.assert_allclose(sparse, dense, atol=1e-5)


def test_sparse_ease_small_neighbourhoods_and_padding():
    x = interaction_matrix(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 2, 3]), 3, 6)  # items 4, 5 never seen
    b = ease_sparse(x, 1.0, neighbours=1)
    assert b.shape == (6, 6) and np.isfinite(b.data).all()
    assert b[:, 4].nnz == 0 and b[:, 5].nnz == 0 and b[3].nnz == 0  # nothing co-occurs with them
    assert b[1, 0] > 0  # item 0's one neighbour is item 1


def test_cooccurrence_blocks_agree_with_one_shot():
    x = _random_matrix(nu=80, ni=30, p=0.2, seed=5)
    full = (x.T @ x).toarray()
    np.fill_diagonal(full, 0)
    for budget in (1, 50, 10**9):
        s, d, w = cooccurrence_topk(x, 4, max_block_nnz=budget)
        np.testing.assert_array_equal(w, full[s, d])
        for item in range(30):
            row = full[item]
            kept = w[s == item]
            assert len(kept) == min(4, (row > 0).sum())
            assert (np.sort(kept)[::-1] == np.sort(row)[::-1][: len(kept)]).all()


def test_training_is_the_same_on_one_thread_and_two():
    """The CPU stand-in for the GPU tier's check: a different summation order (thread count here, the
    device there) changes the scores only by rounding. Unidentifiable parameters (the item vectors' bias,
    the attention keys' bias) used to random-walk on rounding noise under AdamW and shift every score of a
    user by up to 0.39; they are held at zero and stay there."""
    import torch

    from sora.config import SoraConfig
    from sora.model.text import HashEncoder
    from sora.training.train import prepare, train_model
    from tests.conftest import make_dataset

    ds = make_dataset(n_users=60, n_items=120)
    cfg = SoraConfig().with_overrides(["text.model=hash:16", "model.dim=16", "train.max_epochs=3",
                                       "train.batch_size=128", "model.dropout=0.0", "graph.item_knn_k=3",
                                       "model.history_len=4", "train.device=cpu", "train.checkpoint_every=0"])
    before = torch.get_num_threads()
    recs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
            recs.append(train_model(split, emb, ds.items, cfg, progress=False).recommender)
    finally:
        torch.set_num_threads(before)
    a, b = recs
    users = np.arange(a.num_users)
    torch.testing.assert_close(a.score_users(users, alpha=0.0), b.score_users(users, alpha=0.0), rtol=0, atol=1e-4)
    assert float(a.model.text_out.proj.bias.abs().max()) == 0.0
    d = a.model.cfg.dim
    for layer in a.model.fusion.encoder.layers:
        assert float(layer.self_attn.in_proj_bias[d:2 * d].abs().max()) == 0.0


def test_per_pair_user_vectors_equal_the_shared_pass():
    """The accelerator path (a pass per pair, no host sync) gives the CPU path's vectors (a pass per user
    whose target is outside its history), targets inside the history masked out alike."""
    import torch

    from sora.config import ModelConfig
    from sora.model.network import SoraModel
    from sora.training.losses import batch_user_vectors

    torch.manual_seed(0)
    cfg = ModelConfig(dim=16, history_len=4, dropout=0.0, anonymous_prob=0.0, use_text=False, transformer_layers=1)
    model = SoraModel(cfg, 30, 40, 0, torch.ones(40, dtype=torch.bool))
    g_user, g_item = torch.randn(30, 16), torch.randn(40, 16)
    hist = torch.randint(0, 40, (30, 4))
    hmask = torch.rand(30, 4) > 0.3
    u = torch.randint(0, 30, (200,))
    i = torch.where(torch.rand(200) < 0.5, hist[u, 0], torch.randint(0, 40, (200,)))  # half inside the history
    for train_mode in (True, False):
        model.train(train_mode)
        shared = batch_user_vectors(model, g_user, g_item, hist, hmask, u, i, torch.Generator(), per_pair=False)
        pairs = batch_user_vectors(model, g_user, g_item, hist, hmask, u, i, torch.Generator(), per_pair=True)
        torch.testing.assert_close(pairs, shared, rtol=1e-5, atol=1e-6)


def test_a_size_that_cannot_fit_the_gpu_is_refused_before_training_naming_the_parts(monkeypatch):
    import torch

    from sora.config import SoraConfig
    from sora.training.device import check_training_memory, training_memory_parts

    cfg = SoraConfig().resolved()
    parts = training_memory_parts(1_000_000, 500_000, 20_000_000, cfg)
    assert all(v > 0 for v in parts.values())
    small = training_memory_parts(943, 1682, 80_000, cfg)
    assert sum(small.values()) < sum(parts.values()) / 20
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * 2**30, 80 * 2**30))
    with pytest.raises(ValueError) as err:
        check_training_memory(torch.device("cuda"), parts)
    msg = str(err.value)
    assert "GiB" in msg and "2.0 of 80.0 GiB are free" in msg and "largest parts" in msg and "\n" not in msg
    check_training_memory(torch.device("cuda"), small)  # fits: no error
    check_training_memory(torch.device("cpu"), parts)  # the CPU only logs its estimate


@pytest.mark.parametrize("head_in_loss", [False, True])
def test_causal_loss_over_every_position_equals_the_selected_targets(head_in_loss):
    """The accelerator's causal loss (every position's logits, padding ignored: no host sync) is the CPU's
    (targets selected first), with the learned head in the logits too, and so are its gradients."""
    import torch

    from sora.config import SoraConfig
    from sora.model.text import HashEncoder
    from sora.training.losses import window_loss
    from sora.training.prep import prepare_training
    from sora.training.train import build_model, prepare, seed_everything
    from tests.conftest import make_dataset

    ds = make_dataset(n_users=30, n_items=50, per_user=15)
    cfg = SoraConfig().with_overrides(["text.model=hash:16", "model.dim=16", "split.mode=leave-last-out",
                                       "model.history_len=6", "model.dropout=0.0", "train.device=cpu",
                                       f"train.head_in_loss={str(head_in_loss).lower()}", "train.head_folds=2",
                                       "graph.ease_lambda=50"]).resolved()
    split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
    seed_everything(0)
    prep = prepare_training(split, emb, ds.items, cfg, torch.device("cpu"))
    assert prep.windows is not None and (prep.head_term is not None) == head_in_loss
    model = build_model(prep, cfg)
    idx = torch.arange(min(12, len(prep.windows[0])))
    log_gain = torch.nn.Parameter(torch.tensor(0.3)) if head_in_loss else None
    out = {}
    for all_positions in (False, True):
        model.zero_grad()
        loss = window_loss(model, prep, *(t[idx] for t in prep.windows), cfg.train, torch.Generator(), None,
                           idx=idx, log_gain=log_gain, all_positions=all_positions)
        loss.backward()
        out[all_positions] = (loss.detach(), model.item_emb.weight.grad.clone())
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-4, atol=1e-7)


def test_the_heads_alone_are_served_where_valid_says_the_network_only_adds_noise(tiny, tmp_path):
    """The head alone is a candidate: with an oracle head and a network of noise, valid picks it, and the
    saved model scores, recommends and explains without the network."""
    from sora.model.recommender import Recommender

    ds, cfg, split, emb = tiny
    rec = train_model(split, emb, ds.items, cfg.with_overrides(["tune.grid=[]"]), progress=False).recommender
    x, vu, vi = split.matrix("train"), split.valid["u"].to_numpy(), split.valid["i"].to_numpy()
    x_valid = sp.csr_matrix((np.ones(len(vu)), (vu, vi)), shape=x.shape)
    rec.ii = np.ascontiguousarray((x.T @ x_valid).toarray(), dtype=np.float32)  # own valid items score highest
    rec.user_vectors = torch.randn_like(rec.user_vectors) * 100
    best = select_alpha(rec, vu, vi, cfg, x)
    assert rec.network_weight == 0.0 and best["ndcg@10"] == max(rec.meta["alpha_grid"].values())
    assert rec.meta["alpha_grid"]["head alone"] == best["ndcg@10"] > rec.meta["alpha_grid"]["0"]
    users = np.arange(3)
    torch.testing.assert_close(rec.score_users(users), rec.alpha * rec._ii_scores(rec._head_rows(users)))
    loaded = Recommender.load(rec.save(tmp_path / "m"))
    assert loaded.network_weight == 0.0
    torch.testing.assert_close(loaded.score_users(users), rec.score_users(users))
    user = rec.user_ids[int(vu[0])]
    out = loaded.recommend(user, k=3, explain=True)
    assert [r["item_id"] for r in out] == [r["item_id"] for r in rec.recommend(user, k=3)]
    # the history path and the explanation leave the network out too
    hist = [loaded.item_ids[i] for i in x[int(vu[0])].indices[:2]]
    scores = loaded.score_history([loaded.item_index[i] for i in hist])
    torch.testing.assert_close(scores, loaded._heads(None, [loaded.item_index[i] for i in hist]))
    from sora.model.explain import attributions

    u = int(vu[0])
    targets = [loaded.item_index[r["item_id"]] for r in out]
    newest_first = loaded.history[u][loaded.history_mask[u]].tolist()
    _, weights = attributions(loaded, newest_first, loaded.head_history(u, [])[0], targets, None)
    # the heads' shares add up to the whole score: no network share is taken
    np.testing.assert_allclose(weights.sum(0), [r["score"] for r in out], rtol=1e-4, atol=1e-5)


def test_the_prune_rule_judges_one_epoch_fixed_by_the_config():
    """A trial resumed from its checkpoint builds the rule afresh: it must judge where the uninterrupted run
    did (the first evaluated epoch from the warm-up on) and nowhere else."""
    from sora.training.train import prune_rule

    first = [{"epoch": e, "valid_ndcg@10": 0.1 * e, "valid_ndcg@10_se": 0.01} for e in range(1, 9)]
    cfg = SoraConfig().with_overrides(["train.warmup_epochs=5", "train.max_epochs=20"])
    prune = prune_rule(first, cfg)
    assert prune(5, 0.5) and not prune(5, 0.52) and not prune(6, 0.0) and not prune(4, 0.0)
    every_other = prune_rule(first, cfg.with_overrides(["train.eval_every=2"]))
    assert every_other(6, 0.6) and not every_other(5, 0.0)  # epoch 5 is not evaluated: 6 is judged
    assert prune_rule(first, cfg.with_overrides(["tune.prune_lead_se=null"])) is None


def test_cold_items_get_no_heads_alone_candidate(tiny):
    """Cold valid items have no interactions, so the head alone would score every candidate 0."""
    ds, cfg, split, emb = tiny
    cold_cfg = cfg.with_overrides(["split.mode=cold-item", "tune.grid=[]"])
    cold = make_split(ds, cold_cfg.split)
    rec = train_model(cold, emb, ds.items, cold_cfg, progress=False).recommender
    assert "head alone" not in rec.meta["alpha_grid"] and rec.network_weight == 1.0


def test_a_later_trial_that_does_not_lead_after_the_warm_up_stops_there(tiny):
    """tune.prune_lead_se: the second trial (a learning rate that cannot learn) is stopped at the end of the
    warm-up and is no candidate; with the rule off it trains to the end."""
    ds, cfg, split, emb = tiny
    grid = cfg.with_overrides(["train.max_epochs=4", "train.warmup_epochs=2", "train.min_epochs=4",
                               'tune.grid=["train.lr=0.01,0.0000001"]'])
    res = train_model(split, emb, ds.items, grid, progress=False)
    first, second = res.recommender.meta["tuning"]
    assert "pruned_at_epoch" not in first and second["pruned_at_epoch"] == 2 and first["valid_ndcg@10_se"] > 0
    assert res.recommender.config.train.lr == 0.01
    full = train_model(split, emb, ds.items, grid.with_overrides(["tune.prune_lead_se=null"]), progress=False)
    assert all("pruned_at_epoch" not in t for t in full.recommender.meta["tuning"])
    assert res.recommender.meta["valid"] == full.recommender.meta["valid"]  # trial 1 alone decided both
