"""The committed results pages are generated, never typed: each `docs/*/results.md` must equal
`render_results` of the `study.json` beside it (regenerate with the command on the page)."""
import json
import pathlib

import pytest

from abpo_jax.study import report

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"
PAGES = sorted(DOCS.glob("*/study.json"))


@pytest.mark.parametrize("study_json", PAGES, ids=[p.parent.name for p in PAGES])
def test_results_page_is_regenerated_from_study_json(study_json):
    page = study_json.with_name("results.md")
    assert page.exists(), f"{page} missing: copy results.md from the study dir"
    assert page.read_text() == report.render_results(json.loads(study_json.read_text()))


def test_there_is_a_committed_study():
    assert PAGES, "docs/<study>/study.json + results.md from `abpo-jax study` are missing"
