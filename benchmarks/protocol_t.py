"""Protocol T (next item, ``split.mode=leave-last-out``, DESIGN.md §4): Sora against the sequence baselines.

    python benchmarks/protocol_t.py [--data DIR ...] [--seeds 1 2 3] [--skip-ablations] [--threads 1]
                                    [--split-mode leave-last-out|global-temporal]

For every dataset directory (default MovieLens-100K): one split; Sora as a user gets it with
``split.mode=leave-last-out`` (causal training, everything else chosen on valid) and SASRec trained
once per seed; MostPop, EASE and recency-weighted EASE (deterministic) once. Reports mean ± std over
the seeds, a paired bootstrap over test users of Sora against the best baseline (each user's NDCG@10
averaged over the seeds first), and, on every seed, the ablations: no Transformer, no text, no
graph propagation, full Sora's weights without the item–item head, without the transition head and without
both (the network alone), and the head trained into the logits
(``train.head_in_loss``), at the temperature Sora chose; ``--ablations NAME ...`` runs a subset. Writes the
"Protocol T" section of RESULTS.md.
Nothing is chosen on test: epochs, the head's weight and decay, recency-EASE's decay all read valid.
``--split-mode global-temporal`` runs the same comparison on one global time cut (its own RESULTS section).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import DEFAULT_DATA, movielens_100k, write_section  # noqa: E402
from quality import machine, peak_rss  # noqa: E402

from sora.config import SEQUENTIAL_SPLIT_MODES, SoraConfig  # noqa: E402
from sora.data.contract import load_dataset  # noqa: E402
from sora.data.split import make_split  # noqa: E402
from sora.evaluation.evaluate import evaluate_split, model_scores, run_baselines  # noqa: E402
from sora.model.text import EmbeddingCache, embed_items, load_encoder  # noqa: E402
from sora.training.train import train_model  # noqa: E402

BEGIN, END = "<!-- protocol-t:begin -->", "<!-- protocol-t:end -->"
KEYS = ("ndcg@10", "hit@10", "mrr@10", "coverage@10", "ndcg@20")
ABLATIONS = {
    "no Transformer": ["model.use_transformer=false"],
    "no text": ["model.use_text=false"],
    "no graph propagation": ["model.num_layers=0", "graph.item_edges=none", "graph.user_edges=none"],
    # not an ablation but the other way to use the head: trained into the logits, its weight learned
    "item–item head trained in": ["train.head_in_loss=true"],
}
DETERMINISTIC = ("mostpop", "ease", "recency_ease")
#: full Sora's own weights scored without a head (``train_sora``'s result keys)
SAME_WEIGHTS = {"nohead_": "without item–item head", "notrans_": "without transition head",
                "net_": "network alone, no heads"}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 5000, seed: int = 0) -> dict[str, float]:
    """Ratio of means a/b over users resampled with replacement (paired): point, 95% interval, P(ratio ≤ 1)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (n, len(a)))
    ratios = a[idx].mean(1) / np.maximum(b[idx].mean(1), 1e-12)
    lo, hi = np.quantile(ratios, [0.025, 0.975])
    return {"ratio": float(a.mean() / max(b.mean(), 1e-12)), "lo": float(lo), "hi": float(hi),
            "p_not_better": float((ratios <= 1.0).mean())}


def train_sora(split, emb, items, cfg: SoraConfig) -> dict:
    """Train on ``split`` and score valid and test; per-user test NDCG@10 with and without the heads."""
    with peak_rss() as mem:
        res = train_model(split, emb, items, cfg, progress=True)
    rec = res.recommender
    out = {"fit_s": res.seconds, "peak_mb": mem["peak_mb"], "epoch": f"{res.best_epoch}/{len(res.history)}",
           "alpha": rec.alpha, "decay": rec.head_decay, "beta": rec.beta, "tdecay": rec.transition_decay,
           "temperature": rec.config.train.temperature, "lambda": rec.config.graph.ease_lambda}
    beta = rec.beta
    # the same weights without a head: the item–item head, the transition head, or both (the network alone);
    # (label, item–item weight: None = as chosen, transition weight)
    kept_network = rec.network_weight
    for label, alpha, pass_beta in (("", None, beta), ("nohead_", 0.0, beta), ("notrans_", None, 0.0),
                                    ("net_", 0.0, 0.0)):
        if label == "notrans_" and not beta:  # valid kept no transition head: the same scores as full Sora
            out.update({label + key: out[key] for key in ("valid", "test", "per_user")})
            continue
        rec.beta = pass_beta
        rec.network_weight = 1.0 if alpha == 0.0 else kept_network  # a model of the heads alone: its network
        per_user: dict[str, np.ndarray] = {}
        out[label + "valid"] = evaluate_split(model_scores(rec, split, "valid", alpha), split, "valid", (10,))
        out[label + "test"] = evaluate_split(model_scores(rec, split, "test", alpha), split, "test", (10, 20),
                                             per_user=per_user)
        out[label + "per_user"] = per_user["ndcg@10"]
    rec.beta, rec.network_weight = beta, kept_network
    return out


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def run_dataset(data_dir: Path, base: SoraConfig, seeds: list[int], ablations: list[str],
                mode: str = "leave-last-out", summary: dict | None = None) -> list[str]:
    """The Markdown of one dataset's comparison; ``summary``: filled with the best baseline's name, the bootstrap
    (``ratio``, ``lo``, ``hi``, ``p_not_better``) and Sora's mean ``fit_s``."""
    ds = load_dataset(data_dir)
    cfg = base.with_overrides([f"split.mode={mode}"])
    split = make_split(ds, cfg.split)
    emb, _ = embed_items(ds.items, cfg.data.item_text_template, load_encoder(cfg.text),
                         EmbeddingCache(Path.home() / ".cache/sora/embeddings"))
    runs: dict[str, list[dict]] = {"sora": [], "sasrec": []}
    per_user: dict[str, list[np.ndarray]] = {"sora": [], "sasrec": []}
    base_per_user: dict[str, dict] = {}
    det = run_baselines(split, cfg, DETERMINISTIC, per_user=base_per_user)
    for seed in seeds:
        scfg = cfg.with_overrides([f"train.seed={seed}"])
        r = train_sora(split, emb, ds.items, scfg)
        runs["sora"].append(r)
        per_user["sora"].append(r["per_user"])
        print(f"{data_dir.name} seed {seed} sora: valid {r['valid']['ndcg@10']:.4f} test {r['test']['ndcg@10']:.4f}",
              flush=True)
        pu: dict[str, dict] = {}
        m = run_baselines(split, scfg, ("sasrec",), per_user=pu)["sasrec"]
        runs["sasrec"].append({"test": m, "valid": {"ndcg@10": m["valid_ndcg@10"]}, "fit_s": m["fit_seconds"],
                               "epoch": f"{m['best_epoch']}/{m['epochs_run']}"})
        per_user["sasrec"].append(pu["sasrec"]["ndcg@10"])
        print(f"{data_dir.name} seed {seed} sasrec: test {m['ndcg@10']:.4f}", flush=True)
    rows = []

    def row(name: str, tests: list[dict], valids: list[float], chosen: str, fit_s: float) -> None:
        rows.append([name, *(mean_std([t[k] for t in tests]) for k in KEYS), mean_std(valids), chosen, f"{fit_s:.0f}"])

    s = runs["sora"]
    row("**sora**", [r["test"] for r in s], [r["valid"]["ndcg@10"] for r in s],
        "; ".join(f"temperature {r['temperature']:g}, epoch {r['epoch']}, head weight {r['alpha']:.3g}, "
                  f"decay {r['decay']:g}" + (f", λ {r['lambda']:g}" if r["lambda"] is not None else "")
                  + (f", transitions {r['beta']:.3g} at decay {r['tdecay']:g}" if r["beta"] else "") for r in s),
        np.mean([r["fit_s"] for r in s]))
    for key, name in SAME_WEIGHTS.items():  # a seed whose valid kept no transition head scores the same without
        row(f"sora {name} (same weights)", [r[key + "test"] for r in s], [r[key + "valid"]["ndcg@10"] for r in s],
            "", np.mean([r["fit_s"] for r in s]))
    for name, m in det.items():  # EASE and recency-EASE are skipped above graph.ease_max_items
        chosen = ", ".join(f"{k} {m[key]:g}" for k, key in (("decay", "decay"), ("λ", "lambda")) if key in m)
        row(name, [m], [m["valid_ndcg@10"]], chosen, m["fit_seconds"])
    q = runs["sasrec"]
    row("sasrec", [r["test"] for r in q], [r["valid"]["ndcg@10"] for r in q], "; ".join(f"epoch {r['epoch']}" for r in q),
        np.mean([r["fit_s"] for r in q]))
    means = {"sasrec": np.mean(per_user["sasrec"], 0), **{n: base_per_user[n]["ndcg@10"] for n in det}}
    best = max(means, key=lambda n: means[n].mean())
    sora_users = np.mean(per_user["sora"], 0)
    boot = paired_bootstrap(sora_users, means[best])
    if summary is not None:
        summary.update(boot, best=best, fit_s=float(np.mean([r["fit_s"] for r in s])))
    n_seeds = len(seeds)
    lines = [f"### {data_dir.name}: {len(ds.interactions)} interactions, {split.num_users} users, "
             f"{split.num_items} items, {split.test['u'].nunique()} test users, {len(split.test)} test targets", "",
             f"Encoder {emb.encoder_id}; train seeds {', '.join(map(str, seeds))} (Sora and SASRec: mean ± std over "
             f"{n_seeds} trainings; MostPop, EASE and recency-EASE are deterministic).", "",
             "| model | " + " | ".join(KEYS) + " | valid ndcg@10 | chosen on valid | fit_s |",
             "|" + "---|" * (len(KEYS) + 4),
             *("| " + " | ".join(r) + " |" for r in rows), "",
             f"**Sora vs the best baseline ({best})**: test NDCG@10 ×{boot['ratio']:.3f} (users' NDCG@10 averaged "
             f"over the seeds; paired bootstrap over the {len(sora_users)} test users, 5,000 resamples: 95% interval "
             f"×{boot['lo']:.3f} – ×{boot['hi']:.3f}, P(ratio ≤ 1) = {boot['p_not_better']:.3f}).",
             "Per seed, against the same seed's run of the best baseline: "
             + ", ".join(f"×{r['test']['ndcg@10'] / (q[k]['test'] if best == 'sasrec' else det[best])['ndcg@10']:.3f}"
                         for k, r in enumerate(s)) + ".", ""]
    if ablations:
        def ratio(tests: list[float], fulls: list[float]) -> str:
            per_seed = ", ".join(f"×{t / f:.3f}" for t, f in zip(tests, fulls, strict=True))
            return f"×{np.mean(tests) / np.mean(fulls):.3f} ({per_seed})"

        fulls = [r["test"]["ndcg@10"] for r in s]
        abl = [["**sora**", mean_std(fulls), mean_std([r["valid"]["ndcg@10"] for r in s]), "",
                f"{np.mean([r['fit_s'] for r in s]):.0f}"]]
        abl += [[f"{name} (same weights)", mean_std([r[key + "test"]["ndcg@10"] for r in s]),
                 mean_std([r[key + "valid"]["ndcg@10"] for r in s]),
                 ratio([r[key + "test"]["ndcg@10"] for r in s], fulls), f"{np.mean([r['fit_s'] for r in s]):.0f}"]
                for key, name in SAME_WEIGHTS.items()]
        for name in ablations:
            overrides = ABLATIONS[name]
            got = []
            for seed, full in zip(seeds, s, strict=True):  # each seed at the temperature full Sora chose on it
                fixed = [f"train.seed={seed}", "tune.grid=[]", f"train.temperature={full['temperature']}"]
                got.append(train_sora(split, emb, ds.items, cfg.with_overrides([*fixed, *overrides])))
                print(f"{data_dir.name} seed {seed} ablation {name}: test {got[-1]['test']['ndcg@10']:.4f}", flush=True)
            tests = [r["test"]["ndcg@10"] for r in got]
            abl.append([name, mean_std(tests), mean_std([r["valid"]["ndcg@10"] for r in got]), ratio(tests, fulls),
                        f"{np.mean([r['fit_s'] for r in got]):.0f}"])
        lines += [f"Ablations (seeds {', '.join(map(str, seeds))}; each trained once per seed at the temperature full "
                  "Sora chose on that seed; epochs, head weight and decay chosen on valid like Sora; "
                  f"`{'`, `'.join(' '.join(ABLATIONS[n]) for n in ablations)}`; the head trained in learns its "
                  "weight in training instead; vs full Sora: ratio of the means, "
                  "then per seed):", "",
                  "| ablation | test ndcg@10 | valid ndcg@10 | vs full Sora | fit_s |", "|---|---|---|---|---|",
                  *("| " + " | ".join(r) + " |" for r in abl), ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, nargs="+", default=[DEFAULT_DATA])
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="train.seed values (Sora and SASRec)")
    p.add_argument("--skip-ablations", action="store_true")
    p.add_argument("--ablations", nargs="+", choices=list(ABLATIONS), default=list(ABLATIONS), metavar="NAME",
                   help=f"which ablations to run (default all: {', '.join(ABLATIONS)})")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every Sora run")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--split-mode", choices=SEQUENTIAL_SPLIT_MODES, default="leave-last-out",
                   help="leave-last-out (Protocol T) or one global time cut at split.ratios' quantiles")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    movielens_100k(args.data[0])
    base = SoraConfig().with_overrides(args.set)
    started = dt.datetime.now(dt.UTC)
    cmd = "python benchmarks/protocol_t.py " + " ".join(argv if argv is not None else sys.argv[1:])
    gt = args.split_mode == "global-temporal"
    begin, end = (BEGIN.replace("protocol-t", "global-temporal"), END.replace("protocol-t", "global-temporal")) if gt \
        else (BEGIN, END)
    cut = ("one time cut for every user at the split.ratios quantiles of the timestamps "
           f"({base.split.ratios[0]:g} / {base.split.ratios[0] + base.split.ratios[1]:g}); every later event of a user "
           "with a training event is a target (valid after the first cut, test after the second)") if gt else \
        ("each user's positives in time order (ties in input-file order); users with ≥ 3 give the last to test and the "
         "second-to-last to valid")
    lines = [begin, f"## {'Global temporal cut' if gt else 'Protocol T'}: next item, {args.split_mode} "
                    "(benchmarks/protocol_t.py)", "",
             f"- command: `{cmd.strip()}` (after `make venv`)",
             f"- date: {started:%Y-%m-%d %H:%M} UTC; machine: {machine()}",
             f"- protocol (DESIGN.md §4): ratings ≥ {base.split.rating_threshold} positive; {cut}; every model reads "
             "the whole prefix (train, plus the valid items for test: Sora through `score_user_recent`); full ranking "
             "over the catalogue, prefix excluded; everything chosen on valid NDCG@10 only", ""]
    for data_dir in args.data:
        lines += run_dataset(data_dir, base, args.seeds, [] if args.skip_ablations else args.ablations, args.split_mode)
    lines.append(end)
    write_section(args.out, begin, end, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
