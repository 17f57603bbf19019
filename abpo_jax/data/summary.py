"""`abpo-jax data`: dataset statistics, split sizes, round slices and one sample prompt.

    abpo-jax data                                   # MovieLens-1M with the demo's settings
    abpo-jax data --config.data.dataset=ml-100k --config.data.show_ratings=True
    abpo-jax data --config.data.dataset=amazon2018 --config.data.path=/data/amazon2018
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import numpy as np
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from abpo_jax.data.datasets import DataError, Interactions, load_dataset
from abpo_jax.data.prompts import render_completion, render_messages
from abpo_jax.data.splits import PreparedData, build_examples, prepare_data


def _date(timestamp: int, unit: str = "s") -> str:
    """A date for seconds / milliseconds; ``order`` stamps are row positions, not times."""
    if unit == "order":
        return f"row {timestamp:,}"
    seconds = timestamp / 1000 if unit == "ms" else timestamp
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d")


def _dataset_rows(inter: Interactions) -> list[tuple[str, str]]:
    n, u, i = inter.num_interactions, inter.num_users, inter.num_items
    lengths = np.bincount(inter.user, minlength=u)
    rows = [("users", f"{u:,}"), ("items", f"{i:,}"), ("interactions", f"{n:,}"),
            ("density", f"{n / (u * i):.4%}"),
            ("mean rating", f"{inter.rating.mean():.3f}"),
            ("per user: min/median/mean/max",
             f"{lengths.min()} / {np.median(lengths):g} / {lengths.mean():.1f} / {lengths.max()}"),
            ("time span" if inter.time_unit != "order" else "order span (no timestamps)",
             f"{_date(int(inter.timestamp.min()), inter.time_unit)} .. "
             f"{_date(int(inter.timestamp.max()), inter.time_unit)}")]
    if inter.skipped:
        rows.append(("skipped malformed rows",
                     ", ".join(f"{k}: {v}" for k, v in inter.skipped.items())))
    return rows


def _slice_rows(prep: PreparedData) -> list[tuple[str, str]]:
    split = prep.split
    test_time = split.test_times()  # aligned with split.users, which is sorted
    unit = prep.interactions.time_unit

    def span(users: np.ndarray) -> str:
        if len(users) == 0:
            return "0"
        t = test_time[np.searchsorted(split.users, users)]
        return f"{len(users):,} ({_date(int(t.min()), unit)} .. {_date(int(t.max()), unit)})"

    # every interaction except the valid and test targets of evaluable users is train
    train = int(split.sequences.lengths.sum()) - 2 * len(split.users)
    rows = [("evaluable users (>= 3 items)", f"{len(split.users):,}"),
            ("train interactions (seq[:-2])", f"{train:,}"),
            ("users used (data.max_users)", f"{len(prep.ordered_users):,}"),
            ("round 0 (warm start)", span(prep.slices.warm))]
    rows += [(f"round {k} (fresh users)", span(users))
             for k, users in enumerate(prep.slices.rounds, start=1)]
    rows.append(("test users", span(prep.slices.test)))
    return rows


def _table(title: str, sections: list[tuple[str, list[tuple[str, str]]]],
           caption: str | None = None) -> Table:
    table = Table(title=title, caption=caption, show_header=False, title_justify="left",
                  caption_justify="left")
    table.add_column(no_wrap=True)
    table.add_column()
    for k, (name, rows) in enumerate(sections):
        if k:
            table.add_section()
        table.add_row(f"[bold cyan]{name}[/bold cyan]", "")
        for key, value in rows:
            table.add_row(f"  {key}", value)
    return table


def main(config: Any) -> None:
    """Print dataset statistics, split sizes, round slices and one sample prompt."""
    console = Console()
    data = config.data
    start = time.perf_counter()
    raw = load_dataset(data)
    loaded = time.perf_counter() - start
    try:
        prep = prepare_data(config, raw)
    except DataError as e:
        # Show what did load, then the one-line reason (the CLI prints DataError on stderr).
        console.print(_table(f"{raw.name} (as loaded)", [("dataset", _dataset_rows(raw))]))
        raise
    inter = prep.interactions
    filters = f"min_rating >= {data.min_rating:g}, {data.k_core}-core"
    console.print(_table(
        f"{raw.name}: loaded in {loaded:.1f} s, prepared in "
        f"{time.perf_counter() - start - loaded:.1f} s",
        [("as loaded", _dataset_rows(raw)), (f"after {filters}", _dataset_rows(inter)),
         ("leave-one-out split and rounds", _slice_rows(prep))],
        caption="round rows: users (dates of their held-out test items)"))

    example = build_examples(prep.split, prep.slices.test[:1], "test",
                             history_len=data.history_len, num_candidates=data.num_candidates,
                             num_items=inter.num_items, seed=config.seed)[0]
    style = "ids_only" if config.model.source == "tiny" else "full"
    messages = render_messages(example, inter.item_titles, prep.short_ids,
                               show_ratings=data.show_ratings and style == "full", style=style)
    console.print(f"\n[bold]Sample test prompt[/bold] (user {inter.raw_user_ids[example.user]}, "
                  f"H={data.history_len}, C={data.num_candidates}, style={style}):")
    # Text(...) so brackets in titles are not read as rich markup.
    for message in messages:
        console.print(Panel(Text(message["content"]), title=message["role"], title_align="left",
                            expand=False))
    target_title = Text(f"completion (held-out next item: {inter.item_titles[example.target]})")
    console.print(Panel(Text(render_completion(prep.short_ids[example.target])),
                        title=target_title, title_align="left", expand=False))
