"""Public data sets outside MovieLens, read as distributed into the data contract (DESIGN.md §2).

``sora data fetch NAME --source PATH_OR_URL`` reads a local mirror (a directory, searched recursively,
or the archive / file as distributed: zip, tar, ``.gz``) or downloads a URL; without ``--source`` the
public default URLs below are tried. Files are found by base name, case-insensitively, with or without
``.gz`` (:mod:`sora.data.sources`). The parsers are pure functions over a ``files(name) -> bytes`` callable, like :mod:`sora.data.fetch`.

=================== ====================================== ============ ========= =====================================
name                files                                  ratings      time      item text
=================== ====================================== ============ ========= =====================================
goodbooks-10k       ratings.csv, books.csv                 1–5 as is    none      title; authors, year; top tags as
                    [book_tags.csv, tags.csv]                                     categories (shelf tags such as
                                                                                  ``to-read`` left out)
book-crossing       BX-Book-Ratings.csv, BX-Books.csv      0–10, see    none      title; author, publisher, year
                    [BX-Users.csv] (``;``, latin-1) or
                    Kaggle's Ratings.csv, Books.csv        below
anime               rating.csv, anime.csv (Kaggle)         -1, 1–10,    none      name; genres as categories; type
                                                           see below              and episodes
amazon-beauty       reviews_Beauty_5.json, meta_Beauty     1–5 as is    review    title; brand, description;
                    .json (2014 5-core; meta lines are                  day       category path as categories
                    Python literals)
amazon-video-games  Video_Games_5.json, meta_Video_Games   1–5 as is    review    as amazon-beauty
                    .json (2018 5-core, JSON lines)                     day
steam               australian_user_reviews.json,          recommend    posted    app name; genres (else tags) as
                    steam_games.json (Python literals)     5, else 1    day       categories; tags, developer
=================== ====================================== ============ ========= =====================================

Decisions, the same for every data set:

- **Ratings** stay inside validation's default ``[0, 5]`` so ``split.rating_threshold`` (3.0) means the
  same thing everywhere. Ten-point scales (Book-Crossing 1–10, anime 1–10) are halved: 0.5–5, so the
  default threshold keeps ratings of 6 and above. Steam has no rating: a review that recommends the game
  is 5, one that does not is 1 (a negative at the default threshold).
- **Implicit rows** (Book-Crossing's rating 0 = "interacted, no rating"; anime's -1 = "watched, not
  rated") are kept with rating **0.0**: no positive at the default threshold, every row a positive with
  ``split.rating_threshold=null``, explicit ratings only with a threshold of 0.5.
- **No timestamp in the source** (goodbooks-10k, Book-Crossing, anime): every row gets timestamp 0
  (1970-01-01), so the table stays valid and the absence is detectable: :func:`sora.data.contract.has_time_order` is False
  when all timestamps are equal, and Protocol T (``leave-last-out``) and the temporal splits must be
  skipped for that data (the suite does). Repeated (user, item) pairs are then one row, the last kept.
- **Steam's dates** are days ("Posted November 5, 2011."); Steam writes no year for the year it is read in,
  so a date without one takes the year after the latest year written out in the same file.
- **Rows about items the source does not describe** (Book-Crossing ISBNs missing from the books table,
  anime ids missing from anime.csv, Steam games missing from the games file) are dropped, with a log
  line: an item with neither title nor text is outside the contract. Amazon items without metadata keep
  their ASIN as title.

Two reductions, both keeping only the items someone interacted with (the catalogue is what gets ranked):
``--users N`` draws N users at random (seed 0) with all their rows, for sources of millions of ratings
(goodbooks-10k, anime); ``--core K`` then keeps users and items with at least K interactions, repeated
until stable (Book-Crossing has 270k books, more than EASE's dense limit).
"""

from __future__ import annotations

import ast
import html
import io
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sora.data.contract import DataError, Dataset, to_contract
from sora.data.sources import FileReader, first_file, open_source, optional_file, parse_file

log = logging.getLogger(__name__)

#: Timestamp of every row of a source that has none (see the module docstring).
NO_TIME = 0


# -------------------------------------------------------------------------------- shared parsing helpers

def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # the older CSV dumps (Book-Crossing) are latin-1


def _csv(data: bytes, **kw) -> pd.DataFrame:
    text = _decode(data)
    sep = ";" if ";" in text.split("\n", 1)[0] else ","
    return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, **kw)


def _columns(df: pd.DataFrame, *names: str) -> pd.DataFrame:
    missing = [n for n in names if n not in df.columns]
    if missing:
        raise ValueError(f"missing column(s) {missing}; found {list(df.columns)}")
    return df


def _records(data: bytes) -> list[dict]:
    """JSON lines, or lines of Python literals (McAuley's 2014 Amazon meta and the Steam files)."""
    out = []
    for number, line in enumerate(_decode(data).splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            try:
                out.append(ast.literal_eval(line))
            except (ValueError, SyntaxError) as exc:
                raise ValueError(f"line {number} is neither JSON nor a Python literal ({exc})") from None
    return out


def _clean(text) -> str:
    """Plain text: HTML entities decoded, tags and runs of whitespace removed."""
    if text is None or isinstance(text, float) and np.isnan(text):
        return ""
    if isinstance(text, (list, tuple)):
        text = " ".join(map(str, text))
    return " ".join(re.sub(r"<[^>]+>", " ", html.unescape(str(text))).split())


def _ten_point(raw: pd.Series, implicit: tuple[int, ...]) -> pd.Series:
    """A 1–10 scale halved into [0.5, 5]; the source's ``implicit`` codes become 0.0."""
    r = pd.to_numeric(raw, errors="raise").astype(float)
    return r.where(~r.isin(implicit), 0.0).where(r.isin(implicit), r / 2.0)


def _known_items(inter: pd.DataFrame, items: pd.DataFrame, name: str) -> pd.DataFrame:
    known = inter["item_id"].isin(set(items["item_id"]))
    if not known.all():
        log.info("%s: %d of %d rows name items the source does not describe; dropped", name,
                 int((~known).sum()), len(inter))
    return inter[known]


def _without_time(inter: pd.DataFrame) -> pd.DataFrame:
    inter = inter.drop_duplicates(["user_id", "item_id"], keep="last").copy()
    inter["timestamp"] = NO_TIME
    return inter


def _items(ids, titles, categories=None, text=None) -> pd.DataFrame:
    out = pd.DataFrame({"item_id": pd.Series(list(ids), dtype="string"), "title": [_clean(t) for t in titles]})
    if categories is not None:
        out["categories"] = list(categories)
    if text is not None:
        out["text"] = list(text)
    return out.drop_duplicates("item_id").reset_index(drop=True)


# -------------------------------------------------------------------------------- goodbooks-10k

#: Goodreads shelves that say what a reader did with a book, not what it is about.
SHELF_TAG = re.compile(r"read|own|favo|book|kindle|library|shelf|wish|buy|default|audio|borrow|^my-|[0-9]{4}")


def parse_goodbooks(files: FileReader, top_tags: int = 5) -> Dataset:
    """goodbooks-10k: ``ratings.csv`` (user_id, book_id, rating), ``books.csv``, optional tags."""
    ratings = parse_file(files, "ratings.csv", lambda b: _columns(_csv(b), "user_id", "book_id", "rating"))
    books = parse_file(files, "books.csv", lambda b: _columns(_csv(b), "book_id", "goodreads_book_id", "title",
                                                                "authors", "original_publication_year"))
    tags = optional_file(files, "tags.csv", lambda b: _columns(_csv(b), "tag_id", "tag_name"))
    book_tags = None if tags is None else optional_file(
        files, "book_tags.csv", lambda b: _columns(_csv(b), "goodreads_book_id", "tag_id", "count"))
    categories = pd.Series("", index=books["goodreads_book_id"])
    if book_tags is not None:
        bt = book_tags.merge(tags, on="tag_id")
        bt = bt[~bt["tag_name"].str.contains(SHELF_TAG)]
        bt = bt.assign(count=pd.to_numeric(bt["count"])).sort_values(["goodreads_book_id", "count"],
                                                                      ascending=[True, False], kind="stable")
        top = bt.groupby("goodreads_book_id")["tag_name"].agg(lambda s: "|".join(s.head(top_tags)))
        categories = top.reindex(categories.index).fillna("")
    years = pd.to_numeric(books["original_publication_year"], errors="coerce")
    text = [f"by {a}" + (f", first published {int(y)}" if y == y else "")
            for a, y in zip(books["authors"], years, strict=True)]
    items = _items(books["book_id"], books["title"], categories.to_numpy(), text)
    inter = ratings.rename(columns={"book_id": "item_id"})
    inter["rating"] = pd.to_numeric(inter["rating"]).astype(float)
    inter = _without_time(_known_items(inter, items, "goodbooks-10k"))
    return to_contract(inter, items, None)


# -------------------------------------------------------------------------------- Book-Crossing

def _bx_csv(data: bytes) -> pd.DataFrame:
    # every field quoted, ';'-separated, latin-1; quotes inside a field are escaped as \"
    return _csv(data, escapechar="\\")


def _bx_unshift(books: pd.DataFrame) -> pd.DataFrame:
    """Repair BX-Books.csv's rows whose author went into the title (``Title\\";Author\\"``): the fields after the
    title then sit one column early (the publisher under Year-Of-Publication)."""
    merged = books["Book-Title"].str.extract(r'^(.*)";(.*)"$')
    bad = merged[0].notna()
    if bad.any():
        books = books.copy()
        books.loc[bad, "Publisher"] = books.loc[bad, "Year-Of-Publication"]
        books.loc[bad, "Year-Of-Publication"] = books.loc[bad, "Book-Author"]
        books.loc[bad, "Book-Author"] = merged.loc[bad, 1]
        books.loc[bad, "Book-Title"] = merged.loc[bad, 0]
    return books


def parse_book_crossing(files: FileReader) -> Dataset:
    """Book-Crossing: ``BX-Book-Ratings.csv``, ``BX-Books.csv``, ``BX-Users.csv`` (or Kaggle's renamed copies)."""
    ratings = first_file(files, ("BX-Book-Ratings.csv", "Ratings.csv"),
                         lambda b: _columns(_bx_csv(b), "User-ID", "ISBN", "Book-Rating"))
    books = first_file(files, ("BX-Books.csv", "Books.csv"),
                       lambda b: _columns(_bx_csv(b), "ISBN", "Book-Title", "Book-Author", "Year-Of-Publication",
                                          "Publisher"))
    books = _bx_unshift(books)
    users = optional_file(files, "BX-Users.csv", lambda b: _columns(_bx_csv(b), "User-ID", "Location", "Age"))
    if users is None:
        users = optional_file(files, "Users.csv", lambda b: _columns(_bx_csv(b), "User-ID", "Location", "Age"))
    isbn = books["ISBN"].str.strip().str.upper()
    years = pd.to_numeric(books["Year-Of-Publication"], errors="coerce")
    text = [", ".join(p for p in (f"by {_clean(a)}" if _clean(a) else "", _clean(pub),
                                  str(int(y)) if y == y and y > 0 else "") if p)
            for a, pub, y in zip(books["Book-Author"], books["Publisher"], years, strict=True)]
    items = _items(isbn, books["Book-Title"], text=text)
    inter = pd.DataFrame({"user_id": ratings["User-ID"].str.strip(), "item_id": ratings["ISBN"].str.strip().str.upper(),
                          "rating": _ten_point(ratings["Book-Rating"], implicit=(0,))})
    inter = _without_time(_known_items(inter, items, "book-crossing"))
    if users is not None:
        users = pd.DataFrame({"user_id": users["User-ID"].str.strip(), "location": users["Location"],
                              "age": pd.to_numeric(users["Age"], errors="coerce")})
    return to_contract(inter, items, users)


# -------------------------------------------------------------------------------- anime (Kaggle)

def parse_anime(files: FileReader) -> Dataset:
    """Kaggle's anime-recommendations: ``rating.csv`` (-1 = watched, not rated) and ``anime.csv``."""
    ratings = parse_file(files, "rating.csv", lambda b: _columns(_csv(b), "user_id", "anime_id", "rating"))
    anime = parse_file(files, "anime.csv", lambda b: _columns(_csv(b), "anime_id", "name", "genre", "type",
                                                               "episodes"))
    genres = anime["genre"].map(lambda g: "|".join(p.strip() for p in g.split(",") if p.strip()))
    text = [", ".join(p for p in (t, f"{e} episodes" if e.isdigit() else "") if p)
            for t, e in zip(anime["type"], anime["episodes"], strict=True)]
    items = _items(anime["anime_id"], anime["name"], genres, text)
    inter = pd.DataFrame({"user_id": ratings["user_id"], "item_id": ratings["anime_id"],
                          "rating": _ten_point(ratings["rating"], implicit=(-1,))})
    inter = _without_time(_known_items(inter, items, "anime"))
    return to_contract(inter, items, None)


# -------------------------------------------------------------------------------- Amazon reviews (McAuley)

def parse_amazon(files: FileReader, reviews: str, meta: str) -> Dataset:
    """A 5-core review file (JSON lines: reviewerID, asin, overall, unixReviewTime) and its meta file."""

    def review_frame(b: bytes) -> pd.DataFrame:
        df = _columns(pd.DataFrame(_records(b)), "reviewerID", "asin", "overall", "unixReviewTime")
        return pd.DataFrame({"user_id": df["reviewerID"].astype(str), "item_id": df["asin"].astype(str),
                             "rating": pd.to_numeric(df["overall"]).astype(float),
                             "timestamp": pd.to_numeric(df["unixReviewTime"]).astype("int64")})

    def meta_frame(b: bytes) -> pd.DataFrame:
        rows = []
        for r in _records(b):
            cats = r.get("category") or r.get("categories") or []
            if cats and isinstance(cats[0], list):  # 2014: a list of category paths
                cats = cats[0]
            rows.append({"item_id": str(r["asin"]), "title": _clean(r.get("title")),
                         "categories": "|".join(_clean(c) for c in cats if _clean(c)),
                         "text": ". ".join(p for p in (_clean(r.get("brand")), _clean(r.get("description"))[:1000]) if p)})
        return pd.DataFrame(rows, columns=["item_id", "title", "categories", "text"])

    inter = parse_file(files, reviews, review_frame)
    described = parse_file(files, meta, meta_frame).drop_duplicates("item_id").set_index("item_id")
    ids = pd.unique(inter["item_id"])
    info = described.reindex(ids)
    titles = [t if isinstance(t, str) and t else asin for asin, t in zip(ids, info["title"], strict=True)]
    items = _items(ids, titles, info["categories"].fillna("").to_numpy(), info["text"].fillna("").to_numpy())
    return to_contract(inter.sort_values("timestamp", kind="stable"), items, None)


# -------------------------------------------------------------------------------- Steam (McAuley)

MONTHS = {m: k for k, m in enumerate(("january", "february", "march", "april", "may", "june", "july", "august",
                                       "september", "october", "november", "december"), 1)}
POSTED = re.compile(r"Posted\s+([A-Za-z]+)\s+(\d{1,2})(?:,\s*(\d{4}))?")


def steam_posted(posted: list[str]) -> np.ndarray:
    """'Posted November 5, 2011.' → unix seconds. Steam leaves out the year of the year it is crawled in,
    so a date without one takes the year after the latest year written out in the file."""
    parts = [POSTED.match(p) for p in posted]
    bad = [p for p, m in zip(posted, parts, strict=True) if m is None or m.group(1).lower() not in MONTHS]
    if bad:
        raise ValueError(f"{len(bad)} review date(s) not like 'Posted November 5, 2011.', e.g. {bad[0]!r}")
    years = [int(m.group(3)) for m in parts if m.group(3)]
    crawl_year = max(years) + 1 if years else 1970
    days = [pd.Timestamp(year=int(m.group(3) or crawl_year), month=MONTHS[m.group(1).lower()], day=int(m.group(2)),
                         tz="UTC") for m in parts]
    return np.array([int(d.timestamp()) for d in days], dtype=np.int64)


def parse_steam(files: FileReader) -> Dataset:
    """``australian_user_reviews.json`` (one user per line, their reviews inside) and ``steam_games.json``."""

    def review_frame(b: bytes) -> pd.DataFrame:
        rows = [(u["user_id"], r["item_id"], r["recommend"], r["posted"]) for u in _records(b) for r in u["reviews"]]
        df = pd.DataFrame(rows, columns=["user_id", "item_id", "recommend", "posted"])
        return pd.DataFrame({"user_id": df["user_id"].astype(str), "item_id": df["item_id"].astype(str),
                             "rating": np.where(df["recommend"].astype(bool), 5.0, 1.0),
                             "timestamp": steam_posted(df["posted"].tolist())})

    def game_frame(b: bytes) -> pd.DataFrame:
        rows = []
        for g in _records(b):
            if "id" not in g:  # a handful of entries describe nothing reviewable
                continue
            cats = g.get("genres") or g.get("tags") or []
            text = ", ".join(p for p in (", ".join(g.get("tags") or []),
                                         f"by {g['developer']}" if g.get("developer") else "") if p)
            rows.append({"item_id": str(g["id"]), "title": g.get("app_name") or g.get("title") or str(g["id"]),
                         "categories": "|".join(cats), "text": text})
        return pd.DataFrame(rows, columns=["item_id", "title", "categories", "text"])

    inter = parse_file(files, "australian_user_reviews.json", review_frame)
    games = parse_file(files, "steam_games.json", game_frame)
    items = _items(games["item_id"], games["title"], games["categories"], games["text"])
    inter = _known_items(inter, items, "steam").drop_duplicates(["user_id", "item_id"], keep="last")
    return to_contract(inter.sort_values("timestamp", kind="stable"), items, None)


# -------------------------------------------------------------------------------- the registry

MCAULEY = "https://datarepo.eng.ucsd.edu/mcauley_group/data/"
SNAP_AMAZON = "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"


@dataclass(frozen=True)
class SourceSpec:
    parse: Callable[[FileReader], Dataset]
    #: Public default download(s); empty where the source sits behind a login (Kaggle): --source is needed.
    urls: tuple[str, ...]
    about: str


DATASETS: dict[str, SourceSpec] = {
    "goodbooks-10k": SourceSpec(parse_goodbooks, ("https://github.com/zygmuntz/goodbooks-10k/releases/download/v1.0/"
                                                  "goodbooks-10k.zip",), "books, 6M ratings 1–5, tags as text"),
    "book-crossing": SourceSpec(parse_book_crossing, ("http://www2.informatik.uni-freiburg.de/~cziegler/BX/"
                                                      "BX-CSV-Dump.zip",), "books, 1.1M ratings 0–10 (0 implicit)"),
    "anime": SourceSpec(parse_anime, (), "anime (Kaggle anime-recommendations-database), 7.8M ratings"),
    "amazon-beauty": SourceSpec(
        lambda f: parse_amazon(f, "reviews_Beauty_5.json", "meta_Beauty.json"),
        (SNAP_AMAZON + "reviews_Beauty_5.json.gz", SNAP_AMAZON + "meta_Beauty.json.gz"),
        "Amazon Beauty 5-core (2014), 198k reviews"),
    "amazon-video-games": SourceSpec(
        lambda f: parse_amazon(f, "Video_Games_5.json", "meta_Video_Games.json"),
        (MCAULEY + "amazon_v2/categoryFilesSmall/Video_Games_5.json.gz",
         MCAULEY + "amazon_v2/metaFiles2/meta_Video_Games.json.gz"), "Amazon Video Games 5-core (2018), 497k reviews"),
    "steam": SourceSpec(parse_steam, (MCAULEY + "steam/australian_user_reviews.json.gz",
                                      MCAULEY + "steam/steam_games.json.gz"), "Steam reviews (Australian users), 59k"),
}


def fetch_dataset(name: str, sources: list[str] | None, cache_dir: Path, timeout: float = 60.0) -> tuple[Dataset, str]:
    """(dataset, where it came from) for a name of :data:`DATASETS`; ``sources`` default to its public URLs."""
    spec = DATASETS[name]
    sources = list(sources or spec.urls)
    if not sources:
        raise DataError(f"{name} has no public download URL ({spec.about}); pass the files with --source PATH")
    files = open_source(sources, cache_dir, timeout)
    try:
        dataset = spec.parse(files)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - tables that parse but do not fit together
        raise DataError(f"{files.label}: cannot parse {name} ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
                        ) from exc
    if len(dataset.interactions) == 0:
        raise DataError(f"{files.label}: no interactions left after parsing {name}")
    return dataset, files.label
