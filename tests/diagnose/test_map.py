"""``kubectl retina map``: workloads and edges from the lab's real traffic, through Prometheus."""

from __future__ import annotations

import contextlib
import json

from retina_capture.cli.main import main
from retina_lab.agent import wait_for
from retina_lab.traffic import send_udp, udp_sink

CACHE, API, WEB, DB = "data/cache", "data/api", "shop/web", "data/db"
FRAME = 100 + 8 + 20 + 14  # payload, UDP, IPv4, Ethernet: the length packetparser counts


def run_map(lab, capsys, *extra: str) -> tuple[int, str]:
    code = main(["map", "--prometheus", lab.prometheus.url, *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def edge(result: dict, source: str, destination: str) -> dict | None:
    return next(
        (e for e in result["edges"] if (e["source"], e["destination"]) == (source, destination)), None
    )


def test_map_edges_count_packets_bytes_and_drops(lab, capsys):
    node = lab.node
    sink = udp_sink(node["c"], 7400)
    try:
        send_udp(node["e"], node["c"].ip, 7400, 30)  # cache -> api: delivered
        sink.settimeout(5)
        for _ in range(30):  # all read before the socket closes (else: NO_SOCKET drops)
            sink.recv(2048)
    finally:
        sink.close()
    send_udp(node["a"], node["b"].ip, 7401, 10)  # web -> db: dropped by b's policy

    last: dict = {}

    def mapped():
        nonlocal last
        code, out = run_map(lab, capsys, "-o", "json")
        assert code == 0, out
        last = json.loads(out)
        e = edge(last, CACHE, API)
        return e and e["packets"] >= 30 and (edge(last, WEB, DB) or {}).get("drops", 0) >= 10

    with contextlib.suppress(TimeoutError):  # the assertions below show the last map
        wait_for(mapped, 40, 1.0, "the edges in Prometheus")
    result = last
    cache_api = edge(result, CACHE, API)
    assert cache_api is not None, result
    assert (cache_api["packets"], cache_api["bytes"], cache_api["drops"]) == (30, 30 * FRAME, 0)
    web_db = edge(result, WEB, DB)
    assert web_db["drops"] >= 10 and web_db["drop_ratio"] == 1.0  # every web -> db packet
    assert {CACHE, API, WEB, DB} <= set(result["nodes"])

    code, out = run_map(lab, capsys, "-n", "shop", "-o", "json")
    shop = json.loads(out)
    assert edge(shop, CACHE, API) is None and edge(shop, WEB, DB) is not None

    code, out = run_map(lab, capsys)
    assert code == 0
    [row] = [line for line in out.splitlines() if line.startswith(f"{CACHE} ")]
    assert row.split() == [CACHE, API, "30", str(30 * FRAME), "0", "0.0", "0", "0"]


def test_map_draws_svg_and_png(lab, capsys, tmp_path):
    svg, png = tmp_path / "map.svg", tmp_path / "map.png"
    assert run_map(lab, capsys, "-o", "svg", "--file", str(svg))[0] == 0
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert "shop/web" in text and "data/db" in text
    assert run_map(lab, capsys, "-o", "png", "--file", str(png))[0] == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_map_dns_errors_on_the_asking_workload(lab, capsys):
    # test_verdicts' NXDOMAIN scenario, if it ran, put DNS errors on web -> coredns; the edge
    # exists only when it did, so ask Prometheus itself for the truth and compare.
    answers = lab.prometheus.query(
        "sum(last_over_time(networkobservability_adv_dns_response_count{"
        'destination_workload_name="web", return_code="NXDOMAIN"}[15m]))'
    )
    code, out = run_map(lab, capsys, "-o", "json")
    result = json.loads(out)
    errors = sum(e["dns_errors"] for e in result["edges"] if e["source"] == WEB)
    assert errors == (float(answers[0]["value"][1]) if answers else 0)


def test_map_rejects_bad_values(lab, capsys, tmp_path):
    assert run_map(lab, capsys, "--since", "-5m")[0] == 2
    code, out = run_map(lab, capsys, "-o", "svg", "--file", str(tmp_path))
    assert code == 2 and "is a folder" in out
    code, out = main(["map", "--prometheus", "ftp://x"]), capsys.readouterr().err
    assert code == 1 and "not an http(s) URL" in out
