"""Buckets as labs meet them, on real S3 APIs over HTTP (moto): a public one read by anyone
through its bucket policy alone (OpenNeuro's, HBN's), and the lab's own, on a second server
that enforces IAM, in eu-west-1, written only with the lab user's key (a named profile).

``tests/unit/shared/test_store_sources.py`` explains what each moto server checks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

LAB_REGION = "eu-west-1"


@dataclass(frozen=True)
class Lab:
    endpoint: str
    bucket: str
    key_id: str
    secret: str

    def credentials_file(self, path: Path) -> Path:
        """An AWS shared-credentials file: profile ``lab`` with the lab user's key, and
        ``stale`` with a wrong secret."""
        path.write_text(
            f"[lab]\naws_access_key_id = {self.key_id}\naws_secret_access_key = {self.secret}\n"
            f"[stale]\naws_access_key_id = {self.key_id}\naws_secret_access_key = not-it\n"
        )
        return path


def admin(endpoint: str, region: str = "us-east-1", key: str = "admin", secret: str = "x") -> Any:
    # Explicit keys: the set-up works whatever a test did to the environment's credentials.
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


@contextmanager
def lab_endpoint(log: Path) -> Iterator[Lab]:
    """The lab's own endpoint: a moto process enforcing IAM, with a bucket in eu-west-1 and one
    user allowed to read and write it (set up by its first 4 requests, unchecked)."""
    from tests.faults.netcut import iam_enforcing_s3

    with iam_enforcing_s3(log, unauthenticated_calls=4) as endpoint:
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="admin",
            aws_secret_access_key="x",
        )
        iam.create_user(UserName="lab")
        actions = ["s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:DeleteObject"]
        policy = {"Effect": "Allow", "Action": actions, "Resource": "*"}
        iam.put_user_policy(
            UserName="lab",
            PolicyName="results",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [policy]}),
        )
        key = iam.create_access_key(UserName="lab")["AccessKey"]
        admin(endpoint, LAB_REGION).create_bucket(
            Bucket="lab-results", CreateBucketConfiguration={"LocationConstraint": LAB_REGION}
        )
        yield Lab(endpoint, "lab-results", key["AccessKeyId"], key["SecretAccessKey"])


def public_bucket(endpoint: str, name: str) -> str:
    """A bucket anyone may list and read, through its bucket policy only (no object ACLs)."""
    client = admin(endpoint)
    client.create_bucket(Bucket=name)
    statements = [
        {"Effect": "Allow", "Principal": "*", "Action": "s3:ListBucket",
         "Resource": f"arn:aws:s3:::{name}"},
        # s3:HeadObject is moto's name for HEAD; AWS would want s3:GetObject alone.
        {"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:HeadObject"],
         "Resource": f"arn:aws:s3:::{name}/*"},
    ]  # fmt: skip
    client.put_bucket_policy(
        Bucket=name, Policy=json.dumps({"Version": "2012-10-17", "Statement": statements})
    )
    return name
