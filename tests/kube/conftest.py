from tests.kube_fixtures import kube_api_client, kube_emulator  # noqa: F401
