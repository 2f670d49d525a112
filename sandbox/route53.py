"""The sandbox's DNS: a Route53 hosted zone on moto's server (the same one that serves S3).

moto keeps the zone in memory, like the bucket, so it lives as long as moto runs. What moto
5.2 does differently from AWS (seen with boto3 1.43): `change_resource_record_sets` answers
`Status: INSYNC` at once (AWS says PENDING for up to a minute), and `get_change` answers
INSYNC too, with the bare id (`C123...`, no `/change/` prefix). Names come back with their
trailing dot (`db.sandbox.internal.`); values as they were given (a CNAME's target keeps no
dot). The zone's first request takes ~0.5 s while moto loads its Route53 backend.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from sandbox.s3 import REGION
from tasks.errors import PermanentError

# (name, type, ttl, value): one resource record set with one value.
Record = tuple[str, str, int, str]


def client(endpoint: str, access_key: str, secret_key: str):  # type: ignore[no-untyped-def]
    """A boto3 Route53 client for moto at `endpoint`, never going through a proxy."""
    return boto3.client(
        "route53",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(proxies={}, retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=3, read_timeout=10),
    )


def create_zone(endpoint: str, access_key: str, secret_key: str, zone: str, records: Iterable[Record]) -> str:
    """Create the public hosted zone `zone` (like `example.internal.`) holding `records`;
    returns its id without the `/hostedzone/` prefix, as configs carry it."""
    route53 = client(endpoint, access_key, secret_key)
    try:
        answer = route53.create_hosted_zone(Name=zone, CallerReference=f"runbook-sandbox-{secrets.token_hex(8)}")
    except (BotoCoreError, ClientError) as exc:
        raise PermanentError(f"creating the Route53 zone {zone!r} on {endpoint}: {exc}") from None
    zone_id = str(answer["HostedZone"]["Id"]).rsplit("/", 1)[-1]
    upsert(endpoint, access_key, secret_key, zone_id, records)
    return zone_id


def upsert(endpoint: str, access_key: str, secret_key: str, zone_id: str, records: Iterable[Record]) -> None:
    """UPSERT `records` into the zone in one change batch."""
    changes = [
        {"Action": "UPSERT", "ResourceRecordSet": {"Name": name, "Type": kind, "TTL": ttl,
                                                   "ResourceRecords": [{"Value": value}]}}
        for name, kind, ttl, value in records
    ]
    try:
        client(endpoint, access_key, secret_key).change_resource_record_sets(
            HostedZoneId=zone_id, ChangeBatch={"Comment": "Runbook Flows sandbox", "Changes": changes})
    except (BotoCoreError, ClientError) as exc:
        raise PermanentError(f"changing records of Route53 zone {zone_id} on {endpoint}: {exc}") from None


def lookup(endpoint: str, access_key: str, secret_key: str, zone_id: str, name: str, kind: str) -> list[str]:
    """The values of record `name` of type `kind` in the zone ([] if there is none).
    Raises BotoCoreError or ClientError when moto does not answer."""
    wanted = name.rstrip(".").lower() + "."
    answer = client(endpoint, access_key, secret_key).list_resource_record_sets(
        HostedZoneId=zone_id, StartRecordName=wanted, StartRecordType=kind, MaxItems="1")
    return [
        str(r["Value"])
        for rrset in answer["ResourceRecordSets"]
        if rrset["Name"].lower() == wanted and rrset["Type"] == kind
        for r in rrset.get("ResourceRecords", [])
    ]
