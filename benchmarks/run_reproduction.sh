#!/usr/bin/env bash
# Reproduce the committed results (issue: SST-2 and AG News side by side with the baselines). Long: ~1-2 h on 2 CPU
# cores. Model folders go to outputs/ (not committed); JSON, plots and cards to benchmarks/results/ and model_cards/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${EENET_DATA_DIR:-../shared/data}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

# 1. SST-2: full GLUE train, 1 epoch; scheduler on GLUE dev; numbers on the labelled test (recipes/presets/sst2.json).
$PY recipes/run_eenet.py recipes/presets/sst2.json

# 2. AG News: the 10,429-row train prefix minus a seeded stratified 2,000-row validation hold-out; full test
#    (recipes/presets/ag_news.json).
$PY recipes/run_eenet.py recipes/presets/ag_news.json

# 3. Wall-clock through the pipeline (fp32 and int8; bf16 autocast separately on fewer texts, as it is slow on CPUs
#    without bf16 instructions), peak memory. int8/bf16 early exit refits the scheduler bank on that precision's outputs.
$PY benchmarks/bench_pipeline.py --model_dir outputs/sst2 --dataset sst2 --data_dir "$DATA" --precisions fp32,int8 \
  --budgets 0.3,0.4,0.5,0.7 --rounds 3 --bs1_texts 300 --memory --json benchmarks/results/pipeline_sst2.json
$PY benchmarks/bench_pipeline.py --model_dir outputs/ag_news --dataset ag_news --data_dir "$DATA" --precisions fp32,int8 \
  --budgets 0.3,0.4,0.5,0.7 --rounds 2 --max_texts 2000 --bs1_texts 300 --memory --json benchmarks/results/pipeline_ag_news.json
$PY benchmarks/bench_pipeline.py --model_dir outputs/sst2 --dataset sst2 --data_dir "$DATA" --precisions fp32,bf16 \
  --rounds 1 --max_texts 320 --bs1_texts 64 --json benchmarks/results/pipeline_sst2_bf16.json
$PY benchmarks/bench_pipeline.py --model_dir outputs/ag_news --dataset ag_news --data_dir "$DATA" --precisions fp32,bf16 \
  --rounds 1 --max_texts 320 --bs1_texts 64 --json benchmarks/results/pipeline_ag_news_bf16.json
# int8, bf16 (and fp32) batched results vs each text alone
$PY benchmarks/int8_batch_parity.py --model_dir outputs/sst2 --dataset sst2 --data_dir "$DATA" \
  --precisions fp32,int8,bf16 --json benchmarks/results/int8_batch_parity_sst2.json
$PY benchmarks/int8_batch_parity.py --model_dir outputs/ag_news --dataset ag_news --data_dir "$DATA" --max_texts 2000 \
  --json benchmarks/results/int8_batch_parity_ag_news.json

# 4. Engine overhead, scheduler fit time, training step time.
$PY benchmarks/bench_early_exit.py --json benchmarks/results/early_exit_engine.json
$PY benchmarks/bench_scheduler_fit.py --json benchmarks/results/scheduler_fit.json
$PY benchmarks/bench_train_step.py --distill --json benchmarks/results/train_step.json

# 5. Model cards / plots and the README results section, regenerated from the JSON.
$PY benchmarks/make_model_cards.py
$PY benchmarks/make_readme_results.py

# 6. Budget drift validation -> test and thresholds re-matched on unlabelled traffic (needs the models of steps 1-2
#    and SST-5, and the committed eenet_seeds_<name>.json whose exact commands are inside them).
$PY benchmarks/rematch_budget.py --seeds_json benchmarks/results/eenet_seeds_sst5.json --traffic_rows 250,all
$PY benchmarks/rematch_budget.py --seeds_json benchmarks/results/eenet_seeds_ag_news.json --traffic_rows 250,all
$PY benchmarks/make_eenet_readme.py
