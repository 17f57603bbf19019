"""Run outputs: metrics.jsonl + metrics.csv, TensorBoard scalars, plots, table, progress.

TensorBoard layout (one for every command; `tensorboard --logdir <run_dir>/tb`):

    tb/<method>/   round/<metric>  x = round: the metrics.jsonl row (held-out metrics, the
                                   round's mean train statistics as round/train/...)
                   step/<scalar>   x = update step of that method, counted over rounds
                                   (loss and its parts, KL, clip fraction, grad norm, lr, ...)
    tb/sft/        step/sft_loss   x = SFT step (round 0, shared by every method)
    tb/<strategy>/ gee/<metric>    x = GEE round

Only process 0 writes (multi-host runs share one run directory); every other process gets
no-op writers so callers need no `if` of their own.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
from typing import Any, Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np

from abpo_jax.fileio import atomic_write_text


def is_main_process() -> bool:
    """True on JAX process 0 — the only process that writes files or prints tables."""
    return jax.process_index() == 0


def progress(iterable: Iterable, desc: str, total: int | None = None,
             enabled: bool = True, stream: Any = None) -> Iterator:
    """tqdm bar on the main process when stderr is a terminal; when it is not (a log file, a
    `tee`), one plain line per quarter of a long loop instead of carriage-return redraws; a
    plain iterator elsewhere or when disabled."""
    if not (enabled and is_main_process()):
        return iter(iterable)
    stream = sys.stderr if stream is None else stream
    if not getattr(stream, "isatty", lambda: False)():
        return _quarter_lines(iterable, desc, total, stream)
    from tqdm.auto import tqdm
    return iter(tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True,
                     file=stream))


PROGRESS_LINES_FROM = 20   # loops shorter than this print no progress lines (they are quick)


def _quarter_lines(iterable: Iterable, desc: str, total: int | None, stream: Any) -> Iterator:
    """Yield from `iterable`, writing `desc: 25% (n/total)` at each quarter of `total`."""
    if total is None:
        total = len(iterable) if hasattr(iterable, "__len__") else 0
    marks = ({(total * q + 3) // 4: q * 25 for q in (1, 2, 3, 4)}
             if total >= PROGRESS_LINES_FROM else {})
    for n, item in enumerate(iterable, 1):
        yield item
        if n in marks:
            print(f"{desc}: {marks[n]}% ({n}/{total})", file=stream, flush=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic, jax.Array)):
        value = np.asarray(value).item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


def _row_key(row: Mapping[str, Any]) -> tuple:
    return (row.get("round"), str(row.get("method")))


class MetricsWriter:
    """One JSON object per (round, method) in `metrics.jsonl` (and a row of `metrics.csv`),
    mirrored to TensorBoard (`tb/<method>/round/...`); per-step scalars go to TensorBoard only
    (`step_scalars`). Rows are kept in memory, deduplicated on (round, method) (a resumed run
    replaces a row, never doubles it), and the whole file is rewritten atomically on every
    write, so a crash cannot tear it. `merge` puts back rows from checkpoint metadata (the run
    stores every row written so far in each checkpoint), so a deleted or damaged file is rebuilt.
    """

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True):
        self.run_dir = pathlib.Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.csv_path = self.run_dir / "metrics.csv"
        self.enabled = is_main_process()
        self.tensorboard = tensorboard and self.enabled
        self._tb: dict[str, Any] = {}
        self._rows: dict[tuple, dict] = {}
        self._dirty = False   # the file on disk is not the rows (torn, duplicated, garbage)
        if self.enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            lines = [ln for ln in self.path.read_text(errors="replace").splitlines()
                     if ln.strip()]
            for line in lines:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line torn by an older writer: rebuilt by merge
                    continue
                if isinstance(row, dict):
                    self._rows[_row_key(row)] = row
            self._dirty = len(self._rows) != len(lines)

    def rows(self) -> list[dict]:
        """All rows written so far (deduplicated on (round, method), last one wins)."""
        return sorted(self._rows.values(),
                      key=lambda r: (r.get("round") if isinstance(r.get("round"), int) else 0,
                                     str(r.get("method"))))

    def merge(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add the rows (from checkpoint metadata) the file lacks; rewrite it if any was."""
        added = False
        for row in rows:
            if isinstance(row, Mapping) and _row_key(row) not in self._rows:
                self._rows[_row_key(row)] = dict(row)
                added = True
        if added or self._dirty or (self._rows and not (self.path.is_file()
                                                         and self.csv_path.is_file())):
            self._flush()

    def write(self, row: Mapping[str, Any]) -> None:
        """Record one (round, method) row: metrics.jsonl + TensorBoard scalars at step=round."""
        row = {k: _jsonable(v) for k, v in row.items()}
        self._rows[_row_key(row)] = row
        if not self.enabled:
            return
        self._flush()
        if self.tensorboard:
            self._tb_scalars(row)

    def _flush(self) -> None:
        self._dirty = False
        if self.enabled:
            rows = self.rows()
            atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n"
                                                 for r in rows))
            atomic_write_text(self.csv_path, metrics_csv(rows))

    def _writer(self, name: str) -> Any:
        """The TensorBoard writer of `tb/<name>/` (tensorboardX: a kept library writing the
        event files; `tensorboard` reads them)."""
        if name not in self._tb:
            from tensorboardX import SummaryWriter
            self._tb[name] = SummaryWriter(str(self.run_dir / "tb" / name))
        return self._tb[name]

    def _tb_scalars(self, row: Mapping[str, Any]) -> None:
        writer = self._writer(str(row.get("method", "run")))
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and key != "round":
                writer.add_scalar(f"round/{key}", value, global_step=int(row.get("round", 0)))
        writer.flush()

    def step_scalars(self, name: str, step: int, scalars: Mapping[str, Any]) -> None:
        """Per-step training scalars to `tb/<name>/step/<key>` at `step` (TensorBoard only:
        metrics.jsonl keeps one row per round). Non-finite values are skipped."""
        if not self.tensorboard:
            return
        writer = self._writer(name)
        for key, value in scalars.items():
            value = _jsonable(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                writer.add_scalar(f"step/{key}", value, global_step=int(step))

    def flush_tensorboard(self) -> None:
        for writer in self._tb.values():
            writer.flush()

    def close(self) -> None:
        if self._dirty:
            self._flush()
        for writer in self._tb.values():
            writer.close()
        self._tb.clear()


def metrics_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as CSV: round, method, then every other key (sorted) as a column; an empty
    cell where a row lacks one (e.g. round 0 has no train statistics)."""
    import csv
    import io
    keys = sorted({k for r in rows for k in r} - {"round", "method"})
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["round", "method", *keys])
    for r in rows:
        w.writerow(["" if r.get(k) is None else r.get(k) for k in ("round", "method", *keys)])
    return out.getvalue()


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion `p` measured on `n` independent users."""
    if n <= 0:
        return (float("nan"), float("nan"))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _is_proportion(metric: str) -> bool:
    """Metrics that are a share of test users with a hit (HR@K): a binomial CI applies."""
    return metric.startswith("hr@")


def plot_metrics(rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike,
                 metrics: Sequence[str], num_test_users: int | None = None,
                 title: str = "") -> list[pathlib.Path]:
    """One PNG per metric: value vs round, one line per method; titled with `title` and the
    number of test users (one seed), a 95% Wilson band for HR@K (a share of `num_test_users`),
    and an axis that does not cut off zero. Returns the written paths."""
    if not is_main_process() or not rows:
        return []
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = sorted({str(r["method"]) for r in rows})
    paths = []
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        drew = band = False
        for method in methods:
            pts = [(r["round"], r[metric]) for r in rows
                   if str(r["method"]) == method and isinstance(r.get(metric), (int, float))]
            if pts:
                xs, ys = zip(*sorted(pts))
                line, = ax.plot(xs, ys, marker="o", label=method)
                if num_test_users and _is_proportion(metric):
                    lo, hi = zip(*(wilson_interval(y, num_test_users) for y in ys))
                    ax.fill_between(xs, lo, hi, alpha=0.15, color=line.get_color())
                    band = True
                drew = True
        if not drew:
            plt.close(fig)
            continue
        n = f"{num_test_users} test users, 1 seed" if num_test_users else "1 seed"
        ci = "; band: 95% CI over users" if band else ""
        ax.set_title(f"{title + ': ' if title else ''}{metric} per round ({n}{ci})", fontsize=9)
        paths.append(save_round_plot(fig, ax, metric, out / f"{plot_name(metric)}.png"))
    return paths


def plot_name(metric: str) -> str:
    """A file-name-safe form of a metric name (hr@5 -> hr_at_5)."""
    return metric.replace("@", "_at_").replace("/", "_")


def honest_y_axis(ax: Any) -> None:
    """No misleading cut: a metric that is never negative gets an axis from zero; one that
    takes both signs (a difference, a bias) gets a zero line."""
    ys = [y for line in ax.get_lines() for y in np.asarray(line.get_ydata(), float).ravel()
          if np.isfinite(y)]
    for coll in ax.collections:   # CI bands
        for path in coll.get_paths():
            ys += [y for y in path.vertices[:, 1] if np.isfinite(y)]
    if not ys:
        return
    if min(ys) >= 0:
        ax.set_ylim(bottom=0, top=max(ys) * 1.05 if max(ys) > 0 else 1)
    else:
        ax.axhline(0.0, color="black", linewidth=0.8, alpha=0.6)


def save_round_plot(fig: Any, ax: Any, metric: str, path: pathlib.Path) -> pathlib.Path:
    """Finish a metric-per-round figure (integer round ticks, labels, an honest y axis,
    legend, grid), save, close."""
    from matplotlib.ticker import MaxNLocator
    import matplotlib.pyplot as plt
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.set_ylabel(metric)
    honest_y_axis(ax)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Plain-text per-round table (round, method, then `columns`), numbers to 4 places."""
    header = ["round", "method", *columns]
    body = []
    for r in rows:
        cells = []
        for c in header:
            v = r.get(c)
            cells.append(f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v)))
        body.append(cells)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
              for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body])


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                title: str = "per-round metrics") -> None:
    """Print the per-round table on the main process (rich when available)."""
    if not is_main_process():
        return
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is optional at run time
        print(title)
        print(format_table(rows, columns))
        return
    table = Table(title=title)
    for c in ["round", "method", *columns]:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(*[f"{r.get(c):.4f}" if isinstance(r.get(c), float) else str(r.get(c, "-"))
                        for c in ["round", "method", *columns]])
    Console(width=200).print(table)
