"""python -m sandbox.kube --port 0 --state-dir .sandbox/kube [--rules rules.json] [--token T]

Runs the fake Kubernetes API server until SIGTERM or SIGINT. Writes STATE_DIR/kubeconfig
and STATE_DIR/kube-server.json ({"pid", "url", "port", "kubeconfig"}), removed on exit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from sandbox import httpserver
from sandbox.kube.server import INFO_FILE, KUBECONFIG_FILE, KubeServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.kube", description="Fake Kubernetes API server for the sandbox"
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument(
        "--state-dir", type=Path, required=True, help="where kubeconfig and kube-server.json go"
    )
    parser.add_argument(
        "--rules", type=Path, help="JSON or YAML file of image rules (see sandbox/kube/rules.py)"
    )
    parser.add_argument(
        "--no-default-rules", action="store_true", help="drop the built-in tag rules (bad-crash, ...)"
    )
    parser.add_argument("--token", help="bearer token the server requires (default: none)")
    parser.add_argument("--tick", type=float, default=0.05, help="controller loop period, seconds")
    parser.add_argument("--ready-delay", type=float, default=0.2, help="seconds from pod start to Ready")
    args = parser.parse_args(argv)

    rules = yaml.safe_load(args.rules.read_text()) if args.rules else None
    state = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    server = KubeServer(
        host=args.host,
        port=args.port,
        rules=rules,
        default_rules=not args.no_default_rules,
        token=args.token,
        tick=args.tick,
        ready_delay=args.ready_delay,
    )
    server.start()
    try:
        kubeconfig = server.write_kubeconfig(state / KUBECONFIG_FILE)
    except BaseException:
        server.stop()
        raise
    httpserver.serve_until_signal(server, state / INFO_FILE, kubeconfig=str(kubeconfig))


if __name__ == "__main__":
    main()
