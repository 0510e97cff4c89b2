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


def test_java_home_without_java_names_java_home_not_apt(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(torchserve_local.TorchServeError) as info:
        torchserve_local.check_java()
    message = str(info.value)
    assert f"{tmp_path / 'bin' / 'java'} does not exist" in message and "unset it" in message
    assert "apt-get" not in message and "\n" not in message


@pytest.mark.parametrize("text", ['{"run_dir": "/x", "infer', "[]", '{"no_such_setting": 1}'])
def test_unreadable_server_json_means_no_server_recorded(tmp_path, monkeypatch, caplog, text):
    """status and stop must answer "not running" with a warning, not a JSONDecodeError traceback."""
    monkeypatch.setenv("CATSDOGS_RUNS_DIR", str(tmp_path))
    (tmp_path / "torchserve").mkdir()
    (tmp_path / "torchserve" / "server.json").write_text(text)
    assert torchserve_local.load_running() is None
    assert torchserve_local.main(["status"]) == 1
    assert torchserve_local.main(["stop"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings and all("server.json" in w and "no server recorded" in w for w in warnings)


@pytest.mark.parametrize("text", ['{"model_name": "catsdogs", "vers', "{}", '"catsdogs_1.mar"'])
def test_unreadable_default_model_json_is_one_line_with_the_fix(tmp_path, text):
    settings = torchserve_local.ServerSettings(run_dir=str(tmp_path))
    (tmp_path / "default_model.json").write_text(text)
    with pytest.raises(torchserve_local.TorchServeError) as info:
        torchserve_local.read_default_model(settings)
    message = str(info.value)
    assert str(tmp_path / "default_model.json") in message and "delete it" in message
    assert "redeploy" in message and "\n" not in message


def test_start_refuses_an_unreadable_default_model_json(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CATSDOGS_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(torchserve_local, "check_java", lambda: "java")
    monkeypatch.setattr(torchserve_local, "check_ports_free", lambda settings: None)
    monkeypatch.setattr(torchserve_local.subprocess, "Popen", None)  # must not get that far
    (tmp_path / "torchserve").mkdir()
    (tmp_path / "torchserve" / "default_model.json").write_text('{"model_na')
    assert torchserve_local.main(["start"]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "default_model.json is unreadable" in errors[0]


def test_json_records_are_written_atomically(tmp_path):
    settings = torchserve_local.ServerSettings(run_dir=str(tmp_path))
    (tmp_path / "model-store").mkdir()
    (tmp_path / "model-store" / "catsdogs_v1.mar").write_bytes(b"")
    torchserve_local.write_default_model(settings, "catsdogs", "v1", "catsdogs_v1.mar")
    assert torchserve_local.read_default_model(settings)["version"] == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default_model.json", "model-store"]
