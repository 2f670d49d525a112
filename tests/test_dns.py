"""Route53 (tasks/dns.py) against the sandbox's moto server, in a hosted zone of the test's own.

moto answers every change INSYNC at once; PENDING is played by the sandbox's fault proxy in
front of moto, answering get_change as Route53 does while a change propagates."""

from __future__ import annotations

import secrets
import traceback
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest
from botocore.config import Config

from sandbox import httpserver
from tasks import dns
from tasks.config import DnsConfig, SecretRef
from tasks.dns import RecordValue
from tasks.errors import ConfigError, PermanentError, TransientError

ACCESS_KEY = f"AKIADNSTEST{secrets.token_hex(4).upper()}"
SECRET_KEY = f"dns-secret-{secrets.token_hex(12)}"


def _with(config: DnsConfig, **changes: Any) -> DnsConfig:
    return config.model_copy(update=changes)


def _admin(sandbox: Any) -> Any:
    return boto3.client("route53", endpoint_url=sandbox.s3_endpoint, region_name=sandbox.s3_region,
                        aws_access_key_id=sandbox.s3_access_key, aws_secret_access_key=sandbox.s3_secret_key,
                        config=Config(proxies={}))


@pytest.fixture
def zone(sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """A hosted zone test-dns-<random>.internal. of this test's own: (zone id, zone name)."""
    monkeypatch.setenv("TEST_DNS_ACCESS_KEY", ACCESS_KEY)
    monkeypatch.setenv("TEST_DNS_SECRET_KEY", SECRET_KEY)
    admin = _admin(sandbox)
    name = f"test-dns-{secrets.token_hex(4)}.internal."
    zone_id = admin.create_hosted_zone(Name=name, CallerReference=name)["HostedZone"]["Id"].removeprefix("/hostedzone/")
    yield zone_id, name
    for rrset in admin.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]:
        if rrset["Type"] not in ("NS", "SOA"):
            admin.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={
                "Changes": [{"Action": "DELETE", "ResourceRecordSet": rrset}]})
    admin.delete_hosted_zone(Id=zone_id)


@pytest.fixture
def config(sandbox: Any, zone: tuple[str, str]) -> DnsConfig:
    zone_id, name = zone
    return DnsConfig(zone_id=zone_id, record=f"db.{name}", ttl=60, endpoint_url=sandbox.s3_endpoint,
                     region=sandbox.s3_region, access_key_id=SecretRef(env="TEST_DNS_ACCESS_KEY"),
                     secret_access_key=SecretRef(env="TEST_DNS_SECRET_KEY"))


def _everything(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


@pytest.mark.parametrize(("name", "normal"), [
    ("db.sandbox.internal", "db.sandbox.internal."),  # as written in config
    ("db.sandbox.internal.", "db.sandbox.internal."),  # as Route53 answers: one trailing dot, never two
    ("DB.Sandbox.Internal", "db.sandbox.internal."),  # DNS names are case-insensitive
    ("\\052.sandbox.internal.", "*.sandbox.internal."),  # Route53's octal escape of a wildcard
])
def test_fqdn(name: str, normal: str) -> None:
    assert dns.fqdn(name) == normal


def test_upsert_points_the_record_at_the_target_and_reads_it_back(config: DnsConfig) -> None:
    with dns.client(config) as r53:
        assert dns.read_record(r53, config) is None
        change = dns.upsert_cname(r53, config, "primary.sandbox.internal", comment="failover test")
        assert change is not None and change.startswith("/change/")
        assert dns.read_record(r53, config) == RecordValue(
            dns.fqdn(config.record), "CNAME", 60, ("primary.sandbox.internal.",))


def test_a_second_upsert_to_the_same_target_changes_nothing(config: DnsConfig) -> None:
    with dns.client(config) as r53:
        assert dns.upsert_cname(r53, config, "primary.sandbox.internal") is not None
        assert dns.upsert_cname(r53, config, "PRIMARY.sandbox.internal.") is None  # the same name, spelt otherwise
        assert dns.upsert_cname(r53, _with(config, record=config.record.upper() + "."), "primary.sandbox.internal") \
            is None


def test_failing_over_repoints_the_record_and_a_new_ttl_is_a_change(config: DnsConfig) -> None:
    with dns.client(config) as r53:
        dns.upsert_cname(r53, config, "primary.sandbox.internal")
        assert dns.upsert_cname(r53, config, "replica.sandbox.internal") is not None
        assert dns.read_record(r53, config).values == ("replica.sandbox.internal.",)  # type: ignore[union-attr]
        assert dns.upsert_cname(r53, _with(config, ttl=5), "replica.sandbox.internal") is not None
        assert dns.read_record(r53, config).ttl == 5  # type: ignore[union-attr]


def test_read_record_ignores_the_names_listed_after_it(sandbox: Any, zone: tuple[str, str], config: DnsConfig) -> None:
    zone_id, name = zone
    _admin(sandbox).change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": [{
        "Action": "CREATE", "ResourceRecordSet": {"Name": f"dbz.{name}", "Type": "A", "TTL": 60,
                                                  "ResourceRecords": [{"Value": "10.0.0.9"}]}}]})
    with dns.client(config) as r53:
        assert dns.read_record(r53, config) is None


def test_a_record_of_another_type_is_refused_not_replaced(sandbox: Any, zone: tuple[str, str], config: DnsConfig) -> None:
    _admin(sandbox).change_resource_record_sets(HostedZoneId=zone[0], ChangeBatch={"Changes": [{
        "Action": "CREATE", "ResourceRecordSet": {"Name": dns.fqdn(config.record), "Type": "A", "TTL": 60,
                                                  "ResourceRecords": [{"Value": "10.0.0.5"}]}}]})
    with dns.client(config) as r53, pytest.raises(PermanentError, match=r"is a A record \(10\.0\.0\.5\)"):
        dns.upsert_cname(r53, config, "replica.sandbox.internal")


def test_wait_insync_returns_once_route53_says_insync(config: DnsConfig) -> None:
    with dns.client(config) as r53:
        change = dns.upsert_cname(r53, config, "primary.sandbox.internal")
        assert change is not None
        assert dns.wait_insync(r53, change, timedelta(seconds=5)) < 1
        assert dns.wait_insync(r53, change, 5.0) < 1  # seconds, as a float, too


def _pending(change_id: str = "/change/C2682N5HXP0BZ4") -> dict[str, Any]:
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<GetChangeResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><ChangeInfo>'
            f"<Id>{change_id}</Id><Status>PENDING</Status><SubmittedAt>2024-05-01T12:00:00.000Z</SubmittedAt>"
            "</ChangeInfo></GetChangeResponse>")
    return {"action": "respond", "status": 200, "body": body, "headers": {"Content-Type": "text/xml"}}


def test_wait_insync_polls_through_pending(sandbox: Any, s3_faults: Any, config: DnsConfig) -> None:
    s3_faults.add(method="GET", path="/2013-04-01/change/", count=2, **_pending())
    proxied = _with(config, endpoint_url=sandbox.s3_proxy_url)
    with dns.client(proxied) as r53:
        change = dns.upsert_cname(r53, proxied, "primary.sandbox.internal")
        assert change is not None
        dns.wait_insync(r53, change, timedelta(seconds=5), poll_s=0.05)
    assert [e["rule"] is not None for e in s3_faults.log() if e["path"].startswith("/2013-04-01/change/")] == \
        [True, True, False]


def test_wait_insync_gives_up_with_a_transient_error_while_still_pending(
        sandbox: Any, s3_faults: Any, config: DnsConfig) -> None:
    s3_faults.add(method="GET", path="/2013-04-01/change/", count=None, **_pending())
    proxied = _with(config, endpoint_url=sandbox.s3_proxy_url)
    with dns.client(proxied) as r53, pytest.raises(
            TransientError, match=r"^Route53 change /change/C2682N5HXP0BZ4 is still PENDING after 0.3 s"):
        dns.wait_insync(r53, "/change/C2682N5HXP0BZ4", timedelta(seconds=0.3), poll_s=0.05)


@pytest.mark.parametrize("zone_id", ["ZNOSUCHZONE0042", "/hostedzone/ZNOSUCHZONE0042"])
def test_a_wrong_zone_id_is_a_permanent_error_naming_it(config: DnsConfig, zone_id: str) -> None:
    wrong = _with(config, zone_id=zone_id)
    with dns.client(wrong) as r53:
        for attempt in (lambda: dns.read_record(r53, wrong), lambda: dns.upsert_cname(r53, wrong, "x.internal")):
            with pytest.raises(PermanentError, match=f"no hosted zone for record {dns.fqdn(config.record)} in zone "
                                                     f"'{zone_id}'") as info:
                attempt()
            assert ACCESS_KEY not in _everything(info.value) and SECRET_KEY not in _everything(info.value)


def test_credentials_never_appear_in_errors(config: DnsConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dns, "MAX_ATTEMPTS", 1)
    sock = httpserver.bind("127.0.0.1", 0)
    closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    errors = []
    with dns.client(_with(config, endpoint_url=closed)) as r53:
        with pytest.raises(TransientError, match="Route53 unreachable") as unreachable:
            dns.read_record(r53, config)
        errors.append(unreachable.value)
    with dns.client(config) as r53:
        outside = _with(config, record="db.elsewhere.internal")
        with pytest.raises(PermanentError, match=r"^Route53 refused the request on record db.elsewhere.internal. in "
                                                 r"zone '\w+' \(InvalidChangeBatch\): .*not permitted") as refused:
            dns.upsert_cname(r53, outside, "replica.sandbox.internal")
        errors.append(refused.value)
    for exc in errors:
        text = _everything(exc)
        assert ACCESS_KEY not in text and SECRET_KEY not in text, text


def test_one_key_without_the_other_is_a_config_error(config: DnsConfig) -> None:
    with pytest.raises(ConfigError, match="both access_key_id and secret_access_key, or neither"):
        with dns.client(_with(config, secret_access_key=None)):
            pass


def test_a_cname_to_itself_is_refused(config: DnsConfig) -> None:
    with dns.client(config) as r53, pytest.raises(ConfigError, match="cannot be a CNAME to itself"):
        dns.upsert_cname(r53, config, config.record.upper())


def test_an_endpoint_without_a_region_is_a_config_error(config: DnsConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ConfigError, match="needs a region to sign requests with"):
        with dns.client(_with(config, region=None)):
            pass
