"""The committed README results section and model cards are regenerated from the committed JSON, not typed."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT

CARDS = sorted(p.parent.name for p in (ROOT / "model_cards").glob("*/results.json"))


def test_readme_results_section_matches_the_committed_json():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_readme_results.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, "README results are stale: run python benchmarks/make_readme_results.py"


@pytest.mark.parametrize("name", CARDS)
def test_committed_model_card_is_a_function_of_its_results_json(name):
    from hf_eenet.model_card import card_from_results

    folder = ROOT / "model_cards" / name
    results = json.loads((folder / "results.json").read_text())
    assert str(card_from_results(results)) == (folder / "README.md").read_text()
    # every method has one row per budget, and the card's model-index carries EENet's numbers
    assert all(len(rows) == len(results["budgets"]) for rows in results["methods"].values())


def test_budget_adherence_table_flags_eenet_outside_tolerance():
    from hf_eenet.reporting import budget_adherence_table

    row = {"accuracy": 0.9, "mean_cost": 0.5}
    results = {"budgets": [0.5, 0.25], "methods": {"EENet": [row, {"accuracy": 0.8, "mean_cost": 0.27}],
                                                   "Static": [row, {"accuracy": 0.7, "mean_cost": 0.27}]}}
    table = budget_adherence_table(results)
    assert "| 0.50 | 1.000 | 1.000 |" in table
    assert "| 0.25 | 1.080! | 1.080 |" in table  # only EENet is held to the ±3 % target
