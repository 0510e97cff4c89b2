"""Serving benchmark: in-process vs TorchServe (batching on/off) vs FastAPI, one run, one machine.

    python -m benchmarks.bench_serve                      # efficientnet_lite0, random weights
    python -m benchmarks.bench_serve --bundle runs/model.pt --requests 200

Everything is measured side by side on the same photos in the same run, so the
ratios are comparable even though absolute numbers depend on the machine. The
load generator runs on the same CPUs as the servers (like a sidecar would), so
absolute throughput is a lower bound; the printed ratios are what we track.
The weights do not matter for speed, so without ``--bundle`` a randomly
initialised model of the production architecture is used.

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
from fastapi import Request

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from handlers.cpu_limit import cpu_limit  # noqa: E402
from handlers.image_classifier import ImageClassifierHandler  # noqa: E402
from handlers.image_decoding import ImageDecodeError  # noqa: E402
from handlers.models import ModelMetadata, build_model, save_bundle  # noqa: E402

logger = logging.getLogger("bench_serve")
PHOTOS = Path(os.environ.get("CATSDOGS_PETIMAGES", REPO.parent / "shared" / "datasets" / "petimages"))


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
    from handlers.image_decoding import ImageDecodeError, decode_image

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


def run_load(send: Sender, photos: list[bytes], concurrency: int, total: int) -> Samples:
    """Closed loop: ``concurrency`` clients, each sends its next request when answered."""
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def client() -> None:
        with requests.Session() as session:
            while True:
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
                if status == 503:
                    time.sleep(0.01)  # a refused client backs off briefly, as real ones do

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Samples(latencies, statuses, time.perf_counter() - started)


def in_process_sender(bundle: Path, photos: list[bytes]) -> Sender:
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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="model.pt bundle (default: random lite0)")
    parser.add_argument("--architecture", default="efficientnet_lite0")
    parser.add_argument("--requests", type=int, default=120, help="requests per scenario")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per level")
    parser.add_argument("--queue", type=int, default=16, help="TorchServe job_queue_size")
    parser.add_argument("--skip-fastapi", action="store_true")
    parser.add_argument("--skip-overload", action="store_true")
    args = parser.parse_args(argv)

    from steps import torchserve_local
    from steps.packaging import build_mar
    from steps.torchserve_client import TorchServeClient

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    bundle = args.bundle
    if bundle is None:
        bundle = work / "model.pt"
        save_bundle(build_model(args.architecture, 2),
                    ModelMetadata(architecture=args.architecture, version="bench"), bundle)  # fmt: skip
    photos = load_photos(32)
    n = args.requests
    logger.info("CPU limit %d; %d photos; %d requests per scenario", cpu_limit(), len(photos), n)

    settings = torchserve_local.ServerSettings.for_tests(work / "torchserve", job_queue_size=args.queue)
    settings.model_store.mkdir(parents=True)
    mar = build_mar(bundle, settings.model_store, model_name="catsdogs")
    settings = torchserve_local.start(settings, load_default=False)
    fastapi = None
    results: list[Result] = []
    overload_lines: list[str] = []
    try:
        client = TorchServeClient.for_local(settings)
        for name, batch in (("batched", 8), ("unbatched", 1)):
            params = {"url": mar.name, "model_name": name, "initial_workers": 1,
                      "batch_size": batch, "max_batch_delay": 10, "synchronous": "true"}  # fmt: skip
            client._management("POST", "/models", f"register {name}", params=params, timeout=300)
        headers = {"Authorization": f"Bearer {client.inference_token}",
                   "Content-Type": "image/jpeg"}  # fmt: skip

        def torchserve(model: str) -> Sender:
            url = f"{settings.inference_url}/predictions/{model}"
            return lambda s, body: s.post(url, data=body, headers=headers, timeout=60).status_code

        senders: dict[str, Sender] = {
            "in-process (no server)": in_process_sender(bundle, photos),
            "TorchServe batching off": torchserve("unbatched"),
            "TorchServe batching on": torchserve("batched"),
        }
        if not args.skip_fastapi:
            port = torchserve_local.free_port()
            fastapi = start_fastapi(bundle, port)
            fastapi_url = f"http://127.0.0.1:{port}/predictions/catsdogs"
            senders["FastAPI + uvicorn"] = lambda s, body: (
                s.post(fastapi_url, data=body, headers={"Content-Type": "image/jpeg"}, timeout=60).status_code
            )
        for send in senders.values():
            run_load(send, photos, 2, 10)  # warm-up

        # Side by side: every scenario of a concurrency level runs in interleaved rounds,
        # so a burst of background load hits all of them alike.
        for concurrency in (1, 8, 16):
            names = [name for name in senders if concurrency == 1 or "in-process" not in name]
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
            overload_lines = overload(settings, torchserve("batched"), photos, args.queue, n)
    finally:
        if fastapi is not None:
            fastapi.kill()
        torchserve_local.stop(settings)
        shutil.rmtree(work, ignore_errors=True)

    print_report(results, overload_lines)
    return 0


def overload(settings, send, photos: list[bytes], queue: int, n: int) -> list[str]:
    """4x more clients than the queue holds: excess refused fast, memory flat, recovery."""
    pgid = settings.pid
    rss_before = server_rss_mb(pgid)
    clients = 4 * queue
    refused_latencies: list[float] = []

    def timed_send(session: requests.Session, body: bytes) -> int:
        t0 = time.perf_counter()
        status = send(session, body)
        if status == 503:
            refused_latencies.append(time.perf_counter() - t0)
        return status

    result = summarize("TorchServe overload (batching on)", clients,
                       [run_load(timed_send, photos, clients, 8 * n)])  # fmt: skip
    rss_peak = server_rss_mb(pgid)
    time.sleep(2)
    recovery = summarize("TorchServe after overload", 1,
                         [run_load(send, photos, 1, max(20, n // 4))])  # fmt: skip
    rss_after = server_rss_mb(pgid)
    return [
        result.row(),
        recovery.row(),
        f"overload: {clients} clients vs queue {queue}: {result.refused} of {result.sent} refused "
        f"with 503, refusal p50 {percentile(refused_latencies, 50) * 1000:.1f} ms / p99 "
        f"{percentile(refused_latencies, 99) * 1000:.1f} ms",
        f"memory (Java + worker RSS): before {rss_before:.0f} MB, under overload {rss_peak:.0f} MB,"
        f" after {rss_after:.0f} MB",
        f"recovery: {recovery.ok}/{recovery.sent} answered, p50 {recovery.p50_ms:.1f} ms",
    ]


def print_report(results: list[Result], overload_lines: list[str]) -> None:
    header = (f"{'scenario':<34} {'conc':>4} {'sent':>6} {'ok':>6} {'503':>6} "
              f"{'p50 ms':>9} {'p99 ms':>9} {'req/s':>9}")  # fmt: skip
    print("\n" + header + "\n" + "-" * len(header))
    for result in results:
        print(result.row())
    for line in overload_lines:
        print(line)

    def find(name: str, concurrency: int) -> Result | None:
        return next((r for r in results if r.name == name and r.concurrency == concurrency), None)

    inproc = find("in-process (no server)", 1)
    on1, on8, on16 = (find("TorchServe batching on", c) for c in (1, 8, 16))
    off16 = find("TorchServe batching off", 16)
    fast16 = find("FastAPI + uvicorn", 16)
    print("\nratios (aim in brackets)")

    def ratio(label: str, numerator: float, denominator: float, aim: str) -> None:
        value = numerator / denominator if denominator else float("nan")
        print(f"  {label:<44} {value:5.2f}x  [{aim}]")

    if inproc and on1:
        ratio("TorchServe p50 / in-process p50 at c=1", on1.p50_ms, inproc.p50_ms, "<= 1.3x")
    if on1 and on8:
        ratio("throughput c=8 / c=1 (batching on)", on8.throughput, on1.throughput, ">= 2x")
    if on16 and off16:
        ratio("batching on / off throughput at c=16", on16.throughput, off16.throughput, ">= 1.4x")
    if on16 and fast16:
        ratio("TorchServe batched / FastAPI at c=16", on16.throughput, fast16.throughput, ">= 1.3x")
    print(f"  (CPU limit {cpu_limit()}, torch {torch.__version__})")


if __name__ == "__main__":
    sys.exit(main())
