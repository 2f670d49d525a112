"""DNS: the record clients resolve a database by, in a Route53 hosted zone (boto3).

    with dns.client(config) as r53:
        change = dns.upsert_cname(r53, config, "replica.sandbox.internal")  # None: already there
        if change is not None:
            dns.wait_insync(r53, change, config.timeout)

Names are compared as fully qualified, lower case, with one trailing dot, and with
Route53's octal escapes (`\\052` for `*`) read back, so `db.sandbox.internal` and
`DB.sandbox.internal.` are one record. Only simple routing is managed: a record set with
a SetIdentifier (weighted, failover, latency routing) is refused, not overwritten.

Transient Route53 failures (5xx, Throttling, PriorRequestNotComplete, dropped connections)
are retried by botocore's "standard" mode; what is left over surfaces as `TransientError`,
and a missing zone, refused credentials or a rejected change as `PermanentError`, naming
the zone id and the record. No message carries a credential.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tasks.config import DnsConfig
from tasks.errors import ConfigError, PermanentError, TransientError
from tasks.redact import scrub

MAX_ATTEMPTS = 5  # per request, by botocore's standard mode (Route53 allows 5 requests/s per account)
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 30
POLL_S = 1.0  # first wait between two get_change calls, doubling
POLL_MAX_S = 10.0  # Route53 usually propagates within 60 s
LIST_MAX_ITEMS = "10"  # record sets read from the record's name on: every type it has


@dataclass(frozen=True)
class RecordValue:
    """A record set as Route53 holds it. `values` of a CNAME (and an alias's target) are
    normalized names; `ttl` is None for an alias."""

    name: str
    type: str
    ttl: int | None
    values: tuple[str, ...]
    alias: bool = False


def fqdn(name: str) -> str:
    """'DB.sandbox.internal' -> 'db.sandbox.internal.'; Route53's '\\052' -> '*'."""
    name = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), name.strip())
    return name.rstrip(".").lower() + "."


@contextlib.contextmanager
def client(config: DnsConfig) -> Iterator[Any]:
    """The Route53 client of `config`: its endpoint, region and credentials (from the
    SecretRefs, or the AWS chain when neither is given). `config.timeout` bounds the wait for
    a change (`wait_insync`), not a request."""
    import boto3
    from botocore.config import Config

    if (config.access_key_id is None) != (config.secret_access_key is None):
        raise ConfigError("dns: give both access_key_id and secret_access_key, or neither (the AWS chain)")
    creds: dict[str, str] = {}
    if config.access_key_id is not None and config.secret_access_key is not None:
        creds = {"aws_access_key_id": config.access_key_id.resolve(),
                 "aws_secret_access_key": config.secret_access_key.resolve()}
    r53 = boto3.session.Session().client(
        "route53",
        endpoint_url=config.endpoint_url,
        region_name=config.region,
        config=Config(retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
                      connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S),
        **creds,
    )
    if r53.meta.region_name is None:  # only with an endpoint_url: Route53's own endpoint is global
        r53.close()
        raise ConfigError(f"dns: endpoint_url {config.endpoint_url} needs a region to sign requests with "
                          "(Route53 signs with us-east-1): set region, or AWS_REGION")
    try:
        yield r53
    finally:
        r53.close()


def classify_route53_error(exc: Exception, where: str) -> Exception:
    """A botocore error as TransientError or PermanentError, by class and code; `where`
    (zone and record, or change id) goes into the message."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, NoCredentialsError

    if isinstance(exc, ClientError):
        meta = exc.response.get("ResponseMetadata", {})
        status = meta.get("HTTPStatusCode", 0)
        error = exc.response.get("Error", {})
        code, said = error.get("Code", ""), scrub(error.get("Message", "") or str(exc))
        attempts = f" after {meta['RetryAttempts'] + 1} attempt(s)" if "RetryAttempts" in meta else ""
        if status >= 500 or status == 429 or code in {"Throttling", "PriorRequestNotComplete"}:
            return TransientError(f"Route53 {code or status} on {where}{attempts}: {said}")
        if code == "NoSuchHostedZone":
            return PermanentError(f"Route53 has no hosted zone for {where}: {said}")
        return PermanentError(f"Route53 refused the request on {where} ({code or status}): {said}")
    if isinstance(exc, ConnectionError | HTTPClientError):
        return TransientError(f"Route53 unreachable on {where}: {scrub(str(exc))}")
    if isinstance(exc, NoCredentialsError):
        return PermanentError("Route53 credentials not found: set access_key_id/secret_access_key or the AWS chain")
    return exc


@contextlib.contextmanager
def _errors(where: str) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        classified = classify_route53_error(exc, where)
        if classified is exc:  # a bug of ours (bad parameters): as botocore said it
            raise
        raise classified from exc


def _where(config: DnsConfig) -> str:
    return f"record {fqdn(config.record)} in zone {config.zone_id!r}"


def read_record(client: Any, config: DnsConfig) -> RecordValue | None:
    """The record set named `config.record`, or None. When the name has several types
    (A and AAAA), its CNAME if any, else the first Route53 lists."""
    name = fqdn(config.record)
    with _errors(_where(config)):
        page = client.list_resource_record_sets(HostedZoneId=config.zone_id, StartRecordName=name,
                                                MaxItems=LIST_MAX_ITEMS)
    found = [r for r in page.get("ResourceRecordSets", []) if fqdn(r["Name"]) == name]
    if not found:
        return None
    routed = [r for r in found if "SetIdentifier" in r]
    if routed:
        ids = ", ".join(repr(r["SetIdentifier"]) for r in routed)
        raise PermanentError(f"{_where(config)} uses weighted, failover or latency routing (set identifiers {ids}); "
                             "only a simple record is managed here")
    chosen = next((r for r in found if r["Type"] == "CNAME"), found[0])
    return _record_value(chosen)


def _record_value(r: dict[str, Any]) -> RecordValue:
    if "AliasTarget" in r:
        return RecordValue(fqdn(r["Name"]), r["Type"], None, (fqdn(r["AliasTarget"]["DNSName"]),), alias=True)
    values = tuple(v["Value"] for v in r.get("ResourceRecords", []))
    if r["Type"] == "CNAME":
        values = tuple(fqdn(v) for v in values)
    return RecordValue(fqdn(r["Name"]), r["Type"], int(r["TTL"]) if "TTL" in r else None, values)


def upsert_cname(client: Any, config: DnsConfig, target: str, *, comment: str | None = None) -> str | None:
    """Point `config.record` at `target` with a CNAME of `config.ttl`; returns the change id
    to wait for, or None when the record already is that CNAME with that TTL (no change is
    made). A record of another type there is refused, not replaced."""
    name, target_name = fqdn(config.record), fqdn(target)
    if target_name == name:
        raise ConfigError(f"dns: {name} cannot be a CNAME to itself")
    current = read_record(client, config)
    if current is not None and current.type != "CNAME":
        kind = f"an alias {current.type}" if current.alias else f"a {current.type} record"
        raise PermanentError(f"{_where(config)} is {kind} ({', '.join(current.values)}); a CNAME cannot replace "
                             f"it: change it to a CNAME first")
    if current is not None and current.values == (target_name,) and current.ttl == config.ttl:
        return None
    batch: dict[str, Any] = {"Changes": [{"Action": "UPSERT", "ResourceRecordSet": {
        "Name": name, "Type": "CNAME", "TTL": config.ttl, "ResourceRecords": [{"Value": target_name}]}}]}
    if comment:
        batch["Comment"] = comment[:256]  # Route53's limit
    with _errors(_where(config)):
        resp = client.change_resource_record_sets(HostedZoneId=config.zone_id, ChangeBatch=batch)
    return str(resp["ChangeInfo"]["Id"])


def wait_insync(client: Any, change_id: str, timeout: timedelta | float, *, poll_s: float = POLL_S) -> float:
    """Seconds until Route53 reports the change INSYNC (on all its name servers). Raises
    TransientError when it is still PENDING after `timeout` (a timedelta, or seconds)."""
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    started = time.monotonic()
    deadline = started + seconds
    delay = poll_s
    while True:
        with _errors(f"change {change_id}"):
            status = client.get_change(Id=change_id)["ChangeInfo"]["Status"]
        if status == "INSYNC":
            return time.monotonic() - started
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransientError(f"Route53 change {change_id} is still {status} after {seconds:g} s: "
                                 "some name servers may still answer the old value")
        time.sleep(min(delay, left))
        delay = min(delay * 2, POLL_MAX_S)
