"""eBPF plumbing: BPF C compiled when the package is built, loaded in a throw-away child.

``build`` compiles the C beside this package into ``objects/*.bpf.o`` (clang, at package or
image build time). At run time ``loader`` runs in a child process: it opens each plugin's
object with libbpf (``libbpf.so.1``, through ``libbpf``), sets its load-time constants, loads
it, attaches its tracepoints and sends every map, program and perf-event fd back over a Unix
socket (SCM_RIGHTS). The agent keeps those fds (so the attachments live), reads maps through
libbpf (``maps``) and attaches TC programs itself (``retina_agent.tc``).
"""
