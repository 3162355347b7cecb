"""Where diagnose and map look for Prometheus when no --prometheus is given."""

from __future__ import annotations

from retina_capture.cli.main import main
from retina_capture.observe import prometheus
from retina_lab.agent import free_port


def test_default_is_the_installers_service_through_the_api_server(kube_emulator, capsys, monkeypatch):
    monkeypatch.delenv(prometheus.ENV_URL, raising=False)
    code = main(["map", "--kubeconfig", str(kube_emulator.kubeconfig_path)])
    err = capsys.readouterr().err
    assert code == 1
    # The emulator has no service proxy: the error names what was tried and the way out.
    assert "service monitoring/prometheus-operated:9090 through the API server" in err
    assert f"({kube_emulator.url})" in err or kube_emulator.url.rstrip("/") in err
    assert "404" in err and "--prometheus URL" in err and prometheus.ENV_URL in err


def test_environment_variable_comes_before_the_api_server(capsys, monkeypatch):
    port = free_port()  # nothing listens there
    monkeypatch.setenv(prometheus.ENV_URL, f"http://127.0.0.1:{port}")
    code = main(["map", "--kubeconfig", "/nonexistent/kubeconfig"])
    err = capsys.readouterr().err
    assert code == 1 and f"cannot reach Prometheus at http://127.0.0.1:{port}" in err
