"""Benchmark the default training run: cold run, then an unchanged re-run, side by side.

    make bench-train DATA=../shared/datasets/petimages

Uses a fresh ZenML store under runs/bench/ (so the first run is truly cold and
your own stacks are untouched), runs `python -m pipelines.training` twice with
the same data and config, and prints: test accuracy, wall time per step and in
total, feature-extraction and training images per second, peak memory, and the
re-run's time as a fraction of the first. Figures go to runs/bench/bench_train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "runs" / "bench"


def run(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return time.perf_counter() - started


def step_times(run_name: str) -> dict[str, dict[str, object]]:
    from zenml.client import Client

    run = Client().get_pipeline_run(run_name)
    out = {}
    for name, step in run.steps.items():
        seconds = (
            (step.end_time - step.start_time).total_seconds() if step.end_time and step.start_time else 0
        )
        out[name] = {"status": str(step.status), "seconds": round(seconds, 1)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "petimages"))
    parser.add_argument("--config", default="configs/local.yaml")
    args = parser.parse_args()

    shutil.rmtree(BENCH_DIR / "zenml", ignore_errors=True)
    env = {
        **os.environ,
        "ZENML_CONFIG_PATH": str(BENCH_DIR / "zenml"),
        "ZENML_ANALYTICS_OPT_IN": "false",
        "CATSDOGS_CACHE_DIR": str(BENCH_DIR / "cache"),
    }
    os.environ.update(env)
    python = sys.executable
    subprocess.run([python, "scripts/setup_local_stack.py"], cwd=ROOT, env=env, check=True)
    train = [python, "-m", "pipelines.training", "--config", args.config, "--data", args.data]
    first = run(train, env)
    second = run(train, env)
    peak_rss_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2

    from zenml.client import Client

    runs = Client().list_pipeline_runs(sort_by="asc:created", size=10).items
    cold, warm = runs[-2], runs[-1]
    steps_cold, steps_warm = step_times(cold.name), step_times(warm.name)
    metrics = Client().get_pipeline_run(cold.id).steps["evaluate"].outputs["metrics"][0].load()
    manifest = Client().get_pipeline_run(cold.id).steps["split"].outputs["split_manifest"][0].load()
    config = json.loads(json.dumps(Client().get_pipeline_run(cold.id).config.parameters["config"]))
    n_images, n_train = len(manifest), int((manifest["split"] == "train").sum())
    extract_s = steps_cold.get("extract_features", {}).get("seconds", 0)
    train_s = steps_cold["train"]["seconds"]
    epochs = config["training"]["epochs"]
    figures = {
        "data": args.data,
        "config": args.config,
        "cpus": os.cpu_count(),
        "images": n_images,
        "test_accuracy": metrics["test_accuracy"],
        "test_images": metrics["test_images"],
        "first_run_s": round(first, 1),
        "rerun_s": round(second, 1),
        "rerun_fraction": round(second / first, 3),
        "steps_first_run": steps_cold,
        "steps_rerun": steps_warm,
        "feature_extraction_images_per_s": round(n_images / extract_s, 1) if extract_s else None,
        "training_images_per_s": round(n_train * epochs / train_s, 1) if train_s else None,
        "peak_rss_gib": round(peak_rss_gib, 2),
    }
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    (BENCH_DIR / "bench_train.json").write_text(json.dumps(figures, indent=2))
    print(f"\n{'figure':<36}{'value':>14}")
    for key in (
        "images",
        "test_accuracy",
        "first_run_s",
        "rerun_s",
        "rerun_fraction",
        "feature_extraction_images_per_s",
        "training_images_per_s",
        "peak_rss_gib",
    ):
        print(f"{key:<36}{figures[key]!s:>14}")
    print(f"\n{'step':<20}{'first run s':>14}{'re-run':>22}")
    for name, info in steps_cold.items():
        warm_info = steps_warm.get(name, {})
        print(f"{name:<20}{info['seconds']:>14}{warm_info.get('status', '-'):>22}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
