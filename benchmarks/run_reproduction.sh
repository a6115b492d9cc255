#!/usr/bin/env bash
# Reproduce every committed result that a CPU can make (SST-2, AG News and SST-5 recipes, the demo, the benchmarks,
# EENet over scheduler seeds, the re-match, cards and README sections). Long: about 3-4 h on 2 CPU cores (estimated, not timed). Model
# folders go to outputs/ (not committed); JSON, plots and cards to benchmarks/results/ and model_cards/.
# Not here: the GPU JSONs (engine_gpu_h200*.json, gpu_*.json: `bash benchmarks/gpu_run.sh` on a GPU machine) and
# baseline_midpoint_drift.json (a one-off: the cards' results as committed before midpoint thresholds vs now; after
# a reproduction the cards are computed with midpoints, so it would find no drift).
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

# 2b. SST-5 (5 classes, issue 12): full train, scheduler on the dev split, test (recipes/presets/sst5.json).
$PY recipes/run_eenet.py recipes/presets/sst5.json
# 2c. The offline demo (6,000 SST-2 training rows; outputs/demo), whose EENet-over-seeds run is in step 6.
$PY -m hf_eenet demo

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
# a float32-fitted bank served from the model loaded in bf16 / fp16 (realised cost and exits vs float32)
$PY benchmarks/precision_drift.py --model_dir outputs/sst2 --dataset sst2 --json benchmarks/results/precision_drift_sst2.json
$PY benchmarks/precision_drift.py --model_dir outputs/ag_news --dataset ag_news --json benchmarks/results/precision_drift_ag_news.json
$PY benchmarks/precision_drift.py --model_dir outputs/sst5 --dataset sst5 --json benchmarks/results/precision_drift_sst5.json

# 4. Engine overhead, scheduler fit time, training step time.
$PY benchmarks/bench_early_exit.py --repeats 10 --rounds 3 --json benchmarks/results/early_exit_engine.json
$PY benchmarks/bench_scheduler_fit.py --json benchmarks/results/scheduler_fit.json
$PY benchmarks/bench_train_step.py --distill --json benchmarks/results/train_step.json
# what a request pays for the weights check after an unrelated optimizer step (sample vs full digest)
$PY benchmarks/bench_weights_check.py --json benchmarks/results/weights_check.json
# issue 11 on the CPU: engines side by side (random MiniLM weights) and the real SST-2 model through the pipeline
$PY benchmarks/bench_engine.py --device cpu --shapes minilm_l6 --dtypes fp32 --mbs 1,32 --budgets 0.5,0.9 \
  --budgets_bs1 0.5 --n_texts 256 --n_texts_bs1 32 --repeats 3 --chunk_sizes '' --json benchmarks/results/engine_cpu.json
$PY benchmarks/bench_engine.py --pipeline --model_dir outputs/sst2 --device cpu --budgets 0.5,0.9 --mbs 1,32 \
  --n_texts_bs1 200 --repeats 5 --json benchmarks/results/engine_cpu_pipeline.json
$PY benchmarks/make_readme_engine.py
# policies on the tests' synthetic generators
$PY benchmarks/synthetic_policies.py --json benchmarks/results/synthetic_policies.json

# 5. Model cards / plots and the README results section, regenerated from the JSON.
$PY benchmarks/make_model_cards.py
$PY benchmarks/make_readme_results.py

# 6. Issue 12: EENet over 3 scheduler seeds vs every baseline (decision time in the costs), the SST-5 ablation (its
#    decision times are reused by the SST-5 main table, so both score the same costs), the synthetic generator;
#    then budget drift validation -> test and thresholds re-matched on unlabelled traffic, and SST-5 with twice the
#    labelled fitting rows.
$PY benchmarks/eenet_seeds.py --model_dir outputs/sst2 --results model_cards/sst2/results.json --name sst2 --bound
$PY benchmarks/eenet_seeds.py --model_dir outputs/ag_news --results model_cards/ag_news/results.json --name ag_news --bound
$PY benchmarks/eenet_seeds.py --model_dir outputs/sst5 --results model_cards/sst5/results.json --name sst5_ablation \
  --budgets 0.3,0.5,0.7 --ablation
$PY benchmarks/eenet_seeds.py --model_dir outputs/sst5 --results model_cards/sst5/results.json --name sst5 --bound \
  --decision_ms_from benchmarks/results/eenet_seeds_sst5_ablation.json
$PY benchmarks/eenet_seeds.py --model_dir outputs/demo --results outputs/demo/results.json --name demo
$PY benchmarks/eenet_seeds.py --synthetic agreement --budgets 0.3,0.5,0.7
$PY benchmarks/eenet_seeds.py --synthetic agreement --budgets 0.3,0.5,0.7 --ablation --name synthetic_agreement_ablation
$PY benchmarks/rematch_budget.py --seeds_json benchmarks/results/eenet_seeds_sst5.json --traffic_rows 250,all
$PY benchmarks/rematch_budget.py --seeds_json benchmarks/results/eenet_seeds_ag_news.json --traffic_rows 250,all
# does twice the labelled fitting rows (validation + the other test half) move EENet - best baseline on SST-5?
$PY benchmarks/fit_size.py --seeds_json benchmarks/results/eenet_seeds_sst5.json
$PY benchmarks/make_eenet_readme.py
