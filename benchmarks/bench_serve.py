"""Serving benchmark: in-process vs TorchServe (batching on/off) vs FastAPI, one run, one machine.

    python benchmarks/bench_serve.py                      # make bench-serve
    python benchmarks/bench_serve.py --bundle runs/model.pt --requests 240
    python benchmarks/bench_serve.py --batch-delay 2      # try another maxBatchDelay

Everything is measured side by side on the same photos in the same run, so the
ratios are comparable even though absolute numbers depend on the machine. The
scenarios of one concurrency level run in interleaved rounds, so a burst of
background load hits all of them alike. The load generator runs on the same
CPUs as the servers (like a sidecar would), so absolute throughput is a lower
bound; the printed ratios are what we track. The weights do not matter for
speed, so without ``--bundle`` a randomly initialised model of the production
architecture is used: no trained model is needed.

TorchServe runs the shipped configuration (``serve_config/``): the batched model
uses ``batchSize`` / ``maxBatchDelay`` from ``model-config.yaml`` and one worker
with the derived thread count; the variants change one thing each (batching
off; two single-threaded workers).

Not a test: it prints a table and the issue's aims next to the measured ratios.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests
import torch
import yaml
from fastapi import Request

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from handlers.cpu_limit import cpu_limit  # noqa: E402
from handlers.image_classifier import ImageClassifierHandler  # noqa: E402
from handlers.image_decoding import ImageDecodeError, decode_image  # noqa: E402
from handlers.models import ModelMetadata, build_model, save_bundle  # noqa: E402
from steps import torchserve_local  # noqa: E402
from steps.packaging import MODEL_CONFIG, build_mar  # noqa: E402
from steps.torchserve_client import TorchServeClient  # noqa: E402

logger = logging.getLogger("bench_serve")
PHOTOS = Path(os.environ.get("CATSDOGS_PETIMAGES", REPO.parent / "shared" / "datasets" / "petimages"))
IN_PROCESS = "in-process (no server)"
BATCH_OFF = "TorchServe batching off"
BATCH_ON = "TorchServe batching on"
TWO_WORKERS = "TorchServe 2 workers x 1 thread"
FASTAPI = "FastAPI + uvicorn"
# A refused (503) client waits this long before its next request, as real clients back off.
REFUSED_BACKOFF_S = 0.05


@dataclass
class Result:
    name: str
    concurrency: int
    sent: int
    ok: int
    refused: int
    p50_ms: float
    p99_ms: float
    throughput: float  # successful requests per second

    def row(self) -> str:
        return (
            f"{self.name:<34} {self.concurrency:>4} {self.sent:>6} {self.ok:>6} {self.refused:>6} "
            f"{self.p50_ms:>9.1f} {self.p99_ms:>9.1f} {self.throughput:>9.1f}"
        )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def load_photos(count: int) -> list[bytes]:
    """Real photos, half cats half dogs, skipping the ones the decoder refuses."""
    photos: list[bytes] = []
    for label in ("Cat", "Dog"):
        taken = 0
        for path in sorted((PHOTOS / label).glob("*.jpg"), key=lambda p: p.name):
            data = path.read_bytes()
            try:
                decode_image(data)
            except ImageDecodeError:
                continue
            photos.append(data)
            taken += 1
            if taken == count // 2:
                break
    if not photos:
        raise SystemExit(f"no photos under {PHOTOS}; set CATSDOGS_PETIMAGES")
    return photos


@dataclass
class Samples:
    latencies: list[float]  # seconds, successful requests only
    statuses: list[int]
    refusal_latencies: list[float]  # seconds, 503 answers only
    wall: float


def summarize(name: str, concurrency: int, parts: list[Samples]) -> Result:
    latencies = [x for part in parts for x in part.latencies]
    statuses = [x for part in parts for x in part.statuses]
    wall = sum(part.wall for part in parts)
    return Result(
        name, concurrency, len(statuses), statuses.count(200), statuses.count(503),
        percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000,
        statuses.count(200) / wall if wall else 0.0,
    )  # fmt: skip


Sender = Callable[[requests.Session, bytes], int]


def run_load(
    send: Sender, photos: list[bytes], concurrency: int, total: int, duration_s: float | None = None
) -> Samples:
    """Closed loop: ``concurrency`` clients, each sends its next request when answered.

    Stops after ``total`` requests, or after ``duration_s`` when given. With one
    client the requests are sent from the calling thread: PyTorch runs about 2.5x
    slower when its intra-op pool is driven from a fresh thread (measured: 29 vs
    12 ms per photo), which would handicap the in-process baseline.
    """
    latencies: list[float] = []
    refusals: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    counter = iter(range(total))
    deadline = time.perf_counter() + duration_s if duration_s else None

    def client() -> None:
        with requests.Session() as session:
            while deadline is None or time.perf_counter() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                started = time.perf_counter()
                try:
                    status = send(session, photos[i % len(photos)])
                except requests.RequestException:
                    status = -1
                elapsed = time.perf_counter() - started
                with lock:
                    statuses.append(status)
                    if status == 200:
                        latencies.append(elapsed)
                    elif status == 503:
                        refusals.append(elapsed)
                if status == 503:
                    time.sleep(REFUSED_BACKOFF_S)

    started = time.perf_counter()
    if concurrency == 1:
        client()
    else:
        threads = [threading.Thread(target=client) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return Samples(latencies, statuses, refusals, time.perf_counter() - started)


def in_process_sender(bundle: Path) -> Sender:
    """decode + transform + forward in this process: the floor TorchServe is compared to."""
    torch.set_num_threads(cpu_limit())
    handler = ImageClassifierHandler()
    handler.load(bundle)

    def send(_session: requests.Session, body: bytes) -> int:
        handler.predict(handler.preprocess_one({"body": body}).unsqueeze(0))
        return 200

    return send


# ---------------------------------------------------------------- FastAPI baseline


def fastapi_app(bundle: str):
    """The common do-it-yourself server: FastAPI + uvicorn, one model, no batching."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    torch.set_num_threads(cpu_limit())
    handler = ImageClassifierHandler()
    handler.load(Path(bundle))
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict:
        return {"status": "Healthy"}

    # async def: the model runs on the event loop's (main) thread, one request at a time,
    # which is what the usual hand-written endpoint does.
    @app.post("/predictions/catsdogs")
    async def predict(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            tensor = handler.preprocess_one({"body": body})
        except ImageDecodeError as exc:
            return JSONResponse({"error": exc.code, "message": exc.message}, status_code=400)
        return JSONResponse(handler.answer(handler.predict(tensor.unsqueeze(0))[0]))

    return app


def start_fastapi(bundle: Path, port: int) -> subprocess.Popen:
    code = (
        f"import sys, uvicorn; sys.path.insert(0, {str(REPO)!r}); "
        "from benchmarks.bench_serve import fastapi_app; "
        f"uvicorn.run(fastapi_app({str(bundle)!r}), host='127.0.0.1', port={port}, "
        "log_level='warning')"
    )
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/ping", timeout=1).ok:
                return process
        except requests.RequestException:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("FastAPI baseline did not start")


# ---------------------------------------------------------------- TorchServe


def server_rss_mb(pgid: int) -> float:
    """Resident memory of the whole TorchServe process group (Java + workers)."""
    total = 0
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.info["pid"]) == pgid:
                total += proc.memory_info().rss
        except (psutil.Error, ProcessLookupError):
            continue
    return total / 2**20


def register_variants(
    client: TorchServeClient, store: Path, bundle: Path, shipped: dict, batch_delay: int
) -> None:
    """The shipped config and the variants that each change one thing."""
    mar = build_mar(bundle, store, model_name="catsdogs")
    # Two workers need a .mar whose model-config says so: the handler sizes its thread
    # pool from minWorkers (cpu_limit // workers), not from the registration call.
    two_workers_config = store.parent / "model-config-2-workers.yaml"
    two_workers_config.write_text(yaml.safe_dump({**shipped, "minWorkers": 2, "maxWorkers": 2}))
    mar_two = build_mar(bundle, store / "two", model_name="catsdogs", model_config=two_workers_config)
    mar_two = mar_two.rename(store / "catsdogs_two_workers.mar")
    variants = {
        BATCH_ON: (mar.name, 1, shipped["batchSize"]),
        BATCH_OFF: (mar.name, 1, 1),
        TWO_WORKERS: (mar_two.name, 2, shipped["batchSize"]),
    }
    for name, (mar_name, workers, batch) in variants.items():
        params = {"url": mar_name, "model_name": model_url_name(name), "initial_workers": workers,
                  "batch_size": batch, "max_batch_delay": batch_delay, "synchronous": "true"}  # fmt: skip
        client._management("POST", "/models", f"register {name}", params=params, timeout=300)


def model_url_name(scenario: str) -> str:
    return {BATCH_ON: "batched", BATCH_OFF: "unbatched", TWO_WORKERS: "two_workers"}[scenario]


def main(argv: list[str] | None = None) -> int:
    # force=True: importing steps (ZenML) already put a coloured handler on the root logger.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    shipped = yaml.safe_load(MODEL_CONFIG.read_text())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="model.pt bundle (default: random lite0)")
    parser.add_argument("--architecture", default="efficientnet_lite0")
    parser.add_argument("--requests", type=int, default=160, help="requests per scenario and level")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per level")
    parser.add_argument("--queue", type=int, default=16, help="TorchServe job_queue_size")
    parser.add_argument("--batch-delay", type=int, default=int(shipped["maxBatchDelay"]),
                        help="maxBatchDelay in ms (default: serve_config/model-config.yaml)")  # fmt: skip
    parser.add_argument("--overload-seconds", type=float, default=20.0)
    parser.add_argument("--skip-fastapi", action="store_true")
    parser.add_argument("--skip-overload", action="store_true")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    bundle = args.bundle
    if bundle is None:
        bundle = work / "model.pt"
        save_bundle(build_model(args.architecture, 2),
                    ModelMetadata(architecture=args.architecture, version="bench"), bundle)  # fmt: skip
    photos = load_photos(32)
    n = args.requests
    logger.info(
        "CPU limit %d; %d photos; %d requests per scenario; batchSize %d, maxBatchDelay %d ms",
        cpu_limit(), len(photos), n, shipped["batchSize"], args.batch_delay,
    )  # fmt: skip

    settings = torchserve_local.ServerSettings.for_tests(work / "torchserve", job_queue_size=args.queue)
    settings.model_store.mkdir(parents=True)
    settings = torchserve_local.start(settings, load_default=False)
    fastapi = None
    results: list[Result] = []
    overload_lines: list[str] = []
    try:
        client = TorchServeClient.for_local(settings)
        register_variants(client, settings.model_store, bundle, shipped, args.batch_delay)
        headers = {"Authorization": f"Bearer {client.inference_token}",
                   "Content-Type": "image/jpeg"}  # fmt: skip

        def torchserve(scenario: str) -> Sender:
            url = f"{settings.inference_url}/predictions/{model_url_name(scenario)}"
            return lambda s, body: s.post(url, data=body, headers=headers, timeout=60).status_code

        senders: dict[str, Sender] = {
            IN_PROCESS: in_process_sender(bundle),
            BATCH_OFF: torchserve(BATCH_OFF),
            BATCH_ON: torchserve(BATCH_ON),
            TWO_WORKERS: torchserve(TWO_WORKERS),
        }
        if not args.skip_fastapi:
            port = torchserve_local.free_port()
            fastapi = start_fastapi(bundle, port)
            fastapi_url = f"http://127.0.0.1:{port}/predictions/catsdogs"
            senders[FASTAPI] = lambda s, body: (
                s.post(fastapi_url, data=body, headers={"Content-Type": "image/jpeg"}, timeout=60).status_code
            )
        for send in senders.values():
            run_load(send, photos, 1, 10)  # warm-up
            run_load(send, photos, 4, 20)

        for concurrency in (1, 8, 16):
            names = [name for name in senders if concurrency == 1 or name != IN_PROCESS]
            parts: dict[str, list[Samples]] = {name: [] for name in names}
            for round_ in range(args.rounds):
                order = names[round_ % len(names) :] + names[: round_ % len(names)]
                for name in order:
                    parts[name].append(run_load(senders[name], photos, concurrency, max(1, n // args.rounds)))
            for name in names:
                results.append(summarize(name, concurrency, parts[name]))
                logger.info(results[-1].row())

        if fastapi is not None:
            fastapi.terminate()
            fastapi.wait(30)
            fastapi = None
        if not args.skip_overload:
            overload_lines = overload(
                settings, torchserve(BATCH_ON), photos, args.queue, args.overload_seconds
            )
    finally:
        if fastapi is not None:
            fastapi.kill()
        torchserve_local.stop(settings)
        shutil.rmtree(work, ignore_errors=True)

    print_report(results, overload_lines, shipped["batchSize"], args.batch_delay)
    return 0


def overload(settings, send: Sender, photos: list[bytes], queue: int, seconds: float) -> list[str]:
    """4x more clients than the queue holds, for a while: excess refused fast, memory flat, recovery."""
    pgid = settings.pid
    rss_before = server_rss_mb(pgid)
    rss_during: list[float] = []
    done = threading.Event()

    def sample_memory() -> None:
        while not done.wait(0.5):
            rss_during.append(server_rss_mb(pgid))

    sampler = threading.Thread(target=sample_memory)
    sampler.start()
    clients = 4 * queue
    try:
        samples = run_load(send, photos, clients, 10**9, duration_s=seconds)
    finally:
        done.set()
        sampler.join()
    result = summarize("TorchServe overload (batching on)", clients, [samples])
    time.sleep(2)
    recovery = summarize("TorchServe after overload", 1, [run_load(send, photos, 1, 40)])
    rss_after = server_rss_mb(pgid)
    refused = samples.refusal_latencies
    return [
        result.row(),
        recovery.row(),
        f"overload: {clients} clients vs queue {queue} for {seconds:.0f}s: {result.refused} of "
        f"{result.sent} refused with 503 (refusal p50 {percentile(refused, 50) * 1000:.1f} ms, "
        f"p99 {percentile(refused, 99) * 1000:.1f} ms); {result.ok} answered, "
        f"{result.throughput:.1f} req/s, p50 {result.p50_ms:.0f} ms",
        f"memory (Java + worker RSS): before {rss_before:.0f} MB, during overload max "
        f"{max(rss_during, default=float('nan')):.0f} MB, after {rss_after:.0f} MB",
        f"recovery: {recovery.ok}/{recovery.sent} answered, p50 {recovery.p50_ms:.1f} ms",
    ]


def print_report(results: list[Result], overload_lines: list[str], batch_size: int, delay: int) -> None:
    header = (f"{'scenario':<34} {'conc':>4} {'sent':>6} {'ok':>6} {'503':>6} "
              f"{'p50 ms':>9} {'p99 ms':>9} {'req/s':>9}")  # fmt: skip
    print(f"\nbatching on = batchSize {batch_size}, maxBatchDelay {delay} ms")
    print(header + "\n" + "-" * len(header))
    for result in results:
        print(result.row())
    for line in overload_lines:
        print(line)

    def find(name: str, concurrency: int) -> Result | None:
        return next((r for r in results if r.name == name and r.concurrency == concurrency), None)

    print("\nratios (aim in brackets)")

    def ratio(label: str, numerator: Result | None, denominator: Result | None, field: str, aim: str) -> None:
        if numerator is None or denominator is None:
            return
        den = getattr(denominator, field)
        value = getattr(numerator, field) / den if den else float("nan")
        print(f"  {label:<50} {value:5.2f}x  [{aim}]")

    on, off = BATCH_ON, BATCH_OFF
    rows = [  # (label, numerator, denominator, field, aim)
        ("TorchServe batching on p50 / in-process p50, c=1", (on, 1), (IN_PROCESS, 1), "p50_ms", "<= 1.3x"),
        ("TorchServe batching off p50 / in-process p50, c=1", (off, 1), (IN_PROCESS, 1), "p50_ms", "<= 1.3x"),
        ("throughput c=8 / c=1, batching on", (on, 8), (on, 1), "throughput", ">= 2x"),
        ("throughput c=8 / c=1, batching off", (off, 8), (off, 1), "throughput", ">= 2x"),
        ("batching on / off throughput, c=16", (on, 16), (off, 16), "throughput", ">= 1.4x"),
        ("TorchServe batching on / FastAPI, c=16", (on, 16), (FASTAPI, 16), "throughput", ">= 1.3x"),
        ("2 workers x 1 thread / 1 x 2 threads, c=16", (TWO_WORKERS, 16), (on, 16), "throughput", "info"),
    ]
    for label, numerator, denominator, field, aim in rows:
        ratio(label, find(*numerator), find(*denominator), field, aim)
    print(f"  (CPU limit {cpu_limit()}, torch {torch.__version__})")


if __name__ == "__main__":
    sys.exit(main())
