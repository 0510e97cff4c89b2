"""Start TorchServe in the serving container, configured from the repo's template.

serve_config/config.properties is the single TorchServe configuration (the
local server renders the same file). Here it is rendered for a pod: inference
on all interfaces, management on localhost only (reach it with
``kubectl port-forward``), and, because Google Managed Prometheus scrapes from
outside the pod, metrics on the pod IP, guarded by the NetworkPolicy. The
process is exec'd so TorchServe gets SIGTERM directly and drains in-flight
requests within the pod's grace period.
"""

from __future__ import annotations

import logging
import os
import re
import string
import sys
from pathlib import Path

LOGGER = logging.getLogger("serving_entrypoint")
APP_DIR = Path(os.environ.get("APP_DIR", "/opt/catsdogs"))
RUN_DIR = Path(os.environ.get("TS_RUN_DIR", "/tmp/torchserve"))  # an emptyDir: rootfs is read-only


def render(template: str, env: dict[str, str]) -> str:
    values = {
        "inference_host": "0.0.0.0",
        "inference_port": env.get("TS_INFERENCE_PORT", "8080"),
        "management_port": env.get("TS_MANAGEMENT_PORT", "8081"),
        "metrics_port": env.get("TS_METRICS_PORT", "8082"),
        "grpc_inference_port": "7070",
        "grpc_management_port": "7071",
        "token_expiration_min": env.get("TS_TOKEN_EXPIRATION_MIN", "1440"),
        "enable_model_api": "false",
        "allowed_urls": "file:///models/.*",
        "model_store": env.get("MODEL_DIR", "/models"),
        "load_models": "all",
        "workers": env.get("TS_WORKERS", "1"),
        "netty_threads": env.get("TS_NETTY_THREADS", "2"),
        "job_queue_size": env.get("TS_JOB_QUEUE_SIZE", "100"),
        "response_timeout": env.get("TS_RESPONSE_TIMEOUT", "30"),
        "metrics_config": str(APP_DIR / "serve_config" / "metrics.yaml"),
        "java_heap_mb": env.get("TS_JAVA_HEAP_MB", "512"),
    }
    text = string.Template(template).substitute(values)
    metrics_host = env.get("TS_METRICS_HOST", "0.0.0.0")
    return re.sub(
        r"^metrics_address=http://127\.0\.0\.1:",
        f"metrics_address=http://{metrics_host}:",
        text,
        flags=re.MULTILINE,
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    config = RUN_DIR / "config.properties"
    template = (APP_DIR / "serve_config" / "config.properties").read_text()
    config.write_text(render(template, dict(os.environ)))
    os.chdir(RUN_DIR)  # TorchServe writes key_file.json and logs to its working directory
    LOGGER.info("starting TorchServe with %s", config)
    args = ["torchserve", "--start", "--foreground", "--ncs"]
    args += ["--ts-config", str(config)]
    os.execvp(args[0], args)


if __name__ == "__main__":
    sys.exit(main())
