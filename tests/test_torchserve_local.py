"""Local TorchServe plumbing without starting it: Java check, rendered config, tokens, names."""

from __future__ import annotations

import json

import pytest

from steps import torchserve_local
from steps.packaging import mar_file_name, safe_version


def test_missing_java_gives_one_line_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no java anywhere
    with pytest.raises(torchserve_local.TorchServeError) as info:
        torchserve_local.check_java()
    message = str(info.value)
    assert "\n" not in message
    assert "Java 17" in message and "apt-get install -y openjdk-17-jre-headless" in message


def test_old_java_is_refused(monkeypatch, tmp_path):
    java = tmp_path / "bin" / "java"
    java.parent.mkdir()
    java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(torchserve_local.TorchServeError, match="Java 11"):
        torchserve_local.check_java()


def test_rendered_config_is_secure_and_complete(tmp_path):
    settings = torchserve_local.ServerSettings(run_dir=str(tmp_path), enable_model_api=False)
    settings.model_store.mkdir(parents=True)
    text = torchserve_local.render_config(settings, load_models="").read_text()
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert "$" not in text.replace("${", "")  # every placeholder filled
    assert "${" not in text
    assert props["disable_token_authorization"] == "false"
    assert props["management_address"].startswith("http://127.0.0.1:")
    assert props["metrics_address"].startswith("http://127.0.0.1:")
    assert props["grpc_inference_address"] == "127.0.0.1"
    assert props["enable_model_api"] == "false"
    assert props["allowed_urls"].startswith("file://")
    assert str(settings.model_store.resolve()).replace("/", "") in props["allowed_urls"].replace(
        "\\", ""
    ).replace("/", "")
    assert props["metrics_mode"] == "prometheus"
    assert int(props["job_queue_size"]) > 0


def test_partial_key_file_reads_as_no_tokens(tmp_path):
    settings = torchserve_local.ServerSettings(run_dir=str(tmp_path))
    (tmp_path / "key_file.json").write_text('{"management": {"ke')
    assert torchserve_local.read_tokens(settings) == {}
    (tmp_path / "key_file.json").write_text(
        json.dumps({"management": {"key": "m"}, "inference": {"key": "i"}})
    )
    assert torchserve_local.read_tokens(settings) == {"management": "m", "inference": "i"}


def test_run_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CATSDOGS_RUNS_DIR", str(tmp_path))
    assert torchserve_local.default_run_dir() == tmp_path / "torchserve"


def test_versions_become_safe_file_and_url_names():
    assert safe_version("2026-12-03 run/7") == "2026-12-03-run-7"
    assert mar_file_name("catsdogs", "v1.2") == "catsdogs_v1.2.mar"
    assert safe_version("///") == "0"


def test_a_taken_port_is_named_with_the_fix_before_java_starts(tmp_path, monkeypatch):
    """TorchServe itself would exit 0 and hide the bind error in its log."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        settings = torchserve_local.ServerSettings.local(tmp_path / "torchserve", port=taken)
        with pytest.raises(torchserve_local.TorchServeError) as info:
            torchserve_local.start(settings)
    message = str(info.value)
    assert f"port {taken} is already in use" in message and "CATSDOGS_PORT=" in message
    assert not (tmp_path / "torchserve" / "server.json").exists()  # nothing recorded as running
