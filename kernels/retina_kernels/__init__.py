"""The agent and preflight on Debian's real kernels, booted under qemu: ``retina-kernel-matrix``."""
