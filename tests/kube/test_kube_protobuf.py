"""Decoding kubectl's protobuf bodies: Go value fields are always on the wire, so zero
means unset, except for pointer fields; unknown non-zero fields are refused."""

from __future__ import annotations

import pytest

from sandbox.kube import errors
from sandbox.kube.protobuf import MAGIC, decode


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def f(number: int, value: int | str | bytes) -> bytes:
    """One field: an int as a varint, text or bytes length-delimited."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def body(api_version: str, kind: str, *fields: bytes) -> bytes:
    raw = b"".join(fields)
    return MAGIC + f(1, f(1, api_version) + f(2, kind)) + f(2, raw) + f(3, "") + f(4, "")


META = f(1, f(1, "web") + f(2, "") + f(7, 0) + f(8, b"") + f(11, f(1, "app") + f(2, "web")))


def test_zero_value_fields_read_as_unset() -> None:
    assert decode(body("v1", "Namespace", META, f(2, b""), f(3, f(1, "")))) == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "web", "labels": {"app": "web"}},
    }


def test_pointer_fields_keep_their_zero() -> None:
    spec = f(1, 0) + f(5, 0) + f(7, 0)  # replicas (pointer) 0, minReadySeconds 0, paused false
    assert decode(body("apps/v1", "Deployment", META, f(2, spec)))["spec"] == {"replicas": 0}


@pytest.mark.parametrize(
    ("int_or_string", "expected"),
    [(f(1, 0) + f(2, 8080) + f(3, ""), 8080), (f(1, 1) + f(2, 0) + f(3, "http"), "http")],
)
def test_int_or_string(int_or_string: bytes, expected: int | str) -> None:
    port = f(1, "") + f(2, "TCP") + f(3, 80) + f(4, int_or_string)
    svc = decode(body("v1", "Service", META, f(2, f(1, port))))
    assert svc["spec"]["ports"] == [{"protocol": "TCP", "port": 80, "targetPort": expected}]


def test_secret_bytes_become_base64() -> None:
    secret = decode(body("v1", "Secret", META, f(2, f(1, "password") + f(2, b"hunter2")), f(3, "Opaque")))
    assert (secret["data"], secret["type"]) == ({"password": "aHVudGVyMg=="}, "Opaque")


def test_unknown_zero_field_is_ignored_but_unknown_data_is_refused() -> None:
    assert decode(body("v1", "ConfigMap", META, f(99, "")))["metadata"]["name"] == "web"
    with pytest.raises(errors.UnsupportedMediaType, match="field number 99 of ConfigMap"):
        decode(body("v1", "ConfigMap", META, f(99, "surprise")))


def test_kind_without_a_schema_is_refused() -> None:
    with pytest.raises(errors.UnsupportedMediaType, match="v1 Pod is not a kind the sandbox decodes"):
        decode(body("v1", "Pod", META))
