"""`abpo-jax demo`: a result in about ten minutes on a CPU, in two parts.

  1. **The statistics** (`config.demo.study`): the closed-loop study (`abpo_jax/study`) on the
     tiny item-token policy, 5 seeds, printing each method's final-round metrics with 95%
     confidence intervals, which differences from `no_update` / `grpo` / `sft_positive` are
     significant, and one sentence per condition naming the methods that beat both
     `no_update` and `sft_positive` significantly.
  2. **The real LLM** (the top-level config): one short continual round of SmolLM2-135M-Instruct
     (LoRA) through the very same pipeline — SFT warm start, deploy, log, ABPO update,
     evaluate. Its slices are tiny: it shows the model running, not a result.

Given a config without a `demo` section (e.g. `--config=configs/tiny.py`) the demo is part 2
alone on that config.
"""

from __future__ import annotations

from typing import Any

from abpo_jax.config import validate


def main(config: Any) -> None:
    from abpo_jax.study import report, runner
    from abpo_jax.train import rounds

    demo = config.get("demo")
    study_cfg = demo.study if demo is not None and demo.run_study else None
    if study_cfg is not None:
        # everything of the demo under config.run_dir (`--config.run_dir=X` moves the study too)
        study_cfg.run_dir = config.run_dir
        validate(study_cfg)   # both parts' configs are checked before any work
        print("== part 1/2: closed-loop study on the tiny item-token policy "
              f"({study_cfg.study.seeds} seeds; statistics) ==", flush=True)
        study = runner.main(study_cfg)
        for line in report.beats_sentences(study):   # the demo's answer, in one sentence
            print(line)
    if demo is None or demo.run_llm:
        print(f"== part {2 if study_cfg is not None else 1}/{2 if study_cfg is not None else 1}: "
              f"{config.model.source} through the same rounds (tiny slices: shows the "
              "pipeline, not a result) ==", flush=True)
        rounds.main(config)
