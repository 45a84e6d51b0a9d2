import pandas as pd
import pytest

from sora.data.contract import DataError, item_texts, load_dataset, timestamps_to_seconds


def test_csv_and_parquet_load_with_string_ids(tmp_path, tiny_dataset):
    for fmt in ("csv", "parquet"):
        d = tmp_path / fmt
        tiny_dataset.save(d, fmt=fmt)
        ds = load_dataset(d)
        assert len(ds.interactions) == len(tiny_dataset.interactions)
        assert ds.interactions["user_id"].map(type).eq(str).all()
        assert ds.fingerprint() == load_dataset(d).fingerprint()


def test_numeric_ids_become_strings(tmp_path):
    pd.DataFrame({"user_id": [1, 2], "item_id": [10, 20], "timestamp": [1, 2]}).to_csv(tmp_path / "interactions.csv", index=False)
    pd.DataFrame({"item_id": [10, 20], "title": ["a", "b"]}).to_parquet(tmp_path / "items.parquet")
    ds = load_dataset(tmp_path)
    assert list(ds.items["item_id"]) == ["10", "20"] and list(ds.interactions["item_id"]) == ["10", "20"]


def test_missing_table_names_the_file(tmp_path, tiny_dataset):
    tiny_dataset.save(tmp_path)
    (tmp_path / "items.parquet").unlink()
    with pytest.raises(DataError, match="items"):
        load_dataset(tmp_path)


def test_missing_column_names_file_and_column(tmp_path, tiny_dataset):
    tiny_dataset.save(tmp_path, fmt="csv")
    tiny_dataset.interactions.rename(columns={"item_id": "movie"}).to_csv(tmp_path / "interactions.csv", index=False)
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path)
    assert err.value.column == "item_id" and "interactions.csv" in str(err.value)


def test_item_text_template_joins_categories_and_skips_blanks():
    items = pd.DataFrame({"item_id": ["1", "2"], "title": ["Toy Story (1995)", "Solo"],
                          "categories": ["Animation|Comedy", None], "text": [None, "A film."]})
    texts = list(item_texts(items, "{title}. {categories}. {text}"))
    assert texts == ["Toy Story (1995). Animation, Comedy", "Solo. A film."]


def test_timestamps_unix_and_iso():
    s = timestamps_to_seconds(pd.Series(["2020-01-01T00:00:00Z", "bad", None]))
    assert s.iloc[0] == 1577836800.0 and pd.isna(s.iloc[1])
    assert timestamps_to_seconds(pd.Series([5, 6])).tolist() == [5.0, 6.0]


def test_csv_and_parquet_of_one_table_is_an_error_naming_both(tmp_path, tiny_dataset):
    tiny_dataset.save(tmp_path, fmt="csv")
    tiny_dataset.items.to_parquet(tmp_path / "items.parquet", index=False)
    with pytest.raises(DataError, match=r"items\.parquet and items\.csv"):
        load_dataset(tmp_path)


def test_write_text_atomic_replaces_whole_files(tmp_path):
    from sora.data.contract import write_text_atomic

    target = write_text_atomic(tmp_path / "sub" / "r.json", "one")
    write_text_atomic(target, "two")
    assert target.read_text() == "two" and [p.name for p in target.parent.iterdir()] == ["r.json"]
