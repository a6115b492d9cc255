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


def _card_text(results):
    from hf_eenet.model_card import card_from_results

    return str(card_from_results(results))


def test_card_says_what_was_evaluated_and_whether_a_bank_was_saved(tmp_path):
    base = json.loads((ROOT / "model_cards" / CARDS[0] / "results.json").read_text())
    text = _card_text(base)
    assert "## Results (test split, measured)" in text and "fitted EENet scheduler bank for budgets" in text
    # evaluated on validation (no labelled test split): said in the headings, the tables and the limitations
    val = dict(base, evaluated_on="validation")
    text = _card_text(val)
    assert "## Results (validation split, measured)" in text and "Per-exit validation accuracy" in text
    assert "Cells: validation accuracy %" in text and "in-sample" in text
    assert "(test split" not in text and "Per-exit test" not in text
    # no bank saved (--do_fit_scheduler false): no claim of one, and the example does not promise budget= works
    nobank = dict(base, bank_budgets=[])
    text = _card_text(nobank)
    assert "It has no scheduler bank" in text and "fitted EENet scheduler bank for budgets" not in text
    assert "no bank saved" in text
    # a bank for [0.85, 0.95]: the example asks for a budget the bank serves
    text = _card_text(dict(base, bank_budgets=[0.85, 0.95]))
    assert "budget=0.85)" in text and "ask for a budget in [0.85, 0.95]" in text
    # the full model is the last exit, not "all K layers"; layer-count costs are l_k / L
    assert f"Full model (last of {len(base['costs'])} exits)" in text
    layered = json.loads((ROOT / "model_cards" / "sst5" / "results.json").read_text())
    assert layered.get("results_with_layer_costs") and "ℓ_k / L" in _card_text(layered)
    text = _card_text(dict(layered, evaluated_on="validation"))  # the layer-cost table names the split too
    assert "Cells: test accuracy" not in text and text.count("Cells: validation accuracy %") == 2
    # a run without the layer-count comparison has no such section (it described the table, then said "not measured")
    text = _card_text({k: v for k, v in layered.items() if k != "results_with_layer_costs"})
    assert "layer-count costs" not in text and "ℓ_k / L" not in text and "not measured" not in text
    assert "\n\n\n" not in text and "\n\n\n" not in _card_text(layered)  # no stray blank line either way
    assert "Budget adherence" in text and "Scheduler fit time" in text


def test_card_metadata_names_only_hub_ids_and_the_training_length_as_set(tmp_path, monkeypatch):
    base = json.loads((ROOT / "model_cards" / CARDS[0] / "results.json").read_text())
    local = tmp_path / "checkpoints" / "my-roberta"
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for name, hub in (("checkpoints/my-roberta", False), ("./ckpt", False), ("/abs/model", False),
                      ("someone/model", True)):
        res = dict(base, model_card=dict(base.get("model_card") or {}, base_model=name))
        assert ("base_model: " + name in _card_text(res)) is hub, name
    res = dict(base, training_args=dict(base["training_args"], max_steps=3), training={"train_seconds": 12.0})
    text = _card_text(res)
    assert "max_steps 3" in text and "0.2 min" in text and "epoch(s)" not in text.split("**training**")[1].split("\n")[0]


def test_budgets_that_round_alike_keep_their_own_rows_and_metric_names():
    """0.6 and 0.604 (a bank extended close to an entry): two rows, two model-index metrics, not two "0.60"."""
    from hf_eenet.reporting import budget_adherence_table

    base = json.loads((ROOT / "model_cards" / CARDS[0] / "results.json").read_text())
    i = base["budgets"].index(0.6)
    results = json.loads(json.dumps(base))
    results["budgets"] = [0.6, 0.604]
    for name, rows in results["methods"].items():
        results["methods"][name] = [rows[i], dict(rows[i], budget=0.604)]
    table = budget_adherence_table(results)
    assert "\n| 0.60 |" in table and "\n| 0.604 |" in table
    text = _card_text(results)
    assert "accuracy @ budget 0.60" in text and "accuracy @ budget 0.604" in text


def test_the_reproduction_script_runs_each_committed_cpu_benchmark_as_its_json_records():
    """benchmarks/run_reproduction.sh reproduces every committed benchmark JSON a CPU can make with the command the
    JSON records (a script that stopped at missing outputs, or ran other flags, reproduced something else); the
    recipes' presets and the demo, which write the models those benchmarks read, run before them."""
    import shlex

    script = (ROOT / "benchmarks" / "run_reproduction.sh").read_text().replace("\\\n", " ")
    runs = [shlex.split(line.replace("$PY", "python").replace('"$DATA"', "../shared/data"))
            for line in script.splitlines() if line.startswith("$PY ")]
    one_offs = {"baseline_midpoint_drift.json"}  # compares the cards as committed before a change (README says so)
    checked = 0
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        command = json.loads(path.read_text()).get("command")
        if path.name in one_offs or "--device cuda" in command:
            continue
        want = shlex.split(command.replace("../outputs/", "outputs/"))  # a few were run from beside the checkout
        assert want in runs, f"{path.name}: run_reproduction.sh does not run {command!r}"
        checked += 1
    assert checked >= 20
    first_benchmark = min(i for i, r in enumerate(runs) if r[1].startswith("benchmarks/"))
    for preset in ("sst2", "ag_news", "sst5"):
        assert runs.index(["python", "recipes/run_eenet.py", f"recipes/presets/{preset}.json"]) < first_benchmark
    assert runs.index(["python", "-m", "hf_eenet", "demo"]) < first_benchmark


def test_card_names_the_optimizer_and_schedule_the_run_used():
    base = json.loads((ROOT / "model_cards" / CARDS[0] / "results.json").read_text())
    assert "AdamW, weight decay" in _card_text(base)  # results written before optim was recorded: the default
    sgd = {**base, "training_args": {**base["training_args"], "optim": "sgd", "lr_scheduler_type": "cosine"}}
    text = _card_text(sgd)
    assert "sgd, cosine schedule, weight decay" in text and "AdamW" not in text


def test_card_dataset_type_is_a_hub_dataset_or_marked_local(tmp_path):
    """The model-index dataset type is read by the Hub as a dataset id (review 96/97): a Hub dataset's id, a local
    folder's or file's name marked local:, and results written before the recipe recorded a Hub --dataset_name keep
    the name it was given."""
    from hf_eenet.model_card import card_from_results

    results = json.loads((ROOT / "model_cards" / "sst2" / "results.json").read_text())

    def types(dataset, meta, dataset_name=None):
        card_meta = {k: v for k, v in {**results["model_card"], **meta}.items() if k in meta or k != "dataset_type"}
        res = {**results, "dataset": dataset, "model_card": card_meta,
               "recipe_args": {**results["recipe_args"], "dataset_name": dataset_name}}
        card = card_from_results(res, plot_file=None)
        return {r.dataset_type for r in card.data.eval_results}, card.data.datasets

    assert types("sst2", {"dataset_id": "glue"}) == ({"glue"}, ["glue"])
    assert types("imdb", {"dataset_id": None}) == ({"local:imdb"}, None)  # a local folder named imdb: no link
    assert types("stanfordnlp/imdb", {"dataset_id": "stanfordnlp/imdb"}, "stanfordnlp/imdb") == \
        ({"stanfordnlp/imdb"}, ["stanfordnlp/imdb"])
    # the type the recipe decided wins (review 98: a local folder given by its bare name, --dataset_name imdb)
    assert types("imdb", {"dataset_id": None, "dataset_type": "local:imdb"}, "imdb") == ({"local:imdb"}, None)
    assert types("stanfordnlp/imdb", {"dataset_id": "stanfordnlp/imdb", "dataset_type": "stanfordnlp/imdb"},
                 "stanfordnlp/imdb") == ({"stanfordnlp/imdb"}, ["stanfordnlp/imdb"])
    # results written before the recipe recorded the type: as they were written (the given --dataset_name)
    assert types("stanfordnlp/imdb", {"dataset_id": None}, "stanfordnlp/imdb") == ({"stanfordnlp/imdb"}, None)
