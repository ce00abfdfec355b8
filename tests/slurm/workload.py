"""The workload of the Slurm tests: a tiny training script and its run config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cvtui.catalog import Catalog

FINAL = ("succeeded", "failed", "cancelled", "lost")

# What each run writes in its work dir: the GPUs Slurm gave it and when it held them, a metric
# file, and progress lines.
TRAIN = r"""
import json, os, sys, time
start = time.time()
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
with open("metrics.csv", "w") as f:
    f.write("step,loss\n")
    for step in range(steps):
        f.write(f"{step},{1.0 / (step + 1)}\n")
        f.flush()
        print(f"[PROGRESS:{100 * (step + 1) // steps}:step {step}]", flush=True)
        time.sleep(1)
with open("ran.json", "w") as f:
    json.dump({"cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "job": os.environ.get("SLURM_JOB_ID"),
               "gpus": os.environ.get("CVTUI_GPUS"), "start": start, "end": time.time()}, f)
"""


def write_config(directory: Path, **config: Any) -> Path:
    code = directory / "project"
    code.mkdir(exist_ok=True)
    (code / "train.py").write_text(TRAIN)
    document: dict[str, Any] = {
        "name": "sweep",
        "command": "python3 train.py {steps}",
        "params": {"steps": 3},
        "resources": {"gpus": 2, "host": "cluster"},
        "outputs": ["*.csv", "*.json"],
    }
    document.update(config)
    path = code / "run.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def runs_of(catalog: Catalog, ids: list[str]) -> list[dict[str, Any]]:
    return [catalog.get_run(run_id) or {} for run_id in ids]
