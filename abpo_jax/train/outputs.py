"""Run outputs: metrics.jsonl, TensorBoard scalars, per-round plots and table, progress bars.

Only process 0 writes (multi-host runs share one run directory); every other process gets
no-op writers so callers need no `if` of their own.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np


def is_main_process() -> bool:
    """True on JAX process 0 — the only process that writes files or prints tables."""
    return jax.process_index() == 0


def progress(iterable: Iterable, desc: str, total: int | None = None,
             enabled: bool = True) -> Iterator:
    """tqdm bar on the main process (stderr); a plain iterator elsewhere or when disabled."""
    if not (enabled and is_main_process()):
        return iter(iterable)
    from tqdm.auto import tqdm
    return iter(tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic, jax.Array)):
        value = np.asarray(value).item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `path` whole or not at all: temp file in the same directory + fsync + os.replace,
    so a kill or a full disk never leaves a torn file."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _row_key(row: Mapping[str, Any]) -> tuple:
    return (row.get("round"), str(row.get("method")))


class MetricsWriter:
    """One JSON object per (round, method) in `metrics.jsonl`, mirrored to TensorBoard
    (`tb/<method>/`). Rows are kept in memory, deduplicated on (round, method) (a resumed run
    replaces a row, never doubles it), and the whole file is rewritten atomically on every
    write, so a crash cannot tear it. `merge` puts back rows from checkpoint metadata (the run
    stores every row written so far in each checkpoint), so a deleted or damaged file is rebuilt.
    """

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True):
        self.run_dir = pathlib.Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
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
        if added or self._dirty or (self._rows and not self.path.is_file()):
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
            atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n"
                                                 for r in self.rows()))

    def _tb_scalars(self, row: Mapping[str, Any]) -> None:
        from tensorboardX import SummaryWriter
        method = str(row.get("method", "run"))
        if method not in self._tb:
            self._tb[method] = SummaryWriter(str(self.run_dir / "tb" / method))
        writer = self._tb[method]
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "round":
                writer.add_scalar(key, value, global_step=int(row.get("round", 0)))
        writer.flush()

    def close(self) -> None:
        if self._dirty:
            self._flush()
        for writer in self._tb.values():
            writer.close()
        self._tb.clear()


def plot_metrics(rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike,
                 metrics: Sequence[str]) -> list[pathlib.Path]:
    """One PNG per metric: value vs round, one line per method. Returns the written paths."""
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
        fig, ax = plt.subplots(figsize=(5, 3.5))
        drew = False
        for method in methods:
            pts = [(r["round"], r[metric]) for r in rows
                   if str(r["method"]) == method and isinstance(r.get(metric), (int, float))]
            if pts:
                xs, ys = zip(*sorted(pts))
                ax.plot(xs, ys, marker="o", label=method)
                drew = True
        if not drew:
            plt.close(fig)
            continue
        paths.append(save_round_plot(fig, ax, metric, out / f"{plot_name(metric)}.png"))
    return paths


def plot_name(metric: str) -> str:
    """A file-name-safe form of a metric name (hr@5 -> hr_at_5)."""
    return metric.replace("@", "_at_").replace("/", "_")


def save_round_plot(fig: Any, ax: Any, metric: str, path: pathlib.Path) -> pathlib.Path:
    """Finish a metric-per-round figure (integer round ticks, labels, legend, grid), save, close."""
    from matplotlib.ticker import MaxNLocator
    import matplotlib.pyplot as plt
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.set_ylabel(metric)
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
