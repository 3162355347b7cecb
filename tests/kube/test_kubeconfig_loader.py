"""One kubeconfig order for every component (retina_preflight.core.kubeconfig): explicit path, then
$KUBECONFIG, then the in-cluster service account, then ~/.kube/config.

Each source here logs in as a different identity on the same API emulator, so asking the server
"who am I" shows which source a component's loader chose; the agent, kubectl-retina, the operator
(its kopf login too) and the preflight control check must all choose the same one."""

from __future__ import annotations

from pathlib import Path

import kubernetes
import pytest

from retina_agent.enrichment import KubeConfigError
from retina_agent.enrichment import load_api_client as agent_loader
from retina_capture import kube as capture_kube
from retina_lab.kube import KubeEmulator
from retina_preflight.core import control, kubeconfig

PRECEDENCE_DOC = (kubeconfig.EXPLICIT, kubeconfig.KUBECONFIG_ENV, kubeconfig.IN_CLUSTER, kubeconfig.DEFAULT)


def whoami(client: kubernetes.client.ApiClient) -> str:
    review = kubernetes.client.AuthenticationV1Api(client).create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    )
    return review.status.user_info.username


def chosen_by_every_component(explicit: Path | None) -> set[str]:
    """The user each component's loader logs in as (one element when they agree)."""
    path = str(explicit) if explicit else None
    users = {whoami(agent_loader(path)), whoami(capture_kube.api_client(path))}
    result, client = control.check_cluster(path, None)
    assert client is not None, result
    users.add(whoami(client))
    kopf_login = capture_kube.connection_settings(path)  # what the operator hands to kopf
    config = kubernetes.client.Configuration()
    config.host, config.ssl_ca_cert = kopf_login["server"], kopf_login["ca_path"]
    config.api_key = {"authorization": f"Bearer {kopf_login['token']}"}
    users.add(whoami(kubernetes.client.ApiClient(config)))
    return users


@pytest.fixture
def sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An emulator and four ways to reach it, each as another identity; none active yet."""
    with KubeEmulator(workdir=tmp_path / "kube", namespaces=("default", "pods-ns")) as kube:
        kube.seed(
            [
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": "in-pod", "namespace": "pods-ns"},
                }
            ]
        )
        explicit = kube.kubeconfig_for_user("from-explicit", path=tmp_path / "explicit")
        env_file = kube.kubeconfig_for_user("from-env", path=tmp_path / "env", namespace="env-ns")
        home = tmp_path / "home"
        (home / ".kube").mkdir(parents=True)
        kube.kubeconfig_for_user("from-home", path=home / ".kube" / "config")
        pod_dir = tmp_path / "serviceaccount"  # what the kubelet mounts
        pod_dir.mkdir()
        (pod_dir / "token").write_text(kube.service_account_token("pods-ns", "in-pod"))
        (pod_dir / "ca.crt").write_bytes(kube.ca_path.read_bytes())
        (pod_dir / "namespace").write_text("pods-ns")
        monkeypatch.setattr(kubeconfig, "SERVICE_ACCOUNT_DIR", str(pod_dir))
        monkeypatch.setenv("HOME", str(home))
        for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
            monkeypatch.delenv(name, raising=False)

        def in_cluster() -> None:
            monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(kube.port))

        yield {
            "explicit": explicit,
            "env": env_file,
            "in_cluster": in_cluster,
            "home": home,
            "monkeypatch": monkeypatch,
            "tmp": tmp_path,
        }


def test_the_order_is_explicit_env_in_cluster_home(sources) -> None:
    mp = sources["monkeypatch"]
    assert kubeconfig.PRECEDENCE == PRECEDENCE_DOC
    assert chosen_by_every_component(None) == {"from-home"}
    sources["in_cluster"]()
    assert chosen_by_every_component(None) == {"system:serviceaccount:pods-ns:in-pod"}
    assert capture_kube.default_namespace() == "pods-ns"  # a pod works in its own namespace
    mp.setenv("KUBECONFIG", f"{sources['tmp'] / 'missing'}:{sources['env']}")  # missing files are skipped
    assert chosen_by_every_component(None) == {"from-env"}
    assert capture_kube.default_namespace() == "env-ns"
    assert chosen_by_every_component(sources["explicit"]) == {"from-explicit"}


def test_merged_kubeconfig_list_first_file_wins(sources) -> None:
    sources["monkeypatch"].setenv("KUBECONFIG", f"{sources['explicit']}:{sources['env']}")
    assert chosen_by_every_component(None) == {"from-explicit"}


def test_errors_name_the_source_and_the_fix(sources, tmp_path: Path) -> None:
    mp = sources["monkeypatch"]
    mp.setenv("HOME", str(tmp_path / "nobody"))
    with pytest.raises(KubeConfigError, match="set KUBECONFIG or pass a kubeconfig"):
        agent_loader()
    with pytest.raises(capture_kube.KubeconfigError, match=r"kubeconfig .*/nope does not exist"):
        capture_kube.api_client(str(tmp_path / "nope"))
    result, client = control.check_cluster(str(tmp_path / "nope"), None)
    assert client is None and result.verdict == "fail" and "does not exist" in result.value
    sources["in_cluster"]()
    mp.setattr(kubeconfig, "SERVICE_ACCOUNT_DIR", str(tmp_path / "no-token-here"))
    with pytest.raises(KubeConfigError, match="the in-cluster service account"):
        agent_loader()


def test_the_cli_reports_a_missing_kubeconfig(sources, tmp_path: Path, capsys) -> None:
    from retina_capture.cli.main import main

    assert main(["capture", "list", "--kubeconfig", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "cannot load the kubeconfig" in err and "does not exist" in err
