"""``retina-agent``: the node agent's command line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from retina_agent.config import PLUGIN_NAMES, ConfigError, load_config

LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "panic": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="retina-agent",
        description="eBPF network observability agent for a Kubernetes node. Serves "
        "Prometheus metrics with Retina's names on /metrics.",
    )
    p.add_argument(
        "--config",
        help="agent config YAML with Retina's keys (apiServer, enabledPlugin, metricsIntervalDuration, ...)",
    )
    p.add_argument(
        "--bind-address",
        "--host",
        dest="host",
        metavar="ADDRESS",
        help="listen address (apiServer.host, default 0.0.0.0); the DaemonSet passes "
        "the node's IP (status.podIP)",
    )
    p.add_argument("--port", type=int, help="listen port (apiServer.port, default 10093)")
    p.add_argument("--log-level", help="debug, info, warn, error (logLevel)")
    p.add_argument(
        "--enabled-plugin", help="comma-separated plugins (enabledPlugin): " + ", ".join(PLUGIN_NAMES)
    )
    p.add_argument("--metrics-interval", help="harvest interval, like 10s (metricsIntervalDuration)")
    p.add_argument("--state-dir", help="where TC state is kept across restarts (stateDir)")
    return p.parse_args(argv)


def overrides_from(args: argparse.Namespace) -> dict:
    overrides: dict = {}
    if args.host is not None:
        overrides["apiServer.host"] = args.host
    if args.port is not None:
        overrides["apiServer.port"] = args.port
    if args.log_level is not None:
        overrides["logLevel"] = args.log_level
    if args.enabled_plugin is not None:
        overrides["enabledPlugin"] = [p.strip() for p in args.enabled_plugin.split(",") if p.strip()]
    if args.metrics_interval is not None:
        overrides["metricsIntervalDuration"] = args.metrics_interval
    if args.state_dir is not None:
        overrides["stateDir"] = args.state_dir
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, overrides_from(args))
    except ConfigError as exc:
        print(f"retina-agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=LOG_LEVELS[config.log_level], format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from retina_agent.agent import Agent  # after logging, so imports can log

    try:
        agent = Agent(config)
    except OSError as exc:
        print(
            f"retina-agent: cannot listen on {config.api_server.host}:"
            f"{config.api_server.port}: {exc.strerror} (set apiServer.port or --port)",
            file=sys.stderr,
        )
        return 1
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    try:
        agent.start()
        if not agent.stopping.is_set():
            agent.run()
    finally:
        agent.shutdown()
        logging.getLogger("retina_agent").info("stopped; TC filters and programs removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
