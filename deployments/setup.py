"""Set up a Prefect installation for runbook workers on a work pool (`prefect deploy --all`
with prefect.yaml), idempotently; `deployments/serve.py` does the same for itself:

    .venv/bin/python -m deployments.setup [--pool runbook-process]
        [--results s3://bucket/prefix --results-block runbook-results]
        [--silent-after 90]

- the process work pool, if missing;
- the two automations that mark a silent run Crashed and resume it (deployments/automations.py);
- with --results, an S3Bucket block (prefect-aws) for task results that every worker can
  read; the workers then need PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=s3-bucket/<block>.
  The block names no credentials: the workers' own AWS credentials (environment, instance
  profile) are used, so no secret is stored in Prefect.

It prints the settings the workers need. Run it again at any time: it changes only what
differs. Exit status: 0 done, 1 the API refused something, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from urllib.parse import urlparse

from deployments.automations import HEARTBEAT_SECONDS, SILENT_AFTER, ensure_automations

DEFAULT_POOL = "runbook-process"


def ensure_pool(name: str) -> str:
    """The process work pool `name`, created if missing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
            return f"work pool {name!r} exists (type {pool.type})"
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        except ObjectAlreadyExists:
            return f"work pool {name!r} exists"
        return f"created work pool {name!r} (process)"


def parse_results_url(url: str) -> tuple[str, str]:
    """s3://bucket[/prefix] -> (bucket, prefix); anything else is refused, naming it."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"--results {url!r} is not an S3 URL; expected s3://<bucket>[/<prefix>]")
    return parsed.netloc, parsed.path.strip("/")


def ensure_results_block(url: str, block: str, endpoint_url: str | None = None) -> str:
    """An S3Bucket block named `block` for results under `url`."""
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    bucket, prefix = parse_results_url(url)
    params = AwsClientParameters(endpoint_url=endpoint_url) if endpoint_url else AwsClientParameters()
    S3Bucket(bucket_name=bucket, bucket_folder=prefix,
             credentials=AwsCredentials(aws_client_parameters=params)).save(block, overwrite=True)
    return f"S3Bucket block {block!r} -> s3://{bucket}/{prefix}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.setup", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pool", default=DEFAULT_POOL, help=f"process work pool (default {DEFAULT_POOL})")
    parser.add_argument("--results", help="s3://bucket/prefix for task results shared by workers on several machines")
    parser.add_argument("--results-block", default="runbook-results", help="name of the S3Bucket block")
    parser.add_argument("--s3-endpoint", help="S3 endpoint URL, for an S3-compatible store (e.g. the sandbox's moto)")
    parser.add_argument("--silent-after", type=int, default=int(SILENT_AFTER.total_seconds()),
                        help=f"seconds without a heartbeat before a run is marked Crashed (default "
                             f"{SILENT_AFTER.total_seconds():.0f}, at least {2 * HEARTBEAT_SECONDS})")
    args = parser.parse_args(argv)
    if args.silent_after < 2 * HEARTBEAT_SECONDS:
        parser.error(f"--silent-after {args.silent_after}: at least {2 * HEARTBEAT_SECONDS} s, two heartbeats, "
                     "or a slow heartbeat would crash a live run")
    try:
        done = [ensure_pool(args.pool), *ensure_automations(timedelta(seconds=args.silent_after))]
        settings = [f"PREFECT_FLOWS_HEARTBEAT_FREQUENCY={HEARTBEAT_SECONDS}"]
        if args.results:
            done.append(ensure_results_block(args.results, args.results_block, args.s3_endpoint))
            settings.append(f"PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=s3-bucket/{args.results_block}")
    except ValueError as exc:
        parser.error(str(exc))
    except Exception as exc:  # noqa: BLE001 - the API's answer, said in one line
        print(f"setup failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for line in done:
        print(line)
    print("\nOn every worker, set:\n" + "\n".join(f"  export {s}" for s in settings))
    print(f"then: prefect worker start --pool {args.pool}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
