"""python -m sandbox.webapp --kubeconfig K --state-dir D [--port 0] [--behaviours FILE]
    [--service NS/NAME]... [--ingress NS/NAME]...

Runs the sample web service until SIGTERM or SIGINT; writes D/webapp.json ({"pid", "url"}).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from sandbox import httpserver
from sandbox.webapp.server import INFO_FILE, WebAppServer, api_from_kubeconfig


def _namespaced(text: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: give a service or an ingress as NAMESPACE/NAME")
    return namespace, name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.webapp", description="Sample web service for the sandbox"
    )
    parser.add_argument(
        "--kubeconfig", type=Path, required=True, help="kubeconfig of the (fake) API server to read"
    )
    parser.add_argument("--state-dir", type=Path, required=True, help="where webapp.json goes")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--behaviours", type=Path, help="JSON or YAML map of image pattern -> behaviour")
    parser.add_argument(
        "--no-tag-conventions", action="store_true", help="ignore bad-health/errN/slow in tags"
    )
    for flag, kind in (("--service", "Service"), ("--ingress", "Ingress")):
        parser.add_argument(
            flag,
            type=_namespaced,
            action="append",
            default=[],
            help=f"{kind} NS/NAME to track from the start",
        )
    parser.add_argument("--rate", type=float, default=50.0, help="synthetic requests per second per service")
    parser.add_argument(
        "--window", type=float, default=5.0, help="seconds of requests the error rate and latency cover"
    )
    args = parser.parse_args(argv)

    kube_url, token = api_from_kubeconfig(args.kubeconfig)
    behaviours = yaml.safe_load(args.behaviours.read_text()) if args.behaviours else None
    state = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    server = WebAppServer(
        kube_url,
        host=args.host,
        port=args.port,
        token=token,
        behaviours=behaviours,
        tag_conventions=not args.no_tag_conventions,
        services=args.service,
        ingresses=args.ingress,
        rate=args.rate,
        window=args.window,
    )
    server.start()
    httpserver.serve_until_signal(server, state / INFO_FILE)


if __name__ == "__main__":
    main()
