"""The pod-level series store: cumulative values, expiry by last change, the cap, and the
exposition text (rendered in chunks, joined it is the same text as line by line)."""

from __future__ import annotations

from retina_agent.podlevel.series import SeriesStore

METRIC = "adv_forward_count"


def test_values_accumulate_and_only_a_change_keeps_a_series_alive() -> None:
    store = SeriesStore(max_series=3)
    store.add(METRIC, ("a", "egress"), 5, now=100.0)
    store.add(METRIC, ("b", "egress"), 1, now=100.0)
    store.add(METRIC, ("a", "egress"), 2, now=110.0)
    store.add(METRIC, ("b", "egress"), 0, now=110.0)  # seen, unchanged: does not refresh it
    assert dict(store.items(METRIC)) == {("a", "egress"): 7, ("b", "egress"): 1}
    store.expire({METRIC: 15.0}, now=120.0)
    assert dict(store.items(METRIC)) == {("a", "egress"): 7}
    assert store.expired == {METRIC: 1} and store.count == 1


def test_past_the_cap_new_series_are_refused_and_counted() -> None:
    store = SeriesStore(max_series=2)
    for pod in ("a", "b", "c", "d"):
        store.add(METRIC, (pod,), 1, now=1.0)
    store.add(METRIC, ("a",), 1, now=2.0)  # existing series still count
    assert dict(store.items(METRIC)) == {("a",): 2, ("b",): 1}
    assert store.overflow == {METRIC: 2} and store.cap_reached


def test_render_in_chunks_is_the_exposition_text_of_every_series() -> None:
    store = SeriesStore(max_series=10)
    for i in range(5):
        store.add(METRIC, (f"pod-{i}", "ingress"), i + 0.5 if i == 4 else i + 1, now=1.0)
    store.add(METRIC, ('we"ird\\pod\n', "egress"), 3, now=1.0)
    store.add(METRIC, ("wrong", "width", "skipped"), 1, now=1.0)
    chunks = list(store.render(METRIC, "m", ["podname", "direction"], lines_per_chunk=2))
    assert len(chunks) == 3
    assert "".join(chunks) == (
        'm{podname="pod-0",direction="ingress"} 1\n'
        'm{podname="pod-1",direction="ingress"} 2\n'
        'm{podname="pod-2",direction="ingress"} 3\n'
        'm{podname="pod-3",direction="ingress"} 4\n'
        'm{podname="pod-4",direction="ingress"} 4.5\n'
        'm{podname="we\\"ird\\\\pod\\n",direction="egress"} 3\n'
    )
    assert "".join(store.render(METRIC, "m", ["podname", "direction"])) == "".join(chunks)
