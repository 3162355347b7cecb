"""A program the kernel's verifier refuses: the plugin's error says why, not only "Permission denied".

bcc prints the verifier's whole log on stderr; the loader child keeps the instruction the
verifier stopped at and its reason (the two lines before ``processed N insns``), which is what
a user of an older kernel needs to report (the 5.10/6.1 verifiers refused the data path once,
and the agent said only "Failed to load BPF program b'dp_ingress': Permission denied").
"""

from __future__ import annotations

from retina_agent.bpf.client import load_programs
from retina_agent.bpf.spec import LoadError, ProgramSpec

# A length the verifier cannot bound (any u32): every verifier refuses it at the helper call.
UNBOUNDED_READ = r"""
int unbounded(struct __sk_buff *skb)
{
    u8 buf[16];
    bpf_skb_load_bytes(skb, 0, buf, skb->len);
    return 0;
}
"""


def test_a_refused_program_reports_the_verifiers_reason() -> None:
    good = ProgramSpec(
        plugin="good", source="int fine(struct __sk_buff *skb) { return 0; }", sched_cls=["fine"]
    )
    bad = ProgramSpec(plugin="bad", source=UNBOUNDED_READ, sched_cls=["unbounded"])
    results = load_programs([bad, good])
    error = results["bad"]
    assert isinstance(error, LoadError)
    message = str(error)
    assert "Failed to load BPF program b'unbounded': Permission denied" in message
    # the instruction it stopped at, and the register whose bound it lacked
    assert "verifier: " in message and "call bpf_skb_load_bytes" in message
    assert "R4 " in message.split("verifier: ", 1)[1]
    # the other spec of the same loader run is unaffected
    assert not isinstance(results["good"], LoadError)
    results["good"].close()
