"""Fine-tune a multi-exit model, fit the EENet scheduler bank and compare it with the baselines (HF style).

    python recipes/run_eenet.py --dataset sst2 --output_dir outputs/sst2 --do_train \
        --num_train_epochs 1 --per_device_train_batch_size 32 --learning_rate 5e-5

Local data: --data_dir ../shared/data (default: $EENET_DATA_DIR, else ../shared/data if present, else the Hub's
glue/sst2 and ag_news through `datasets`). Runs under `torchrun --nproc_per_node 2` (DDP, gloo on CPU) as well.
All flags: python recipes/run_eenet.py --help
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_eenet.recipe import main  # noqa: E402

if __name__ == "__main__":
    main()
