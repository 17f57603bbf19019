"""Bandit-log files: JSONL / CSV readers, `import_log` (a user's file -> a validated round of
`log_store`) and `export_log` (a committed round -> a file `import_log` reads back as is).

Importing a file whose sha256 a committed round records is refused outright. Readers never abort
on a bad line: each one is quarantined with its line number; only a file that cannot be a log at
all (no header, a header without the schema's columns, no records) is refused with one message,
and nothing is committed. A physical line is read with a bound (`ROW_SLACK` x the record bound),
so one huge line never fills memory.
"""

from __future__ import annotations

import csv
import json
import pathlib
import re
from typing import Any, Callable, Iterator

from abpo_jax.data.log_store import (MANIFEST, QUARANTINE_RAW_CHARS, ROUND_PREFIX, PathLike,
                                     Rejected, ingest, list_rounds, open_round, round_path)
from abpo_jax.fileio import sha256_file
from abpo_jax.data.logs import (CORRUPT, FIELDS, INVALID_VALUE, MAX_RECORD_BYTES, RESERVED_KEYS,
                                TOO_LARGE, WRONG_TYPE, BadRecord, LogRecord,
                                LogValidationError, decode_raw, parse_json, short_repr)

# A physical JSONL line / CSV row may exceed the record bound this much (whitespace, CSV quoting
# turns each `"` of the extras JSON into `\""`) before the reader stops buffering it.
ROW_SLACK = 4


def _bounded_lines(f: Any, limit: int) -> Iterator[tuple[bytes, int]]:
    """(line, its full size) per physical line of binary file `f`; a line longer than `limit`
    bytes comes back cut to `limit` (the rest is skipped, never held in memory)."""
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        size = len(line)
        if size > limit and not line.endswith(b"\n"):
            while chunk := f.readline(1 << 20):
                size += len(chunk)
                if chunk.endswith(b"\n"):
                    break
            line = line[:limit]
        yield line, size


def _too_large(size: int, max_record_bytes: int, raw: bytes | str) -> Rejected:
    text = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
    return Rejected(TOO_LARGE, f"{size} bytes on one row; a record may take "
                               f"logs.max_record_bytes={max_record_bytes} (x{ROW_SLACK} for "
                               "formatting)", text[:QUARANTINE_RAW_CHARS] + "...")


def read_jsonl(path: PathLike, max_record_bytes: int = MAX_RECORD_BYTES
               ) -> Iterator[tuple[str, bytes | Rejected]]:
    """(`file:line`, raw line bytes) for each non-blank line; decoding is left to validation.
    A line over `ROW_SLACK * max_record_bytes` comes as a `Rejected` (memory stays bounded)."""
    limit = ROW_SLACK * max_record_bytes
    first = True
    with open(path, "rb") as f:
        for line_no, (line, size) in enumerate(_bounded_lines(f, limit), 1):
            if size > limit:
                yield f"{path}:{line_no}", _too_large(size, max_record_bytes, line)
            elif line.strip():
                if first and line.strip().lstrip(b"\xef\xbb\xbf") == b"[":
                    # a pretty-printed JSON array: every line would be quarantined as a fragment
                    raise LogValidationError(
                        f"{path}: this is one JSON array, not JSON Lines; write one record "
                        "object per line (e.g. `jq -c '.[]' in.json > out.jsonl`)")
                first = False
                yield f"{path}:{line_no}", line


_INT = re.compile(r"[+-]?[0-9]+")   # ASCII digits only: int() also takes "1_000" and "١٢"
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|"
                    r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)


def _parse_number(kind: str, text: str) -> Any:
    """int / float from a CSV cell, or the text itself (validation then names the field)."""
    t = text.strip()
    try:
        if kind == "int" and _INT.fullmatch(t):
            return int(t)
        if kind == "float" and _FLOAT.fullmatch(t):
            return float(t)
    except ValueError:   # more digits than Python converts
        pass
    return text


def _parse_cell(kind: str, text: str) -> Any:
    """CSV text -> typed value; unparseable text is returned as is (validation names it)."""
    if kind == "str":
        return text   # kept verbatim: whitespace is part of a request id
    if kind != "int_list":
        return _parse_number(kind, text)
    t = text.strip()
    if t.startswith("["):
        try:
            return json.loads(t)
        except (ValueError, RecursionError):
            return text
    values = [_parse_number("int", x) for x in t.replace(";", " ").replace(",", " ").split()]
    return values if all(type(v) is int for v in values) else text


_NOT_STRUCTURE = re.compile(r'[^",\r\n]+')


def _skeleton(text: str) -> str:
    """`text` with every run of plain characters cut to one 'x': what decides where CSV fields
    and rows end (quotes, commas, line ends) is kept, the bulk is not."""
    return _NOT_STRUCTURE.sub("x", text)


class _CsvLines:
    """Physical lines of a binary CSV file for `csv.reader`: decoded with `surrogateescape` (an
    invalid byte becomes a marker the row check finds, not a crash of the whole file), UTF-8 BOM
    dropped; remembers the lines of the row being parsed.

    Memory stays bounded: once a line or the row being read passes `limit` bytes, the reader is
    fed only the line's skeleton, so it still finds where that row ends (a 10 MB quoted cell does
    not make the rows inside it look like records) and the row is rejected as too large.
    """

    def __init__(self, f: Any, limit: int):
        self._f = f
        self.limit = limit
        self.line_no = 0
        self.row: list[tuple[int, str, int]] = []    # (line number, text kept, full size)
        self._row_size = 0

    def __iter__(self) -> "_CsvLines":
        return self

    def __next__(self) -> str:
        raw = self._f.readline(self.limit + 1)
        if not raw:
            raise StopIteration
        self.line_no += 1
        if self.line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        text = raw.decode("utf-8", "surrogateescape")
        size = len(raw)
        if size > self.limit and not raw.endswith(b"\n"):   # an overlong line: skim the rest
            parts = [_skeleton(text)]
            while chunk := self._f.readline(1 << 20):
                size += len(chunk)
                parts.append(_skeleton(chunk.decode("utf-8", "surrogateescape")))
                if chunk.endswith(b"\n"):
                    break
            text = "".join(parts)
        self._row_size += size
        if self._row_size > self.limit:
            text = _skeleton(text)
        self.row.append((self.line_no, text[:QUARANTINE_RAW_CHARS] if self._row_size >
                         self.limit else text, size))
        return text

    def take_row(self) -> tuple[str, str, int]:
        """(position suffix 'N' or 'N-M', raw text, byte size) of the lines since the last call."""
        lines, self.row, self._row_size = self.row, [], 0
        if not lines:
            return str(self.line_no), "", 0
        first, last = lines[0][0], lines[-1][0]
        span = str(first) if first == last else f"{first}-{last}"
        return span, "".join(t for _, t, _ in lines), sum(n for _, _, n in lines)


_BAD_BYTES = re.compile("[\udc80-\udcff]")   # what surrogateescape makes of undecodable bytes


def _csv_header(reader: Any, lines: _CsvLines, path: PathLike) -> list[str]:
    """The header row, checked: refuse the file (one line) when it cannot be a log's header."""
    try:
        header = next(reader, None)
        while header == []:   # blank lines before the header
            header = next(reader, None)
    except csv.Error as e:
        raise LogValidationError(f"{path}: unreadable CSV header ({e})") from None
    lines.take_row()
    if header is None:
        raise LogValidationError(f"{path}: empty file (no CSV header, no records)")
    if _BAD_BYTES.search("".join(header)):
        raise LogValidationError(f"{path}: the CSV header is not valid UTF-8")
    header = [h.strip() for h in header]
    missing = [name for name in FIELDS if name not in header]
    if missing:
        raise LogValidationError(
            f"{path}: the CSV header lacks column(s) {', '.join(missing)} (found: "
            f"{short_repr(', '.join(header), 200)}; need {', '.join(FIELDS)})")
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise LogValidationError(f"{path}: the CSV header repeats column(s) {repeated}")
    return header


def _csv_record(header: list[str], row: list[str], raw: str) -> dict[str, Any] | Rejected:
    """One CSV row -> record dict (what the JSONL line would hold), or a `Rejected`."""
    if len(row) > len(header):
        return Rejected(CORRUPT, f"row has {len(row)} cells, the header has {len(header)}", raw)
    record: dict[str, Any] = {}
    extras: Any = None
    for name, value in zip(header, row):   # a short row: its trailing fields count as missing
        if _BAD_BYTES.search(value):
            return Rejected(CORRUPT, f"column {name!r} is not valid UTF-8 (byte "
                                     f"0x{ord(_BAD_BYTES.search(value).group()) - 0xdc00:02x})",
                            raw)
        kind = FIELDS.get(name)
        if name == "extras":
            if value.strip():
                try:
                    extras = parse_json(value)
                except BadRecord as e:
                    return Rejected(WRONG_TYPE, f"extras cell: {e.detail}", raw)
                if not isinstance(extras, dict):
                    return Rejected(WRONG_TYPE, "extras cell must be a JSON object, got "
                                                f"{type(extras).__name__}", raw)
        elif kind == "str":
            record[name] = value   # an empty cell is the empty string (export writes "" so)
        elif not value.strip():
            if kind == "int_list":
                record[name] = []   # an empty list cell is []; an empty scalar is missing
        elif kind is not None:
            record[name] = _parse_cell(kind, value)
        elif name == "schema_version":
            record[name] = _parse_number("int", value)
        else:
            record[name] = value   # unknown column: a string extra
    if extras:
        shadowed = sorted((RESERVED_KEYS | set(header)).difference({"extras"})
                          .intersection(extras))
        if shadowed:   # which value would count? refuse rather than guess
            return Rejected(INVALID_VALUE, f"extras cell sets {shadowed}, also column(s) or "
                                           "schema fields", raw)
        record.update(extras)
    return record


def read_csv(path: PathLike, max_record_bytes: int = MAX_RECORD_BYTES
             ) -> Iterator[tuple[str, dict[str, Any] | Rejected]]:
    """(`file:line`, record dict or `Rejected`) per CSV row; never aborts on a bad row.

    Lists: `[1,2]` or `1 2` / `1;2`; column `extras` may hold a JSON object; other unknown
    columns are kept as string extras. A row spanning several lines (a quoted newline) is
    `file:first-last`; one whose cell count is off there (a stray quote) is re-read line by line
    so the good rows behind a stray quote are not swallowed.
    """
    limit = ROW_SLACK * max_record_bytes
    # csv's default 128 KiB cell limit is below what our own exports write; rows past `limit`
    # are skeletons from then on (see _CsvLines), so 2x bounds a cell's text unless a skeleton
    # itself is huge (millions of quotes), which then fails that row alone.
    previous_limit = csv.field_size_limit(2 * limit)
    try:
        with open(path, "rb") as f:
            lines = _CsvLines(f, limit)
            reader = csv.reader(lines)
            header = _csv_header(reader, lines, path)
            while True:
                try:
                    row = next(reader)
                    error = None
                except StopIteration:
                    break
                except csv.Error as e:
                    row, error = None, e
                span, raw, size = lines.take_row()
                position = f"{path}:{span}"
                if size > limit:
                    yield position, _too_large(size, max_record_bytes, raw)
                elif error is not None:
                    yield position, Rejected(CORRUPT, f"unreadable CSV row ({error})", raw)
                elif row and "-" in span and len(row) != len(header):
                    yield from _reread_lines(path, header, raw, int(span.split("-")[0]))
                elif any(cell.strip() for cell in row or ()):   # skip blank lines, as JSONL
                    yield position, _csv_record(header, row, raw)
    finally:
        csv.field_size_limit(previous_limit)


def _reread_lines(path: PathLike, header: list[str], raw: str,
                  first_line: int) -> Iterator[tuple[str, dict[str, Any] | Rejected]]:
    """Parse each physical line of a broken multi-line row on its own."""
    for offset, text in enumerate(raw.splitlines(keepends=True)):
        position = f"{path}:{first_line + offset}"
        try:
            row = next(csv.reader([text]), [])
        except csv.Error as e:
            yield position, Rejected(CORRUPT, f"unreadable CSV row ({e})", text)
            continue
        if any(cell.strip() for cell in row):
            yield position, _csv_record(header, row, text)


READERS: dict[str, Callable[..., Iterator[tuple[str, Any]]]] = {
    ".jsonl": read_jsonl, ".json": read_jsonl, ".csv": read_csv}
EXPORT_SUFFIXES = (".jsonl", ".csv")


def find_import(logs_dir: PathLike, sha256: str) -> pathlib.Path | None:
    """The committed round of `logs_dir` imported from a file with this sha256, if any."""
    for path in list_rounds(logs_dir):
        try:
            if json.loads((path / MANIFEST).read_text()).get("source_sha256") == sha256:
                return path
        except (OSError, ValueError):
            continue   # a damaged manifest is `open_round`'s to report
    return None


def peek_round(path: PathLike, max_lines: int = 1000) -> int | None:
    """The `round` of the first readable record among the first `max_lines` items of a log."""
    reader = READERS.get(pathlib.Path(path).suffix.lower())
    if reader is None:
        return None
    items = reader(path)
    try:
        for _, (_, raw) in zip(range(max_lines), items):
            try:
                value = decode_raw(raw).get("round") if not isinstance(raw, Rejected) else None
            except BadRecord:
                continue
            if type(value) is int and value >= 0:
                return value
    finally:
        items.close()
    return None


def import_log(path: PathLike, logs_dir: PathLike, round_index: int, *,
               max_record_bytes: int = MAX_RECORD_BYTES, overwrite: bool = False,
               committed_dir: PathLike | None = None, **kwargs: Any) -> dict[str, Any]:
    """Validate and ingest a user's JSONL (`.jsonl`/`.json`) or CSV (`.csv`) log as a round.

    A file already imported (same sha256) into another round of `committed_dir` (default
    `logs_dir`) is refused before any work; so is each record whose request id a committed round
    holds (see `ingest`).
    """
    suffix = pathlib.Path(path).suffix.lower()
    if suffix not in READERS:
        raise ValueError(f"{path}: unknown log format {suffix!r}; use .jsonl or .csv")
    digest = sha256_file(path)
    earlier = find_import(logs_dir if committed_dir is None else committed_dir, digest)
    if earlier is not None and not (overwrite and earlier == round_path(logs_dir, round_index)):
        raise LogValidationError(
            f"{path}: this file (sha256 {digest[:12]}...) is already committed as {earlier}; "
            "importing it again would duplicate its records (to replace that round: "
            f"--config.logs.round={int(earlier.name.removeprefix(ROUND_PREFIX))} "
            "--config.logs.overwrite=True)")
    return ingest(READERS[suffix](path, max_record_bytes), logs_dir, round_index,
                  source=str(path), source_sha256=digest, overwrite=overwrite,
                  max_record_bytes=max_record_bytes, committed_dir=committed_dir, **kwargs)


def _csv_row(record: LogRecord) -> list[Any]:
    d = record.to_dict()
    cells = [" ".join(map(str, d[k])) if FIELDS[k] == "int_list" else d[k] for k in FIELDS]
    return [d["schema_version"], *cells, json.dumps(dict(record.extras)) if record.extras else ""]


def export_log(round_dir: PathLike, path: PathLike) -> int:
    """Write a committed round as JSONL or CSV (by suffix); return the record count.
    `import_log` of the file gives back the same records."""
    log = open_round(round_dir)
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise ValueError(f"{path}: unknown export format {suffix!r}; use .jsonl or .csv")
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if suffix == ".csv":
                writer.writerow(["schema_version", *FIELDS, "extras"])
            for record in log:
                if suffix == ".jsonl":
                    f.write(record.to_bytes().decode() + "\n")
                else:
                    writer.writerow(_csv_row(record))
                count += 1
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count
