"""``python -m retina_capture.operator``: run the capture operator for every namespace."""

import sys

from kopf.cli import main as kopf_main

if __name__ == "__main__":
    sys.argv = [
        "kopf",
        "run",
        "--all-namespaces",
        "--standalone",
        "-m",
        "retina_capture.operator.handlers",
        *sys.argv[1:],
    ]
    sys.exit(kopf_main())
