"""A stand-in training run for `cvtui demo`: CSV metrics, log lines and [PROGRESS] for a while.

Standard library only; it writes metrics.csv (step, loss, acc) in its run directory and stops
early when that directory disappears (the demo removed its temporary lab).
"""

import argparse
import math
import os
import random
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=90)
    parser.add_argument("--step-s", type=float, default=1.0)
    parser.add_argument("--fail-at", type=int, default=-1, help="exit 1 at this step")
    args = parser.parse_args()
    rng = random.Random(args.seed * 1000 + int(args.lr * 1e6))  # noqa: S311 (noise, not secrets)
    run_dir = Path(os.environ.get("CVTUI_RUN_DIR", "."))
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    print(f"training lr={args.lr} seed={args.seed} on GPUs {gpus}")
    print(f"run {os.environ.get('CVTUI_RUN_ID', '?')} in {run_dir}", flush=True)
    speed = 4.0 + 60.0 * args.lr
    with open("metrics.csv", "w") as csv:
        csv.write("step,loss,acc\n")
        csv.flush()
        for step in range(1, args.steps + 1):
            if not run_dir.is_dir():
                return 0
            time.sleep(args.step_s)
            progress = step / args.steps
            loss = 2.5 * math.exp(-speed * progress) + 0.05 + rng.gauss(0, 0.03)
            acc = min(0.99, 1 - math.exp(-speed * progress * 0.8) + rng.gauss(0, 0.01))
            csv.write(f"{step},{loss:.5f},{acc:.5f}\n")
            csv.flush()
            print(f"step {step:4d}/{args.steps}  loss {loss:.4f}  acc {acc:.4f}", flush=True)
            print(f"[PROGRESS:{100 * progress:.0f}:step {step}/{args.steps}]", flush=True)
            if step == args.fail_at:
                print("RuntimeError: CUDA error: an illegal memory access (simulated)", flush=True)
                return 1
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
