"""boto3's upload wrapper is classified like the ClientError inside it."""

from __future__ import annotations

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError

from shared.errors import PermanentStoreError, TransientError
from shared.store.s3 import _s3_errors


def _upload_failure(code: str, status: int) -> None:
    error = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    try:
        raise ClientError(error, "PutObject")  # type: ignore[arg-type]
    except ClientError as exc:
        raise S3UploadFailedError(f"Failed to upload: {exc}") from exc


def test_denied_upload_is_permanent_and_a_5xx_upload_is_transient() -> None:
    with pytest.raises(PermanentStoreError, match="AccessDenied"), _s3_errors("s3://b/k"):
        _upload_failure("AccessDenied", 403)
    with pytest.raises(TransientError, match="HTTP 503"), _s3_errors("s3://b/k"):
        _upload_failure("ServiceUnavailable", 503)
