"""eBPF plumbing: compile in a throw-away child with bcc, hold the fds in the agent.

The agent process never imports bcc: importing it alone maps LLVM and costs about 66 MB of
RSS. Instead ``loader`` runs in a child process, compiles and loads each plugin's program,
attaches its tracepoints and sends every map, program and perf-event fd back over a Unix
socket (SCM_RIGHTS). The agent keeps those fds (so the attachments live), reads maps through
libbpf (``maps``) and attaches TC programs itself (``retina_agent.tc``).
"""
