"""∞-AE (an infinite-width autoencoder in closed form, NTK kernel ridge) against and beside a tuned EASE.

    python benchmarks/infinite_ae.py [--seeds 2020 2021 2022 2023 2024] [--data DIR] [--with-sora]
                                     [--out benchmarks/RESULTS.md]

Issue 35, deliverable 3: Sachdeva et al. (NeurIPS 2022) report ∞-AE at NDCG@10 ×1.098 EASE on ML-1M's
random 80/10/10 split. On MovieLens-100K, the default random split (DESIGN.md §4) of every seed, in one
run and on the same split:

- **EASE**, λ chosen on valid (:func:`sora.training.selection.ease_on_valid`, as the project's EASE baseline);
- **∞-AE** (:mod:`sora.model.infinite_ae`), λ chosen on valid by the same kind of geometric walk;
- **EASE + w·∞-AE**: both scores standardised per user over the items that user can be recommended (the
  part's excluded items left out of the mean and spread), w chosen on valid from :data:`WEIGHTS` (0 = EASE);
  and the same with ∞-AE's λ re-chosen jointly with w among the λs its walk visited;
- with ``--with-sora``: Sora as trained by default (`sora train`, models kept under ``.sora/bench``) and
  Sora + w·∞-AE, the weight chosen on valid the same way.

Every model scores a user from the training row (as the project's evaluator does on a random split); test
is read once at the choices valid made. A second table scores test from the training + valid rows (what a
deployed model knows by then; the ∞-AE paper's protocol), at the same choices. Paired bootstrap over test
users (5,000 resamples) of each model against EASE, per seed and pooled over the seeds (each user's NDCG@10
summed over the seeds that test them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import DEFAULT_DATA, DEFAULT_MODEL, default_model, movielens_100k, trained_model, write_section  # noqa: E402
from protocol_t import paired_bootstrap  # noqa: E402
from quality import machine  # noqa: E402

from sora.config import SoraConfig  # noqa: E402
from sora.data.contract import load_dataset  # noqa: E402
from sora.data.split import Split, make_split  # noqa: E402
from sora.evaluation.evaluate import evaluate_split  # noqa: E402
from sora.model.infinite_ae import InfiniteAE, choose_lambda  # noqa: E402
from sora.training.selection import ease_on_valid  # noqa: E402

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- infinite-ae:begin -->", "<!-- infinite-ae:end -->"
SEEDS = (2020, 2021, 2022, 2023, 2024)
#: the blend weight of the standardised ∞-AE score; 0 leaves it out
WEIGHTS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
N_BOOT = 5000


def zscore_candidates(scores: torch.Tensor, exclude: sp.csr_matrix) -> torch.Tensor:
    """(U, I) scores standardised per user over the items not in ``exclude`` (U, I): the ones ranked.

    The excluded items (the user's own history) are left out of the mean and spread because an
    autoencoder reconstructs them near 1, which would otherwise set the scale of the ranked ones.
    """
    keep = torch.from_numpy(exclude.toarray() == 0)
    n = keep.sum(1, keepdim=True).clamp(min=1)
    mean = (scores * keep).sum(1, keepdim=True) / n
    var = (((scores - mean) * keep) ** 2).sum(1, keepdim=True) / n
    return (scores - mean) / (var.sqrt() + 1e-8)


class Scorer:
    """Valid / test NDCG@10 of full (U, I) score matrices on one split; per-user test values kept by name."""

    def __init__(self, split: Split):
        self.split = split
        self.exclude = {"valid": split.matrix("train"), "test": split.matrix("train", "valid")}
        self.per_user: dict[str, dict[str, np.ndarray]] = {}

    def __call__(self, scores: torch.Tensor, part: str, name: str | None = None) -> float:
        pu = None if name is None else self.per_user.setdefault(name, {})
        return evaluate_split(lambda b: scores[torch.as_tensor(b)], self.split, part, (10,), per_user=pu)["ndcg@10"]

    def z(self, scores: torch.Tensor, part: str) -> torch.Tensor:
        return zscore_candidates(scores, self.exclude[part])


def blend_on_valid(ev: Scorer, base: dict[str, torch.Tensor], extra: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(w, valid NDCG@10) of z(base) + w·z(extra) with w from :data:`WEIGHTS` chosen on valid (first of equals)."""
    zb, ze = ev.z(base["valid"], "valid"), ev.z(extra["valid"], "valid")
    scored = [(ev(zb + w * ze, "valid"), -k, w) for k, w in enumerate(WEIGHTS)]
    valid, _, w = max(scored)
    return w, valid


def blended(ev: Scorer, base: dict[str, torch.Tensor], extra: dict[str, torch.Tensor], w: float,
            part: str) -> torch.Tensor:
    return ev.z(base[part], part) + w * ev.z(extra[part], part)


def sora_model(data: Path, seed: int) -> Path:
    """Sora trained by default on random split ``seed`` (trained with `sora train` when absent; the same
    directories ``benchmarks/third_score.py`` uses)."""
    if seed == 2020:
        return default_model(data)
    return trained_model(data, DEFAULT_MODEL.parent / f"split-{seed}", f"split.seed={seed}")


def one_seed(dataset, seed: int, data: Path, with_sora: bool) -> dict:
    """Every model of the module docstring on random split ``seed``: rows (name, choice, valid, test)."""
    cfg = SoraConfig().with_overrides([f"split.seed={seed}"])
    split = make_split(dataset, cfg.split)
    ev = Scorer(split)
    users = np.arange(split.num_users)
    x_train, x_seen = split.matrix("train"), split.matrix("train", "valid")
    rows, times = [], {}

    started = time.perf_counter()
    ease = ease_on_valid(x_train, split, None, (1.0,), cfg.eval.batch_size, cfg.graph.ease_lambda_search_max_items)
    e_train = torch.from_numpy(np.asarray(x_train @ ease.weights, dtype=np.float32))
    times["EASE"] = time.perf_counter() - started
    ease_s = {"valid": e_train, "test": e_train}
    rows.append(("EASE", f"λ {ease.lam:g}", ev(e_train, "valid"), ev(e_train, "test", "EASE")))

    started = time.perf_counter()
    model = InfiniteAE.fit(x_train)
    at = {}  # λ → (U, I) scores from the training rows

    def inf_scores(lam: float) -> torch.Tensor:
        if lam not in at:
            at[lam] = torch.from_numpy(model.score_users(users, lam).astype(np.float32))
        return at[lam]

    choice = choose_lambda(lambda lam: ev(inf_scores(lam), "valid"))
    times["∞-AE"] = time.perf_counter() - started
    inf = {"valid": inf_scores(choice.lam), "test": inf_scores(choice.lam)}
    rows.append(("∞-AE", f"λ {choice.lam:g}", choice.valid[choice.lam], ev(inf["test"], "test", "∞-AE")))

    w, valid = blend_on_valid(ev, ease_s, inf)
    rows.append(("EASE + w·∞-AE", f"w {w:g}", valid, ev(blended(ev, ease_s, inf, w, "test"), "test", "EASE + w·∞-AE")))

    # λ and w together, over the λs the walk visited (the λ best alone need not be the best beside EASE)
    joint = []
    for lam in sorted(choice.valid):
        s = {"valid": inf_scores(lam), "test": inf_scores(lam)}
        wl, vl = blend_on_valid(ev, ease_s, s)
        joint.append((vl, -abs(np.log(lam / choice.lam)), lam, wl))
    vj, _, lam_j, w_j = max(joint)
    s = {"test": inf_scores(lam_j)}
    name = "EASE + w·∞-AE (λ, w jointly)"
    rows.append((name, f"λ {lam_j:g}, w {w_j:g}", vj, ev(blended(ev, ease_s, s, w_j, "test"), "test", name)))

    # test scored from train + valid rows (the paper's protocol), at the choices above
    seen = {"EASE": torch.from_numpy(np.asarray(x_seen @ ease.weights, dtype=np.float32)),
            "∞-AE": torch.from_numpy(model.score_rows(x_seen, choice.lam).astype(np.float32))}
    zt = {k: zscore_candidates(v, ev.exclude["test"]) for k, v in seen.items()}
    seen_rows = [("EASE", ev(seen["EASE"], "test", "seen:EASE")), ("∞-AE", ev(seen["∞-AE"], "test", "seen:∞-AE")),
                 ("EASE + w·∞-AE", ev(zt["EASE"] + w * zt["∞-AE"], "test", "seen:EASE + w·∞-AE"))]

    if with_sora:
        from sora.evaluation.evaluate import rebuild_split
        from sora.model.recommender import Recommender

        rec = Recommender.load(sora_model(data, seed))
        if rebuild_split(rec, dataset).spec.seed != seed:
            raise SystemExit(f"the Sora model for split {seed} was trained on another split")
        with torch.no_grad():
            sc = torch.cat([rec.score_users(b) for b in np.array_split(users, 8)]).float()
        sora_s = {"valid": sc, "test": sc}
        rows.append(("Sora (default training)", f"head weight {rec.alpha:.3g}", ev(sc, "valid"), ev(sc, "test", "Sora")))
        ws, vs = blend_on_valid(ev, sora_s, inf)
        rows.append(("Sora + w·∞-AE", f"w {ws:g}", vs,
                     ev(blended(ev, sora_s, inf, ws, "test"), "test", "Sora + w·∞-AE")))
    return {"seed": seed, "rows": rows, "seen": seen_rows, "per_user": ev.per_user, "times": times,
            "inf_grid": choice.valid, "ease_grid": ease.valid, "num_users": split.num_users}


def pooled_bootstrap(runs: list[dict], name: str, ref: str, n: int = N_BOOT, seed: int = 0) -> dict[str, float]:
    """Ratio of pooled mean test NDCG@10, ``name`` over ``ref``, users resampled (each user's values summed
    over the seeds that test them, so a user is one unit across seeds)."""
    num_users = max(r["num_users"] for r in runs)
    a, b = np.zeros(num_users), np.zeros(num_users)
    for r in runs:
        pa, pb = r["per_user"][name], r["per_user"][ref]
        assert np.array_equal(pa["users"], pb["users"])
        a[pa["users"]] += pa["ndcg@10"]
        b[pb["users"]] += pb["ndcg@10"]
    tested = np.zeros(num_users, dtype=bool)
    for r in runs:
        tested[r["per_user"][ref]["users"]] = True
    a, b = a[tested], b[tested]
    idx = np.random.default_rng(seed).integers(0, len(a), (n, len(a)))
    ratios = a[idx].sum(1) / np.maximum(b[idx].sum(1), 1e-12)
    lo, hi = np.quantile(ratios, [0.025, 0.975])
    return {"ratio": float(a.sum() / b.sum()), "lo": float(lo), "hi": float(hi),
            "p_not_better": float((ratios <= 1.0).mean()), "users": int(len(a))}


def per_seed_bootstrap(run: dict, name: str, ref: str) -> dict[str, float]:
    pa, pb = run["per_user"][name], run["per_user"][ref]
    assert np.array_equal(pa["users"], pb["users"])
    return paired_bootstrap(pa["ndcg@10"], pb["ndcg@10"], N_BOOT)


def report(runs: list[dict], argv: list[str], started: dt.datetime, seconds: float, data: Path) -> str:
    names = [r[0] for r in runs[0]["rows"]]
    test = {n: np.array([dict((r[0], r[3]) for r in run["rows"])[n] for run in runs]) for n in names}
    valid = {n: np.array([dict((r[0], r[2]) for r in run["rows"])[n] for run in runs]) for n in names}
    choice = {n: "; ".join(dict((r[0], r[1]) for r in run["rows"])[n] for run in runs) for n in names}
    per_user_name = {n: n for n in names}
    per_user_name["Sora (default training)"] = "Sora"
    seeds = [run["seed"] for run in runs]
    cmd = "python benchmarks/infinite_ae.py " + " ".join(argv)
    lines = [BEGIN, "## ∞-AE (infinite-width autoencoder, closed form) against and beside a tuned EASE "
             "(benchmarks/infinite_ae.py)", "",
             f"- command: `{cmd.strip()}`",
             f"- date: {started:%Y-%m-%d %H:%M} UTC; machine: {machine()}; {seconds:.0f} s in all",
             f"- data: MovieLens-100K ({data}), default random split (ratings ≥ 3, 8:1:1), split seeds "
             f"{', '.join(map(str, seeds))}; every model on the same split in the same run; test NDCG@10 full "
             "ranking, train items excluded (train + valid for test); every λ and weight chosen on valid "
             "NDCG@10, test read once at that choice",
             "- ∞-AE: `sora/model/infinite_ae.py`, the NTK of a 1-hidden-layer ReLU autoencoder (the authors' W_std √2, "
             "b_std 0.1) over the users' binary training rows, α = (K + λ·tr(K)/U·I)⁻¹X, λ walked ×2 from 1 on "
             "valid; blends: both scores standardised per user over the ranked items, weight "
             f"{', '.join(f'{w:g}' for w in WEIGHTS)} (0 = the base alone)",
             f"- fit time per split (mean): EASE with its λ walk {np.mean([r['times']['EASE'] for r in runs]):.1f} s, "
             f"∞-AE with its λ walk {np.mean([r['times']['∞-AE'] for r in runs]):.1f} s (U = {runs[0]['num_users']})",
             "", "### Per split (valid / test NDCG@10)", "",
             "| split.seed | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for run in runs:
        cells = [f"{r[2]:.4f} / {r[3]:.4f} ({r[1]})" for r in run["rows"]]
        lines.append(f"| {run['seed']} | " + " | ".join(cells) + " |")
    lines += ["", "### Over the splits", "",
              "| model | valid (mean) | test (mean) | test ÷ EASE (ratio of means) | per split | "
              "pooled paired bootstrap vs EASE, 95% | P(not better) | per split 95% intervals |",
              "|---|---|---|---|---|---|---|---|"]
    ref = test["EASE"]
    for n in names:
        per = " ".join(f"×{t / e:.3f}" for t, e in zip(test[n], ref, strict=True))
        if n == "EASE":
            lines.append(f"| {n} | {valid[n].mean():.4f} | {ref.mean():.4f} | ×1 | — | — | — | — |")
            continue
        pu = per_user_name[n]
        pool = pooled_bootstrap(runs, pu, "EASE")
        ints = " ".join(f"[{b['lo']:.3f}, {b['hi']:.3f}]" for b in (per_seed_bootstrap(r, pu, "EASE") for r in runs))
        lines.append(f"| {n} | {valid[n].mean():.4f} | {test[n].mean():.4f} | ×{test[n].mean() / ref.mean():.3f} | "
                     f"{per} | ×{pool['ratio']:.3f} [{pool['lo']:.3f}, {pool['hi']:.3f}] | {pool['p_not_better']:.3f} "
                     f"| {ints} |")
    valid_gain = {n: valid[n].mean() / valid["EASE"].mean() for n in names}
    lines += ["", "Valid ÷ EASE's valid (ratio of means): "
              + ", ".join(f"{n} ×{g:.3f}" for n, g in valid_gain.items() if n != "EASE") + ".", "",
              "Choices per split: " + "; ".join(f"{n}: {choice[n]}" for n in names) + ".", "",
              "### Test scored from the training + valid rows (the ∞-AE paper's protocol), same choices", "",
              "| model | test (mean) | ÷ EASE | per split |", "|---|---|---|---|"]
    seen_names = [r[0] for r in runs[0]["seen"]]
    seen = {n: np.array([dict(run["seen"])[n] for run in runs]) for n in seen_names}
    for n in seen_names:
        lines.append(f"| {n} | {seen[n].mean():.4f} | ×{seen[n].mean() / seen['EASE'].mean():.3f} | "
                     + " ".join(f"{v:.4f}" for v in seen[n]) + " |")
    lines += ["", "∞-AE valid NDCG@10 by λ (first split): "
              + ", ".join(f"{k:g}: {v:.4f}" for k, v in sorted(runs[0]["inf_grid"].items())) + ".",
              "", "### Conclusion (written from the numbers above)", "", *conclusion(runs, valid, test), "", END]
    return "\n".join(lines)


def verdict(runs: list[dict], valid: dict[str, np.ndarray], test: dict[str, np.ndarray], name: str,
            ref: str, per_user_ref: str) -> str:
    """One sentence: does ``name`` beat ``ref`` on valid (mean, splits), and does it carry to test (pooled CI)?"""
    v, t = valid[name].mean() / valid[ref].mean(), test[name].mean() / test[ref].mean()
    above = int((valid[name] > valid[ref]).sum())
    pool = pooled_bootstrap(runs, name if name != "Sora (default training)" else "Sora", per_user_ref)
    pays = "pays on valid" if v > 1 and above > len(runs) / 2 else "does not pay on valid"
    carries = ("carries to test (the interval is above 1)" if pool["lo"] > 1 else
               "is below on test (the interval is under 1)" if pool["hi"] < 1 else
               "is not told apart from it on test (the interval holds 1)")
    return (f"- **{name}** vs {ref}: valid ×{v:.3f} (above on {above} of {len(runs)} splits): {pays}; test ×{t:.3f}, "
            f"pooled 95% [{pool['lo']:.3f}, {pool['hi']:.3f}]: it {carries}.")


def conclusion(runs: list[dict], valid: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> list[str]:
    out = [verdict(runs, valid, test, "∞-AE", "EASE", "EASE"),
           verdict(runs, valid, test, "EASE + w·∞-AE", "EASE", "EASE")]
    chose = [dict((r[0], r[1]) for r in run["rows"])["EASE + w·∞-AE"] for run in runs]
    out.append(f"- Valid gave ∞-AE a weight beside EASE on {sum(c != 'w 0' for c in chose)} of {len(runs)} splits "
               f"({', '.join(chose)}).")
    if "Sora + w·∞-AE" in valid:
        out.append(verdict(runs, valid, test, "Sora + w·∞-AE", "Sora (default training)", "Sora"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--with-sora", action="store_true",
                    help="also Sora (default training per split, trained when absent) and Sora + w·∞-AE")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="'-' prints only")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv

    torch.set_num_threads(2)
    started, t0 = dt.datetime.now(dt.UTC), time.perf_counter()
    dataset = load_dataset(movielens_100k(args.data))
    runs = []
    for seed in args.seeds:
        runs.append(one_seed(dataset, seed, args.data, args.with_sora))
        for name, chosen, valid, test in runs[-1]["rows"]:
            print(f"split {seed} {name}: {chosen}, valid {valid:.4f}, test {test:.4f}", flush=True)
    section = report(runs, argv, started, time.perf_counter() - t0, args.data)
    print(section)
    if str(args.out) != "-":
        write_section(args.out, BEGIN, END, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
