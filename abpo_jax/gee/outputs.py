"""GEE run outputs: history JSONL, results table (text + terminal), CTR-per-round plot (PNG),
TensorBoard scalars."""

from __future__ import annotations

import json
import pathlib

from abpo_jax.gee.results import RoundResult


def pool_ctr_table(results: dict[str, list[RoundResult]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per strategy with pool CTR per round and the summary columns."""
    n_rounds = max(len(r) for r in results.values())
    header = (["strategy"] + [f"r{i}" for i in range(n_rounds)]
              + ["final expected", "items made", "malformed"])
    rows = []
    for strategy, rounds in results.items():
        recs = [r.record for r in rounds]
        exp = recs[-1]["expected_pool_ctr"]
        rows.append([strategy] + [f"{100 * r['pool_ctr']:.2f}" for r in recs]
                    + [f"{100 * exp:.2f}" if exp is not None else "-",
                       str(sum(len(r["added"]) for r in recs)),
                       str(sum(len(r["malformed"]) for r in recs))])
    return header, rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Fixed-width plain-text table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda vals: "  ".join(v.rjust(w) if i else v.ljust(w)
                                  for i, (v, w) in enumerate(zip(vals, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def plot_ctr(results: dict[str, list[RoundResult]], path: pathlib.Path) -> None:
    """PNG of pool CTR per round per strategy (solid: simulated, dotted: analytic expectation)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy, rounds in results.items():
        recs = [r.record for r in rounds]
        line, = ax.plot([r["round"] for r in recs], [100 * r["pool_ctr"] for r in recs],
                        marker="o", ms=3, label=strategy)
        exp = [(r["round"], 100 * r["expected_pool_ctr"]) for r in recs
               if r["expected_pool_ctr"] is not None]
        if exp:
            ax.plot(*zip(*exp), ls=":", color=line.get_color())
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("pool CTR (%)")
    ax.set_title("GEE: pool CTR per round (dotted: analytic expectation)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_all(run_dir: pathlib.Path, results: dict[str, list[RoundResult]], *,
              initial_malformed: list[dict], meta: dict) -> dict[str, pathlib.Path]:
    """Write history.jsonl, results.txt, summary.json and ctr_per_round.png; print the table."""
    run_dir = pathlib.Path(run_dir)
    paths = {"history": run_dir / "history.jsonl", "table": run_dir / "results.txt",
             "summary": run_dir / "summary.json", "plot": run_dir / "ctr_per_round.png"}
    with open(paths["history"], "w") as f:
        for rounds in results.values():
            for r in rounds:
                f.write(json.dumps(r.record) + "\n")
    header, rows = pool_ctr_table(results)
    text = "pool CTR (%) per round\n" + format_table(header, rows)
    paths["table"].write_text(text + "\n")
    summary = dict(meta, initial_malformed=initial_malformed,
                   final_pool_ctr={s: r[-1].record["pool_ctr"] for s, r in results.items()},
                   final_expected_pool_ctr={s: r[-1].record["expected_pool_ctr"]
                                            for s, r in results.items()})
    paths["summary"].write_text(json.dumps(summary, indent=1))
    plot_ctr(results, paths["plot"])
    write_scalars(run_dir / "tb", results)
    print(text)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return paths


def write_scalars(log_dir: pathlib.Path, results: dict[str, list[RoundResult]]) -> None:
    """TensorBoard scalars `tb/<strategy>/gee/{pool_ctr,expected_pool_ctr}` with step = round
    (the run layout of every command: abpo_jax/train/outputs.py)."""
    from tensorboardX import SummaryWriter

    for strategy, rounds in results.items():
        with SummaryWriter(str(log_dir / strategy)) as writer:
            for r in rounds:
                rec = r.record
                writer.add_scalar("gee/pool_ctr", rec["pool_ctr"], rec["round"])
                if rec["expected_pool_ctr"] is not None:
                    writer.add_scalar("gee/expected_pool_ctr", rec["expected_pool_ctr"],
                                      rec["round"])
