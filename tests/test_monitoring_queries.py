"""The Cloud Monitoring dashboard and alert policies: valid resources, and every PromQL query works.

Validity: each file is parsed by the Cloud Monitoring API's own message types
(``google-cloud-monitoring-dashboards``, ``google-cloud-monitoring``) with unknown
fields rejected, exactly what ``gcloud monitoring dashboards create`` and
``gcloud alpha monitoring policies create`` send.

Queries: a real Prometheus (Debian's ``prometheus`` package) scrapes a real local
TorchServe serving the tiny test model while real photos (and a bad upload) go
through it (and, once, a prediction while the model has no worker: a 503). Each
query must parse and execute, and return data; a query with an ``or vector(0)``
fallback must return data without it too, or "returns data" would prove nothing.
Two kinds of metric only exist on GKE and may come back empty here: GKE system
metrics (``kubernetes_io:*``) and GKE's kube state metrics (``kube_*``).

Managed Prometheus adds the target labels ``namespace``, ``cluster``, ``location``
and ``project_id`` to what it scrapes, and the queries filter on the namespace; the
local scrape adds the same labels (TARGET_LABELS).

The drift alerts compare the last hour with the day before it (``offset``), and
no test can wait a day. So, before Prometheus starts, one day of history is
written into its storage with ``promtool tsdb create-blocks-from openmetrics``:
the TorchServe exposition captured after the first burst of traffic, replayed
every 5 minutes (counters and histograms growing by the captured amount each
time, gauges as captured). The live scrape then continues that history.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.gcs_fixtures import free_port, wait_for_port
from tests.service_wait import wait_until_answering
from tests.torchserve_fixtures import *  # noqa: F403

# google-api-core warns about Python 3.11's end of life on import; nothing to act on here.
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::FutureWarning")]
MONITORING = Path(__file__).resolve().parents[1] / "k8s" / "monitoring"
SCRAPE_JOB = "torchserve"  # the PodMonitoring's name is the job label in Managed Prometheus
NAMESPACE = "catsdogs"
# What Managed Prometheus attaches to every sample of a PodMonitoring target.
TARGET_LABELS = {"namespace": NAMESPACE, "cluster": "catsdogs", "location": "europe-west1",
                 "project_id": "example-project"}  # fmt: skip
FALLBACK = re.compile(r"\s+or\s+vector\(0\)")
GKE_ONLY = ("kubernetes_io:", "kube_")
HISTORY_HOURS = 26  # covers `[1d] offset 1h`
HISTORY_STEP_S = 300
HISTORY_GAP_S = 600  # history ends 10 min ago, so 5-minute windows see the live scrape only
_COMPARISON = re.compile(r"^(?P<signal>.*?)\s*(>=|<=|==|!=|>|<)\s*[0-9.]+\s*$", re.DOTALL)
_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?P<labels>\{.*\})?\s+(?P<value>\S+)$")


def _walk(node: Any, key: str) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and isinstance(v, str):
                yield v
            else:
                yield from _walk(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, key)


def dashboard() -> dict[str, Any]:
    return json.loads((MONITORING / "dashboard.json").read_text())


def alert_policies() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted((MONITORING / "alerts").glob("*.json"))}


def dashboard_queries() -> list[str]:
    return list(_walk(dashboard(), "prometheusQuery"))


def alert_queries() -> list[tuple[str, str]]:
    return [(name, q) for name, policy in alert_policies().items() for q in _walk(policy, "query")]


def query(base: str, promql: str) -> list[dict[str, Any]]:
    response = requests.get(f"{base}/api/v1/query", params={"query": promql}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (
        f"query failed ({body.get('errorType')}: {body.get('error')}):\n{promql}"
    )
    return body["data"]["result"]


# ------------------------------------------------------------------ resources are valid


def test_dashboard_is_a_valid_cloud_monitoring_dashboard() -> None:
    from google.cloud.monitoring_dashboard_v1.types import Dashboard

    text = (MONITORING / "dashboard.json").read_text()
    parsed = Dashboard.from_json(text, ignore_unknown_fields=False)
    layout = parsed.mosaic_layout
    assert layout.columns <= 48 and layout.tiles
    occupied: set[tuple[int, int]] = set()
    for tile in layout.tiles:
        assert tile.x_pos + tile.width <= layout.columns, tile.widget.title
        cells = {(x, y) for x in range(tile.x_pos, tile.x_pos + tile.width)
                 for y in range(tile.y_pos, tile.y_pos + tile.height)}  # fmt: skip
        assert not cells & occupied, f"tile {tile.widget.title!r} overlaps another"
        occupied |= cells
        for data_set in tile.widget.xy_chart.data_sets:
            assert data_set.time_series_query.prometheus_query, f"{tile.widget.title}: PromQL only"


@pytest.mark.parametrize("name", sorted(alert_policies()))
def test_alert_policy_is_a_valid_cloud_monitoring_policy(name: str) -> None:
    from google.cloud.monitoring_v3.types import AlertPolicy

    policy = AlertPolicy.from_json((MONITORING / "alerts" / name).read_text(), ignore_unknown_fields=False)
    assert policy.display_name and policy.documentation.content and policy.conditions
    assert policy.severity != AlertPolicy.Severity.SEVERITY_UNSPECIFIED
    for condition in policy.conditions:
        promql = condition.condition_prometheus_query_language
        assert promql.query and promql.duration.total_seconds() >= 60, condition.display_name


def test_dashboard_covers_what_operators_need() -> None:
    """Each signal the serving contract promises has a chart, each alert a policy."""
    titles = " | ".join(t["widget"]["title"].lower() for t in dashboard()["mosaicLayout"]["tiles"])
    for topic in ("request rate", "p50 / p95 / p99", "4xx / 5xx", "by label", "confidence distribution",
                  "preprocessing and inference", "upload size", "error type", "queue", "cpu",
                  "memory", "pods ready"):  # fmt: skip
        assert topic in titles, f"no dashboard chart for {topic!r}"
    policies = " | ".join(json.dumps(p).lower() for p in alert_policies().values())
    for topic in ("5xx", "p95", "no inference traffic", "available", "label share", "mean confidence"):
        assert topic in policies, f"no alert policy for {topic!r}"
    assert "offset" in policies, "drift alerts must compare with a baseline window"


# ------------------------------------------------------------------ live Prometheus


def _exposition_samples(text: str) -> list[tuple[str, str, float, bool]]:
    """(name, label block, value, cumulative) for each sample of a Prometheus text exposition."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if not match or line.startswith("#"):
            continue
        name = match["name"]
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        cumulative = types.get(name) == "counter" or types.get(family) == "histogram"
        labels = (match["labels"] or "{}").replace(",}", "}")
        samples.append((name, labels, float(match["value"]), cumulative))
    return samples


def write_history(exposition: str, target: str, out: Path, now: float) -> Path:
    """One day of the captured exposition, replayed every HISTORY_STEP_S seconds, as OpenMetrics."""
    end = int(now) - HISTORY_GAP_S
    steps = HISTORY_HOURS * 3600 // HISTORY_STEP_S
    target_labels = ",".join(f'{k}="{v}"' for k, v in TARGET_LABELS.items())
    scrape_labels = f'job="{SCRAPE_JOB}",instance="{target}",{target_labels}'
    lines = []
    for name, labels, value, cumulative in _exposition_samples(exposition):
        full = f"{{{labels[1:-1]},{scrape_labels}}}" if labels != "{}" else f"{{{scrape_labels}}}"
        for k in range(steps):
            sample = value * (k + 1) if cumulative else value
            lines.append(f"{name}{full} {sample} {end - (steps - 1 - k) * HISTORY_STEP_S}")
    out.write_text("\n".join(lines) + "\n# EOF\n")
    return out


def send_traffic(ts_client: Any, petimages_dir: Path) -> None:
    """Real photos of both classes, and one upload that is not an image (a 4xx, an error metric)."""
    for label in ("Cat", "Dog"):
        for i in (1, 2, 3):
            ts_client.predict_raw("catsdogs", (petimages_dir / label / f"{i}.jpg").read_bytes())
    assert ts_client.predict_raw("catsdogs", b"this is not an image").status_code >= 400


def send_a_5xx(ts_client: Any, petimages_dir: Path) -> None:
    """One prediction while the model has no worker: TorchServe answers 503, so Requests5XX exists.

    The worker is back before this returns (other test modules share this server).
    """
    auth = {"Authorization": f"Bearer {ts_client.management_token}"} if ts_client.management_token else {}

    def scale(workers: int) -> None:
        response = requests.put(
            f"{ts_client.management_url}/models/catsdogs", headers=auth, timeout=120,
            params={"min_worker": workers, "max_worker": workers, "synchronous": "true"},
        )  # fmt: skip
        assert response.status_code == 200, response.text

    version = ts_client.default_version("catsdogs")
    scale(0)
    try:
        photo = (petimages_dir / "Cat" / "1.jpg").read_bytes()
        assert ts_client.predict_raw("catsdogs", photo).status_code == 503
    finally:
        scale(1)
        ts_client.wait_for_workers("catsdogs", version)


def _wait_for(base: str, promql: str, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if query(base, promql):
            return
        time.sleep(0.5)
    pytest.fail(f"Prometheus: {what} ({promql}) after {timeout}s")


@pytest.fixture(scope="module")
def prometheus(
    torchserve_server: Any, ts_client: Any, petimages_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Prometheus with a day of history, scraping the live TorchServe; traffic sent between scrapes."""
    binary, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if binary is None or promtool is None:
        pytest.fail("prometheus / promtool are not installed: apt-get install prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    target = torchserve_server.metrics_url.removeprefix("http://")

    send_traffic(ts_client, petimages_dir)
    # Before the first scrape: TorchServe creates Requests5XX at the first 5xx, and a series
    # whose first sample is already 1 never shows a rate above 0.
    send_a_5xx(ts_client, petimages_dir)
    history = write_history(ts_client.metrics_text(), target, workdir / "history.om", time.time())
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", "--quiet", str(history),
                    str(workdir / "data")], check=True, capture_output=True)  # fmt: skip

    labels = ", ".join(f"{k}: {v}" for k, v in TARGET_LABELS.items())
    (workdir / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: {SCRAPE_JOB}\n"
        f"    static_configs: [{{targets: ['{target}'], labels: {{{labels}}}}}]\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [binary, f"--config.file={workdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=(workdir / "prometheus.log").open("w"),
    )  # fmt: skip
    try:
        wait_for_port(port, process)
        base = f"http://127.0.0.1:{port}"
        # Prometheus listens before it has loaded its storage, and answers 503 until then.
        wait_until_answering(
            process, lambda: requests.get(f"{base}/-/ready", timeout=2).status_code == 200, "prometheus", 60
        )
        # Traffic only once the target has been scraped, so the live counters grow
        # between two scrapes and 5-minute rates have data.
        _wait_for(base, f'up{{job="{SCRAPE_JOB}"}} == 1', "target never scraped")
        send_traffic(ts_client, petimages_dir)
        ns = f'namespace="{NAMESPACE}"'
        _wait_for(base, f"sum(rate(catsdogs_predictions_total{{{ns}}}[5m])) > 0", "no live traffic seen")
        _wait_for(base, f"sum(rate(catsdogs_request_errors_total{{{ns}}}[5m])) > 0", "no live 4xx seen")
        _wait_for(base, f"sum(rate(Requests5XX{{{ns}}}[5m]))", "Requests5XX never scraped")
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def assert_has_data(base: str, promql: str, what: str) -> None:
    """Data for the query, and for it without its `or vector(0)` fallbacks: the series behind it exist."""
    result = query(base, promql)
    if any(prefix in promql for prefix in GKE_ONLY):
        query(base, FALLBACK.sub("", promql))  # parses too; no data outside GKE
        return
    assert result, f"no data for {what}:\n{promql}"
    if FALLBACK.search(promql):
        bare = FALLBACK.sub("", promql)
        assert query(base, bare), f"{what}: only the `or vector(0)` fallback answers, no series:\n{bare}"


@pytest.mark.parametrize("promql", dashboard_queries())
def test_dashboard_query_returns_data(prometheus: str, promql: str) -> None:
    assert_has_data(prometheus, promql, "dashboard query")


@pytest.mark.parametrize(("policy", "promql"), alert_queries())
def test_alert_condition_parses_and_its_signal_has_data(prometheus: str, policy: str, promql: str) -> None:
    query(prometheus, promql)  # the full condition executes
    match = _COMPARISON.match(promql)
    assert match, f"{policy}: an alert condition must end with a threshold comparison"
    assert_has_data(prometheus, match["signal"], policy)


def scraped_metric_selector() -> re.Pattern[str]:
    """A selector of any metric the TorchServe scrape yields (serve_config/metrics.yaml, plus `up`)."""
    config = yaml.safe_load((MONITORING.parents[1] / "serve_config" / "metrics.yaml").read_text())
    names = ["up"] + [
        metric["name"]
        for group in ("ts_metrics", "model_metrics")
        for metrics in config[group].values()
        for metric in metrics
    ]
    alternatives = "|".join(sorted(map(re.escape, names), key=len, reverse=True))
    return re.compile(rf"\b({alternatives})(?:_bucket|_sum|_count)?\b(\{{[^}}]*\}})?")


def test_queries_select_the_namespace_and_prediction_requests_only() -> None:
    """Managed Prometheus scrapes every namespace into one store: each selector of a TorchServe
    metric names ours. Error shares divide by prediction requests, never by Requests2XX
    (it also counts health probes and metric scrapes)."""
    selector = scraped_metric_selector()
    for promql in dashboard_queries() + [q for _, q in alert_queries()]:
        assert "Requests2XX" not in promql, promql
        for match in selector.finditer(promql):
            assert f'namespace="{NAMESPACE}"' in (match[2] or ""), f"{match[0]} in:\n{promql}"


def test_drift_alerts_stay_quiet_when_traffic_is_unchanged(prometheus: str) -> None:
    """The baseline day and the last hour carry the same mix of photos: no drift may fire."""
    drift = [q for name, q in alert_queries() if name == "prediction-drift.json"]
    assert len(drift) == 2
    for promql in drift:
        signal = _COMPARISON.match(promql)["signal"]
        assert query(prometheus, signal), f"the baseline window has no data:\n{signal}"
        assert query(prometheus, promql) == [], f"drift fired on unchanged traffic:\n{promql}"


def test_counters_are_read_through_rate(ts_client: Any) -> None:
    """A raw counter value means nothing across restarts; histograms' series are counters too."""
    exposition = ts_client.metrics_text()
    counters = set(re.findall(r"^# TYPE (\S+) counter$", exposition, re.MULTILINE))
    for name in re.findall(r"^# TYPE (\S+) histogram$", exposition, re.MULTILINE):
        counters |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    assert {"Requests2XX", "ts_inference_requests_total", "catsdogs_predictions_total"} <= counters
    for promql in dashboard_queries() + [q for _, q in alert_queries()]:
        for match in re.finditer(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\b", promql):
            if match[1] in counters:
                before = promql[: match.start()].rstrip()
                assert re.search(r"\b(rate|increase)\($", before), (
                    f"counter {match[1]} not inside rate()/increase() in:\n{promql}"
                )


def test_percentiles_come_from_histograms() -> None:
    calls = [c for q in dashboard_queries() + [q for _, q in alert_queries()]
             for c in re.finditer(r"histogram_quantile\(([^,]+),(.*)", q)]  # fmt: skip
    assert len(calls) >= 5
    for call in calls:
        assert "_bucket" in call[2] and "by (le)" in call[2], call[0]
