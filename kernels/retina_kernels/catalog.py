"""Which kernels the matrix boots: Debian's kernel packages by suite and flavour."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kernel:
    """A Debian kernel, named by what users call it (``5.10``, ``6.1-cloud``)."""

    name: str
    suite: str  # the Debian suite whose kernel this is
    flavour: str  # amd64 (generic) or cloud-amd64 (virtio and cloud drivers, fewer modules)

    @property
    def meta_package(self) -> str:
        """The meta package that depends on the suite's current ABI (linux-image-amd64)."""
        return f"linux-image-{self.flavour}"


KERNELS: dict[str, Kernel] = {
    k.name: k
    for k in (
        Kernel("5.10", "bullseye", "amd64"),
        Kernel("6.1", "bookworm", "amd64"),
        Kernel("6.1-cloud", "bookworm", "cloud-amd64"),
        Kernel("6.12", "trixie", "amd64"),
    )
}

#: The root file system every kernel boots: Debian 12 with the agent image's packages (no kernel
#: headers: the agent's BPF objects are compiled at build time and take offsets from BTF).
ROOTFS_SUITE = "bookworm"


def parse_kernels(text: str) -> list[Kernel]:
    """``5.10,6.1`` -> kernels; unknown names are a clear error naming the known ones."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in KERNELS]
    if unknown or not names:
        raise ValueError(
            f"--kernels: unknown kernel(s) {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(KERNELS)}"
        )
    return [KERNELS[n] for n in names]
