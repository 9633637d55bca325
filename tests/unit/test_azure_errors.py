"""How Azure's answers become StoreError kinds: what the engine retries, skips or stops on depends on it."""

from __future__ import annotations

from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from datamover.backends.azure_blob import AzureBlobConfig, AzureBlobStore
from datamover.backends.base import ErrorKind


class _Response:
    """The part of an azure-core HTTP response its exceptions read."""

    def __init__(self, status: int, code: str) -> None:
        self.status_code = status
        self.reason = "Reason"
        self.headers = {"x-ms-error-code": code}
        self.request = None

    def text(self, encoding: str | None = None) -> str:
        return ""

    def body(self) -> bytes:
        return b""


def _error(kind: type[HttpResponseError], status: int, code: str) -> Any:
    error = kind(message=f"{code} answered {status}", response=_Response(status, code))  # type: ignore[arg-type]
    error.error_code = code
    return error


@pytest.fixture
def store() -> AzureBlobStore:
    return AzureBlobStore(AzureBlobConfig(container="c", account_url="http://127.0.0.1:9/devstoreaccount1",
                                          account_name="devstoreaccount1", account_key="a2V5"))


@pytest.mark.parametrize(("status", "code", "kind"), [
    (404, "BlobNotFound", ErrorKind.NOT_FOUND),
    (404, "CannotVerifyCopySource", ErrorKind.NOT_FOUND),  # the copy's source is gone
    (500, "CannotVerifyCopySource", ErrorKind.TRANSIENT),  # the service could not read it in time
    (503, "ServerBusy", ErrorKind.TRANSIENT),
])
def test_a_not_found_code_is_not_found_only_when_the_status_says_so(
        store: AzureBlobStore, status: int, code: str, kind: ErrorKind) -> None:
    error = store._error("PutBlockFromURL 1", "k", _error(ResourceNotFoundError, status, code))
    assert error.kind is kind, error.message
    assert code in error.message
