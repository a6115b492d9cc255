"""Regenerate the committed model cards and plots from their ``results.json`` (never hand-typed numbers).

The recipe writes ``model_cards/<dataset>/{results.json, accuracy_vs_cost.png, README.md}`` itself; this script
rebuilds the plot and the card from the JSON alone, e.g. after a change of the card template.

    python benchmarks/make_model_cards.py [sst2 ag_news sst5]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hf_eenet.model_card import write_results_card  # noqa: E402


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="model_cards/<name> folders (default: sst2 ag_news sst5)")
    names = parser.parse_args(argv).names
    for name in names or ("sst2", "ag_news", "sst5"):
        folder = ROOT / "model_cards" / name
        path = folder / "results.json"
        if not path.exists():
            print(f"{name}: no {path.relative_to(ROOT)}, skipped")
            continue
        write_results_card(json.loads(path.read_text()), folder)
        print(f"{name}: card and plot regenerated from {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
