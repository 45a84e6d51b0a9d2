"""The public data sets of :mod:`sora.data.datasets`, each from tiny files written here in its source's real format.

Every writer produces the files as they are distributed (headers, separators, encodings, quoting quirks,
archives), with a few hand-written rows holding the quirks and generated rows around them; nothing is
downloaded and no data is committed.

Over 400 lines on purpose: each source's writer keeps its format's quirks next to the tests that read them.
"""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sora.cli import main
from sora.config import SplitConfig
from sora.data.contract import DataError, has_time_order, k_core, load_dataset
from sora.data.datasets import DATASETS, NO_TIME, steam_posted
from sora.data.fetch import SOURCES, fetch
from sora.data.sources import Files
from sora.data.split import make_split


def _pairs(n_users: int, n_items: int, per_user: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """(user, item, k-th event of that user) rows: every user rates ``per_user`` distinct items."""
    rng = np.random.default_rng(seed)
    return [(u, int(i), k) for u in range(n_users) for k, i in enumerate(rng.choice(n_items, per_user, replace=False))]


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload in files.items():
            zf.writestr(name, payload)
    return path


def write_goodbooks(root: Path, n_users: int = 12, n_items: int = 15, per_user: int = 6) -> Path:
    """goodbooks-10k's release zip (files inside a folder), the real column order; tags by goodreads id."""
    ratings = "user_id,book_id,rating\n" + "".join(f"{u + 1},{i + 1},{3 + (u + i) % 3}\n"
                                                    for u, i, _ in _pairs(n_users, n_items, per_user))
    header = ("book_id,goodreads_book_id,best_book_id,work_id,books_count,isbn,isbn13,authors,original_publication_year,"
              "original_title,title,language_code,average_rating,ratings_count,work_ratings_count,"
              "work_text_reviews_count,ratings_1,ratings_2,ratings_3,ratings_4,ratings_5,image_url,small_image_url\n")
    books = ['1,2767052,2767052,2792775,272,439023483,9.78043902348e+12,Suzanne Collins,2008.0,The Hunger Games,'
             '"The Hunger Games (The Hunger Games, #1)",eng,4.34,4780653,4942365,155254,66715,127936,560092,1481305,'
             '2706317,https://images.gr-assets.com/books/1447303603m/2767052.jpg,https://x/s.jpg\n',
             '2,3,3,4640799,491,439554934,9.78043955493e+12,"J.K. Rowling, Mary GrandPré",1997.0,'
             "Harry Potter and the Philosopher's Stone,\"Harry Potter and the Sorcerer's Stone (Harry Potter, #1)\","
             "eng,4.44,4602479,4800065,75867,75504,101676,455024,1156318,3011543,https://x/m.jpg,https://x/s.jpg\n"]
    books += [f"{b},{1000 + b},{1000 + b},{b},1,,,Author {b},,,Book {b},eng,4.0,1,1,1,0,0,0,0,1,https://x,https://x\n"
              for b in range(3, n_items + 1)]
    tags = "tag_id,tag_name\n0,-\n11305,fantasy\n11557,favorites\n30574,to-read\n33114,young-adult\n8717,currently-reading\n"
    book_tags = ("goodreads_book_id,tag_id,count\n2767052,30574,11314\n2767052,11305,3366\n2767052,33114,3146\n"
                 "2767052,8717,2000\n3,11557,10000\n3,11305,9000\n")
    return _zip(root / "goodbooks-10k.zip", {f"goodbooks-10k-master/{n}": t.encode() for n, t in (
        ("ratings.csv", ratings), ("books.csv", header + "".join(books)), ("tags.csv", tags),
        ("book_tags.csv", book_tags))})


def write_book_crossing(root: Path, n_users: int = 12, n_items: int = 15, per_user: int = 6) -> Path:
    """BX-CSV-Dump.zip: ';'-separated, every field quoted, latin-1, an escaped quote, NULL ages, unknown ISBNs."""
    isbn = ["034545104X", "0155061224", "0446520802"] + [f"{100000000 + i}X" for i in range(3, n_items)]
    rows = ['"User-ID";"ISBN";"Book-Rating"\n', '"276725";"034545104X";"0"\n', '"276726";"0155061224";"5"\n',
            '"276726";"9999999999";"8"\n']  # an ISBN missing from BX-Books.csv
    rows += [f'"{u}";"{isbn[i]}";"{6 + (u + i) % 5}"\n' for u, i, _ in _pairs(n_users, n_items, per_user)]
    books = ['"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";"Image-URL-S";"Image-URL-M";'
             '"Image-URL-L"\n',
             '"034545104X";"Flesh Tones: A Novel";"M. J. Rose";"2002";"Ballantine Books";"http://s";"http://m";"http://l"\n',
             '"0155061224";"Rites of Passage";"Judith Rae";"0";"Heinle";"http://s";"http://m";"http://l"\n',
             '"0446520802";"The Notebook \\"Deluxe\\"";"Nicholas Sparks";"1996";"Warner &amp; Sons";"http://s";'
             '"http://m";"http://l"\n',  # a quote inside a title, escaped
             # the author inside the title, every later field one column early (as in the real file)
             '"0789466953";"DK Readers: Creating the X-Men (Level 4)\\";James Buckley\\"";"2000";"DK Publishing Inc";'
             '"http://s";"http://m";"http://l"\n']
    books += [f'"{isbn[i]}";"Café Book {i}";"Author {i}";"1999";"Pub";"http://s";"http://m";"http://l"\n'
              for i in range(3, n_items)]
    users = ['"User-ID";"Location";"Age"\n', '"276725";"tyler, texas, usa";NULL\n', '"276726";"seattle, washington, usa";"18"\n']
    users += [f'"{u}";"city {u}, usa";"{20 + u}"\n' for u in range(n_users)]
    return _zip(root / "BX-CSV-Dump.zip", {name: "".join(t).encode("latin-1") for name, t in (
        ("BX-Book-Ratings.csv", rows), ("BX-Books.csv", books), ("BX-Users.csv", users))})


def write_anime(root: Path, n_users: int = 12, n_items: int = 15, per_user: int = 6) -> Path:
    """Kaggle's anime-recommendations-database: a folder with anime.csv (HTML entities, quoted genre lists) and
    rating.csv (-1 = watched, not rated)."""
    d = root / "anime-recommendations-database"
    d.mkdir()
    anime = ["anime_id,name,genre,type,episodes,rating,members\n",
             '32281,Kimi no Na wa.,"Drama, Romance, School, Supernatural",Movie,1,9.37,200630\n',
             '9253,Steins;Gate,"Sci-Fi, Thriller",TV,24,9.17,673572\n',
             "28977,Gintama&#039;,,TV,Unknown,9.25,114262\n"]
    anime += [f'{i},&quot;Show {i}&quot;,"Action, Comedy",OVA,{i},7.0,100\n' for i in range(3, n_items)]
    ids = [32281, 9253, 28977, *range(3, n_items)]
    rating = ["user_id,anime_id,rating\n", "1,32281,-1\n", "1,9253,10\n", "1,99999,8\n"]  # 99999: not in anime.csv
    rating += [f"{u + 2},{ids[i]},{6 + (u + i) % 5}\n" for u, i, _ in _pairs(n_users, n_items, per_user)]
    (d / "anime.csv").write_text("".join(anime), encoding="utf-8")
    (d / "rating.csv").write_text("".join(rating), encoding="utf-8")
    return d


def _gz_lines(path: Path, lines: list[str]) -> Path:
    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode()))
    return path


def _gz_folder(folder: Path, files: dict[str, list[str]]) -> Path:
    """``folder`` holding each file's lines gzipped, as McAuley's downloads come."""
    folder.mkdir()
    for name, lines in files.items():
        _gz_lines(folder / name, lines)
    return folder


def write_amazon_beauty(root: Path, n_users: int = 12, n_items: int = 15, per_user: int = 6) -> Path:
    """McAuley's 2014 files: reviews as JSON lines, meta as Python literal lines (a category path list)."""
    asins = ["7806397051", "B00004TMFE"] + [f"B0000{i:05d}" for i in range(2, n_items)]
    reviews = ['{"reviewerID": "A1YJEY40YUW4SE", "asin": "7806397051", "reviewerName": "Andrea", "helpful": [3, 4], '
               '"reviewText": "Very oily and creamy.", "overall": 1.0, "summary": "Don\'t waste your money", '
               '"unixReviewTime": 1391040000, "reviewTime": "01 30, 2014"}']
    reviews += [f'{{"reviewerID": "U{u}", "asin": "{asins[i]}", "overall": {4 + (u + i) % 2}.0, '
                f'"unixReviewTime": {1300000000 + u * 86400 + k * 3600}, "reviewTime": "x"}}'
                for u, i, k in _pairs(n_users, n_items, per_user)]
    meta = ["{'asin': '7806397051', 'description': 'Bright &amp; light <br/>color.', 'title': 'Stella Palette', "
            "'salesRank': {'Beauty': 401091}, 'categories': [['Beauty', 'Makeup', 'Face']], 'price': 12.99}"]
    meta += [f"{{'asin': '{a}', 'title': 'Beauty item {a}', 'categories': [['Beauty', 'Skin Care']]}}"
             for a in asins[2:]]  # B00004TMFE has no meta line: its ASIN becomes the title
    return _gz_folder(root / "amazon", {"reviews_Beauty_5.json.gz": reviews, "meta_Beauty.json.gz": meta})


def write_amazon_video_games(root: Path, n_users: int = 12, n_items: int = 15, per_user: int = 6) -> Path:
    """McAuley's 2018 files: both JSON lines; meta with category and description lists, an HTML title."""
    asins = ["0700026657"] + [f"B0{i:08d}" for i in range(1, n_items)]
    reviews = [f'{{"overall": {4 + (u + i) % 2}.0, "verified": true, "reviewTime": "10 17, 2015", '
               f'"reviewerID": "A{u}", "asin": "{asins[i]}", "reviewerName": "R", "reviewText": "ok", '
               f'"summary": "ok", "unixReviewTime": {1445040000 + u * 86400 + k * 60}}}'
               for u, i, k in _pairs(n_users, n_items, per_user)]
    meta = ['{"category": ["Video Games", "PC", "Games"], "tech1": "", "description": ["Build a city &amp; more.", '
            '"<b>Features</b>"], "fit": "", "title": "Anno 2070", "also_buy": [], "brand": "by\\n    \\n    Ubisoft", '
            '"feature": [], "rank": [], "main_cat": "Video Games", "price": "", "asin": "0700026657"}']
    meta += [f'{{"category": ["Video Games"], "description": [], "title": "Game {a}", "asin": "{a}"}}'
             for a in asins[1:]]
    return _gz_folder(root / "amazon2018", {"Video_Games_5.json.gz": reviews, "meta_Video_Games.json.gz": meta})


def write_steam(root: Path, n_users: int = 12, n_items: int = 15, per_user: int = 6) -> Path:
    """McAuley's Steam (Australian users): Python literal lines, one user with their reviews; year-less dates."""
    months = ["January", "March", "June", "November"]
    by_user: dict[int, list[str]] = {}
    for u, i, k in _pairs(n_users, n_items, per_user):
        posted = f"Posted {months[k % 4]} {1 + k}, {2011 + k % 4}." if (u + k) % 5 else f"Posted {months[k % 4]} {1 + k}."
        by_user.setdefault(u, []).append(
            f"{{'funny': '', 'posted': '{posted}', 'last_edited': '', 'item_id': '{1000 + i}', "
            f"'helpful': 'No ratings yet', 'recommend': {(u + i) % 7 != 0}, 'review': 'Fun, \"really\".'}}")
    users = [f"{{'user_id': 'player{u}', 'user_url': 'http://steamcommunity.com/id/p{u}', 'reviews': [{', '.join(r)}]}}"
             for u, r in by_user.items()]
    games = ["{'url': 'http://store.steampowered.com/app/0', 'tags': ['Indie']}"]  # no id: not an item
    games += [f"{{'publisher': 'Kotoshiro', 'genres': ['Action', 'Casual'], 'app_name': 'Game {i}', 'title': 'Game {i}', "
              f"'release_date': '2018-01-04', 'tags': ['Strategy', 'Action'], 'discount_price': 4.49, 'specs': "
              f"['Single-player'], 'price': 4.99, 'early_access': False, 'id': '{1000 + i}', 'developer': 'Dev {i}'}}"
              for i in range(n_items)]
    return _gz_folder(root / "steam", {"australian_user_reviews.json.gz": users, "steam_games.json.gz": games})


WRITERS = {"goodbooks-10k": write_goodbooks, "book-crossing": write_book_crossing, "anime": write_anime,
           "amazon-beauty": write_amazon_beauty, "amazon-video-games": write_amazon_video_games, "steam": write_steam}
TIMED = {"amazon-beauty", "amazon-video-games", "steam"}


def _fetch(name: str, tmp_path: Path, source: Path | None = None):
    return fetch(name, tmp_path / "cache", source=str(source or WRITERS[name](tmp_path)))[0]


def test_every_dataset_has_a_fixture_and_the_cli_help_names_them():
    from sora.cli.data import FETCH_NAMES

    assert set(WRITERS) == set(DATASETS)
    assert FETCH_NAMES.split(" | ") == [*SOURCES, *DATASETS]


@pytest.mark.parametrize("name", list(WRITERS))
def test_contract_types_ratings_in_range_and_time_where_the_source_has_it(name, tmp_path):
    ds = _fetch(name, tmp_path)
    inter = ds.interactions
    assert list(inter.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert inter["user_id"].dtype == "string" and ds.items["item_id"].dtype == "string"
    assert inter["rating"].between(0.0, 5.0).all()
    assert set(inter["item_id"]) <= set(ds.items["item_id"]) and ds.items["item_id"].is_unique
    assert has_time_order(inter) == (name in TIMED)
    if name not in TIMED:
        assert (inter["timestamp"] == NO_TIME).all()
        assert not inter.duplicated(["user_id", "item_id"]).any()


def test_goodbooks_tags_skip_shelves_and_titles_keep_commas(tmp_path):
    ds = _fetch("goodbooks-10k", tmp_path)
    items = ds.items.set_index("item_id")
    assert items.loc["1", "title"] == "The Hunger Games (The Hunger Games, #1)"
    assert items.loc["1", "categories"] == "fantasy|young-adult"  # to-read and currently-reading are shelves
    assert items.loc["1", "text"] == "by Suzanne Collins, first published 2008"
    assert items.loc["2", "text"] == "by J.K. Rowling, Mary GrandPré, first published 1997"
    assert items.loc["3", "categories"] == "" and items.loc["3", "text"] == "by Author 3"
    assert set(ds.interactions["rating"]) <= {3.0, 4.0, 5.0}


def test_book_crossing_halves_ratings_keeps_implicit_at_zero_and_drops_unknown_isbns(tmp_path):
    ds = _fetch("book-crossing", tmp_path)
    inter = ds.interactions.set_index(["user_id", "item_id"])["rating"]
    assert inter[("276725", "034545104X")] == 0.0  # rating 0: implicit
    assert inter[("276726", "0155061224")] == 2.5
    assert "9999999999" not in set(ds.interactions["item_id"])
    items = ds.items.set_index("item_id")
    assert items.loc["0446520802", "title"] == 'The Notebook "Deluxe"'  # the \" escape
    assert items.loc["0446520802", "text"] == "by Nicholas Sparks, Warner & Sons, 1996"
    assert items.loc["0789466953", "title"] == "DK Readers: Creating the X-Men (Level 4)"
    assert items.loc["0789466953", "text"] == "by James Buckley, DK Publishing Inc, 2000"
    assert items.loc["0155061224", "text"] == "by Judith Rae, Heinle"  # year 0 = unknown
    assert items.loc["100000003X", "title"] == "Café Book 3"  # latin-1
    users = ds.users.set_index("user_id")
    assert np.isnan(users.loc["276725", "age"]) and users.loc["276726", "age"] == 18


def test_anime_unescapes_names_and_maps_minus_one_to_implicit(tmp_path):
    ds = _fetch("anime", tmp_path)
    items = ds.items.set_index("item_id")
    assert items.loc["28977", "title"] == "Gintama'" and items.loc["3", "title"] == '"Show 3"'
    assert items.loc["9253", "title"] == "Steins;Gate"
    assert items.loc["32281", "categories"] == "Drama|Romance|School|Supernatural"
    assert items.loc["32281", "text"] == "Movie, 1 episodes" and items.loc["28977", "text"] == "TV"
    inter = ds.interactions.set_index(["user_id", "item_id"])["rating"]
    assert inter[("1", "32281")] == 0.0 and inter[("1", "9253")] == 5.0
    assert "99999" not in set(ds.interactions["item_id"])


def test_amazon_2014_meta_literals_and_missing_meta(tmp_path):
    ds = _fetch("amazon-beauty", tmp_path)
    items = ds.items.set_index("item_id")
    assert items.loc["7806397051", "title"] == "Stella Palette"
    assert items.loc["7806397051", "categories"] == "Beauty|Makeup|Face"
    assert items.loc["7806397051", "text"] == "Bright & light color."
    assert items.loc["B00004TMFE", "title"] == "B00004TMFE"  # no meta line: the ASIN
    first = ds.interactions[ds.interactions["user_id"] == "A1YJEY40YUW4SE"].iloc[0]
    assert (first["item_id"], first["rating"], first["timestamp"]) == ("7806397051", 1.0, 1391040000)
    assert ds.interactions["timestamp"].is_monotonic_increasing


def test_amazon_2018_meta_json_lists(tmp_path):
    ds = _fetch("amazon-video-games", tmp_path)
    item = ds.items.set_index("item_id").loc["0700026657"]
    assert (item["title"], item["categories"]) == ("Anno 2070", "Video Games|PC|Games")
    assert item["text"] == "by Ubisoft. Build a city & more. Features"


def test_steam_recommend_as_rating_and_year_less_dates(tmp_path):
    ds = _fetch("steam", tmp_path)
    assert set(ds.interactions["rating"]) == {1.0, 5.0}
    assert "0" not in set(ds.items["item_id"]) and len(ds.items) == 15
    assert ds.items.set_index("item_id").loc["1000", "categories"] == "Action|Casual"
    got = steam_posted(["Posted November 5, 2011.", "Posted March 3.", "Posted June 1, 2014."])
    expect = [pd.Timestamp(d, tz="UTC").timestamp() for d in ("2011-11-05", "2015-03-03", "2014-06-01")]
    assert got.tolist() == expect  # the year-less date is in the crawl year, after the latest written one
    with pytest.raises(ValueError, match="not like 'Posted November 5, 2011.'"):
        steam_posted(["Posted Smarch 3, 2011."])


def test_files_finds_gz_members_case_insensitively_and_names_what_it_has(tmp_path):
    gz = _gz_lines(tmp_path / "Data.CSV.gz", ["a"])
    files = Files([gz], "here")
    assert files("data.csv") == b"a\n"
    with pytest.raises(DataError, match=r"^here: no file other.csv \(found: data.csv, data.csv.gz\)$"):
        files("other.csv")


def test_k_core_repeats_until_stable():
    from sora.data.contract import Dataset

    inter = pd.DataFrame({"user_id": ["a", "a", "b", "b", "c"], "item_id": ["x", "y", "x", "y", "z"],
                          "rating": 5.0, "timestamp": 0})
    items = pd.DataFrame({"item_id": ["x", "y", "z", "w"], "title": ["X", "Y", "Z", "W"]})
    core = k_core(Dataset(inter, items), 2)
    assert set(core.interactions["user_id"]) == {"a", "b"} and list(core.items["item_id"]) == ["x", "y"]


# ------------------------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("name", list(WRITERS))
def test_cli_fetch_then_validate_passes(name, tmp_path, capsys):
    source = WRITERS[name](tmp_path)
    out = tmp_path / "out"
    assert main(["data", "fetch", name, "--source", str(source), "--dest", str(out), "--cache", str(tmp_path / "c")]) == 0
    printed = capsys.readouterr().out
    assert ("no timestamps in the source" in printed) == (name not in TIMED)
    assert main(["data", "validate", "--data", str(out)]) == 0
    assert load_dataset(out).interactions["rating"].between(0, 5).all()


def _error(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    return code, err.strip()


def test_missing_file_is_one_line_naming_source_and_file(tmp_path, capsys):
    source = write_anime(tmp_path)
    (source / "rating.csv").unlink()
    code, err = _error(["data", "fetch", "anime", "--source", str(source), "--dest", str(tmp_path / "o")], capsys)
    assert code == 1 and err.startswith(f"sora: data error: {source}: no file rating.csv (found: anime.csv)")


def test_malformed_file_is_one_line_naming_source_and_file(tmp_path, capsys):
    with zipfile.ZipFile(write_book_crossing(tmp_path)) as zf:
        files = {name: zf.read(name) for name in zf.namelist()}
    files["BX-Book-Ratings.csv"] = b'"User";"Book"\n"1";"2"\n'  # not the ratings' columns
    bad = _zip(tmp_path / "bad.zip", files)
    code, err = _error(["data", "fetch", "book-crossing", "--source", str(bad), "--dest", str(tmp_path / "o")], capsys)
    assert code == 1
    assert err.startswith(f"sora: data error: {bad}: cannot parse {bad}:BX-Book-Ratings.csv (ValueError: missing column")


def test_corrupt_gzip_and_broken_json_lines_are_one_line(tmp_path, capsys):
    d = write_amazon_video_games(tmp_path)
    (d / "meta_Video_Games.json.gz").write_bytes(b"not gzip")
    code, err = _error(["data", "fetch", "amazon-video-games", "--source", str(d), "--dest", str(tmp_path / "o")], capsys)
    assert code == 1 and f"cannot read {d / 'meta_Video_Games.json.gz'}" in err
    _gz_lines(d / "meta_Video_Games.json.gz", ['{"asin": "x", "title": "ok"}', "{'asin': broken"])
    code, err = _error(["data", "fetch", "amazon-video-games", "--source", str(d), "--dest", str(tmp_path / "o")], capsys)
    assert code == 1 and "meta_Video_Games.json.gz (ValueError: line 2 is neither JSON nor a Python literal" in err


def test_unknown_name_is_a_usage_error_and_missing_source_a_data_error(tmp_path, capsys):
    code, err = _error(["data", "fetch", "netflix-prize", "--dest", str(tmp_path / "o")], capsys)
    assert code == 2 and "unknown data set 'netflix-prize'; known: movielens-100k" in err and "steam" in err
    code, err = _error(["data", "fetch", "steam", "--source", str(tmp_path / "nowhere"), "--dest", str(tmp_path / "o")],
                       capsys)
    assert code == 1 and err == f"sora: data error: {tmp_path / 'nowhere'}: no such file or directory"
    code, err = _error(["data", "fetch", "anime", "--dest", str(tmp_path / "o")], capsys)
    assert code == 1 and "anime has no public download URL" in err and "--source PATH" in err
    code, err = _error(["data", "fetch", "steam", "--source", "recbole", "--dest", str(tmp_path / "o")], capsys)
    assert code == 2 and err == "sora: error: --source recbole is for MovieLens; steam takes auto, a path or a URL"


def test_movielens_from_a_local_archive(tmp_path):
    archive = _zip(tmp_path / "ml-latest-small.zip", {
        "ml-latest-small/ratings.csv": b"userId,movieId,rating,timestamp\n1,1,4.0,964982703\n",
        "ml-latest-small/movies.csv": b"movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n"})
    ds = fetch("ml-latest-small", tmp_path / "cache", source=str(archive))[0]
    assert ds.items.iloc[0]["title"] == "Toy Story (1995)" and len(ds.interactions) == 1


def test_core_option_writes_the_k_core(tmp_path, capsys):
    source = write_goodbooks(tmp_path, n_users=12, n_items=20, per_user=5)
    out = tmp_path / "out"
    assert main(["data", "fetch", "goodbooks-10k", "--source", str(source), "--dest", str(out), "--core", "3"]) == 0
    ds = load_dataset(out)
    assert ds.interactions.groupby("item_id").size().min() >= 3 and 0 < len(ds.items) < 20
    assert set(ds.items["item_id"]) == set(ds.interactions["item_id"])
    code, err = _error(["data", "fetch", "goodbooks-10k", "--source", str(source), "--dest", str(out), "--core", "50"],
                       capsys)
    assert code == 1 and err.endswith("goodbooks-10k: no interactions left in the 50-core (users and items with at "
                                      "least 50 interactions)")


def test_users_option_samples_whole_users_reproducibly(tmp_path):
    source = write_book_crossing(tmp_path, n_users=30)
    full = _fetch("book-crossing", tmp_path, source)
    outs = []
    for k in range(2):
        out = tmp_path / f"out{k}"
        assert main(["data", "fetch", "book-crossing", "--source", str(source), "--dest", str(out), "--users", "10"]) == 0
        outs.append(load_dataset(out))
    a, b = outs
    assert a.interactions["user_id"].nunique() == 10 and a.interactions.equals(b.interactions)
    per_user = full.interactions.groupby("user_id").size()
    sampled = a.interactions.groupby("user_id").size()
    assert sampled.to_dict() == per_user[sampled.index].to_dict()  # every row of a sampled user
    assert set(a.items["item_id"]) == set(a.interactions["item_id"]) and set(a.users["user_id"]) == set(
        a.interactions["user_id"])


# ------------------------------------------------------------------------------------------- too small


def test_too_small_for_a_split_names_the_minimum(tmp_path):
    ds = _fetch("goodbooks-10k", tmp_path, write_goodbooks(tmp_path, n_users=3, n_items=5, per_user=2))
    with pytest.raises(DataError, match=r"^data too small for the random split: the valid part is empty; it needs "
                                        r"at least one user with 3 positives \(rating >= 3, split.rating_threshold\); "
                                        r"the most any user has is 2$"):
        make_split(ds, SplitConfig())
    ds.interactions["rating"] = 1.0
    with pytest.raises(DataError, match="needs at least one of its positives .* and there are none"):
        make_split(ds, SplitConfig(mode="leave-last-out"))


def test_time_splits_warn_on_data_without_time(tmp_path, caplog):
    ds = _fetch("anime", tmp_path)

    def warnings(mode: str) -> list[str]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="sora.data.split"):
            make_split(ds, SplitConfig(mode=mode))
        return [r.getMessage() for r in caplog.records if r.name == "sora.data.split" and r.levelname == "WARNING"]

    assert warnings("random") == []
    assert any("leave-last-out: every timestamp is the same" in m for m in warnings("leave-last-out"))


def test_too_small_in_the_cli_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    source = write_goodbooks(tmp_path, n_users=8, n_items=6, per_user=2)
    assert main(["data", "fetch", "goodbooks-10k", "--source", str(source), "--dest", str(out)]) == 0
    capsys.readouterr()
    code, err = _error(["train", "--data", str(out), "--out", str(tmp_path / "m"), "--set", "text.model=hash:8"], capsys)
    assert code == 1 and "data too small for the random split" in err and "at least one user with 3 positives" in err



def test_url_source_is_downloaded_once_into_the_cache(tmp_path, capsys):
    archive = write_goodbooks(tmp_path)
    cache = tmp_path / "cache"
    ds, origin = fetch("goodbooks-10k", cache, source=archive.as_uri())
    assert origin == archive.as_uri() and (cache / "goodbooks-10k.zip").read_bytes() == archive.read_bytes()
    assert len(ds.items) == 15
    archive.unlink()  # the cached copy is read from now on
    assert len(fetch("goodbooks-10k", cache, source=archive.as_uri())[0].interactions) == len(ds.interactions)
    gone = (tmp_path / "gone.zip").as_uri()
    code, err = _error(["data", "fetch", "goodbooks-10k", "--source", gone, "--dest", str(tmp_path / "o"),
                        "--cache", str(cache)], capsys)
    assert code == 1 and err.startswith(f"sora: data error: could not download {gone} (URLError:")


@pytest.mark.slow
def test_suite_quick_runs_on_a_timed_and_an_untimed_dataset(tmp_path):
    import subprocess
    import sys

    dirs = []
    for name, writer in (("steam", write_steam), ("goodbooks-10k", write_goodbooks)):
        src = tmp_path / f"src-{name}"
        src.mkdir()
        dirs.append(tmp_path / name)
        assert main(["data", "fetch", name, "--source", str(writer(src, n_users=30, n_items=20, per_user=8)),
                     "--dest", str(dirs[-1])]) == 0
    out = tmp_path / "RESULTS.md"
    out.write_text("# Benchmark results\n\n<!-- other:begin -->\nkept\n<!-- other:end -->\n")
    suite = Path(__file__).resolve().parents[1] / "benchmarks" / "suite.py"
    subprocess.run([sys.executable, str(suite), "--data", *map(str, dirs), "--quick", "--out", str(out),
                    "--set", "text.model=hash:16", "--threads", "1"], check=True, capture_output=True, timeout=900)
    text = out.read_text()
    assert "<!-- other:end -->" in text and text.count("<!-- suite:begin -->") == 1
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in text.splitlines()
            if line.startswith(("| steam |", "| goodbooks-10k |"))}
    assert rows["steam"][5].split()[0] in {"mostpop", "ease", "recency_ease", "sasrec"}  # Protocol T ran
    assert rows["goodbooks-10k"][5] == "no timestamps"
    assert float(rows["goodbooks-10k"][6]) >= 0 and "--quick: a smoke run, not results" in text
