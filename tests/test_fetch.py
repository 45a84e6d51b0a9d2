"""Each MovieLens format parsed from tiny files written in that format; the real offline fetch is `slow`."""

import io
import zipfile

import pytest

from sora.data.fetch import parse_ml100k_recbole, read_archive


def _zip(files: dict[str, str], encoding: str = "utf-8") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text.encode(encoding))
    return buf.getvalue()


def _check(ds, n_inter, first_title, first_categories):
    assert len(ds.interactions) == n_inter
    assert list(ds.interactions.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert ds.items.iloc[0]["title"] == first_title
    assert ds.items.iloc[0]["categories"] == first_categories
    assert ds.items.iloc[0]["year"] == "1995"
    assert isinstance(ds.interactions["user_id"].iloc[0], str)


def test_ml100k_official_format():
    flags = "|".join(["0", "0", "0", "1", "1", "1"] + ["0"] * 13)
    payload = _zip({
        "ml-100k/u.data": "196\t242\t3\t881250949\n186\t302\t3\t891717742\n",
        "ml-100k/u.item": f"1|Toy Story (1995)|01-Jan-1995||http://x|{flags}\n2|Café (1995)|01-Jan-1995||http://y|{'|'.join(['1'] + ['0'] * 18)}\n",
        "ml-100k/u.user": "196|24|M|technician|85711\n186|53|F|other|94043\n",
    }, encoding="latin-1")
    ds = read_archive("movielens-100k", payload)
    _check(ds, 2, "Toy Story (1995)", "Animation|Children's|Comedy")
    assert ds.items.iloc[1]["title"] == "Café (1995)" and ds.items.iloc[1]["categories"] == "unknown"
    assert len(ds.users) == 2


def test_ml_latest_small_format():
    payload = _zip({
        "ml-latest-small/ratings.csv": "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n",
        "ml-latest-small/movies.csv": 'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n3,"Heat, The (1995)",(no genres listed)\n',
    })
    ds = read_archive("ml-latest-small", payload)
    _check(ds, 2, "Toy Story (1995)", "Adventure|Animation")
    assert ds.items.iloc[1]["categories"] == "" and ds.interactions["rating"].iloc[1] == 4.5


def test_ml1m_format():
    payload = _zip({
        "ml-1m/ratings.dat": "1::1193::5::978300760\n1::661::3::978302109\n",
        "ml-1m/movies.dat": "1::Toy Story (1995)::Animation|Children's|Comedy\n",
        "ml-1m/users.dat": "1::F::1::10::48067\n",
    }, encoding="latin-1")
    _check(read_archive("movielens-1m", payload), 2, "Toy Story (1995)", "Animation|Children's|Comedy")


def test_recbole_atomic_format():
    files = {
        "inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n",
        "item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n1\tToy Story\t1995\tAnimation Children's Comedy\n",
        "user": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n196\t24\tM\ttechnician\t85711\n",
    }
    ds = parse_ml100k_recbole(lambda s: files[s].encode())
    _check(ds, 1, "Toy Story (1995)", "Animation|Children's|Comedy")


@pytest.mark.slow
def test_movielens_100k_offline_fetch(ml100k_dir):
    from sora.data.contract import load_dataset

    ds = load_dataset(ml100k_dir)
    assert len(ds.interactions) == 100_000
    assert ds.interactions["user_id"].nunique() == 943 and len(ds.items) == 1682
    assert ds.items.iloc[0]["title"] == "Toy Story (1995)"
