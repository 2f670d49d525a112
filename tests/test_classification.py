"""Which failures are retried: decided by exception class and status code, never by text."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from tasks.errors import PermanentError, TransientError
from tasks.postgres import Server, server_answers
from tasks.storage import classify_s3_error


def client_error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (client_error(500, "InternalError"), TransientError),  # S3 5xx: retry
        (client_error(503, "SlowDown"), TransientError),  # throttling: retry with backoff
        (client_error(400, "RequestTimeout"), TransientError),  # idle socket closed by S3
        (client_error(429, "TooManyRequests"), TransientError),
        (client_error(403, "AccessDenied"), PermanentError),  # credentials: retrying will not help
        (client_error(404, "NoSuchBucket"), PermanentError),  # a typo in the bucket name
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), TransientError),  # connection refused/reset
    ],
    ids=["500", "slowdown", "request-timeout", "429", "access-denied", "no-such-bucket", "no-connection"],
)
def test_s3_errors_are_classified_by_status_and_code(exc: Exception, expected: type) -> None:
    assert isinstance(classify_s3_error(exc), expected)


def test_a_closed_port_does_not_answer_and_a_listening_one_does() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert server_answers(Server({"host": "127.0.0.1", "port": str(port)}))
    assert not server_answers(Server({"host": "127.0.0.1", "port": str(port)}), timeout=1)


def test_is_transient_retries_only_transient_errors() -> None:
    from prefect.states import Failed

    from tasks.retries import is_transient

    def state(exc: Exception) -> Any:
        return Failed(data=exc)

    assert is_transient(None, None, state(TransientError("reset")))
    assert not is_transient(None, None, state(PermanentError("auth")))
    assert not is_transient(None, None, state(ValueError("bug")))
