"""Run-dir URIs with credentials: redaction, joining before the query, forwarding of the
environment's AWS keys, and what `RunStorage` shows versus what it hands to stage tasks."""

from __future__ import annotations

import pytest

from dreamray.orchestration.storage import (
    RunStorage,
    StorageError,
    join_uri,
    redact_uri,
    train_storage_args,
    with_env_credentials,
)

EP = "endpoint_override=127.0.0.1:9000&scheme=http&region=us-east-1"


@pytest.mark.parametrize(("uri", "expected"), [
    ("/data/runs/a", "/data/runs/a"),
    (f"s3://b/p?{EP}", f"s3://b/p?{EP}"),
    (f"s3://AKIDX:s%2Fecret@b/p?{EP}", f"s3://***@b/p?{EP}"),
    ("s3://b/p?access_key=AKIDX&secret_key=sec&region=r", "s3://b/p?access_key=***&secret_key=***&region=r"),
    ("gs://b/p?session_token=t&X-Amz-Signature=s&sig=z", "gs://b/p?session_token=***&X-Amz-Signature=***&sig=***"),
    ("hdfs://user@host:8020/p", "hdfs://***@host:8020/p"),
])
def test_redact_uri_hides_userinfo_and_secret_query_values(uri, expected):
    assert redact_uri(uri) == expected


@pytest.mark.parametrize(("uri", "rel", "expected"), [
    (f"s3://b/p/?{EP}", "train/x", f"s3://b/p/train/x?{EP}"),
    ("s3://b/p/", "", "s3://b/p"),
    ("/", "ledger", "/ledger"),
    ("file:///", "a", "file:///a"),
    ("/runs/a", "", "/runs/a"),
])
def test_join_uri_inserts_before_the_query(uri, rel, expected):
    assert join_uri(uri, rel) == expected


def test_env_credentials_ride_in_s3_uris_only(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDX")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a/b+c")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    assert with_env_credentials(f"s3://b/p?{EP}") == f"s3://AKIDX:a%2Fb%2Bc@b/p?{EP}"
    assert with_env_credentials("s3://K:S@b/p") == "s3://K:S@b/p"  # the URI's own win
    assert with_env_credentials("gs://b/p") == "gs://b/p"
    assert with_env_credentials("/local/p") == "/local/p"
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok")  # cannot ride along: leave it to the nodes
    assert with_env_credentials("s3://b/p") == "s3://b/p"


def test_run_storage_shows_redacted_and_opens_with_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDX")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "topsecret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    storage = RunStorage(f"s3://b/runs/a/?{EP}")
    assert storage.uri == f"s3://b/runs/a?{EP}" and storage.root == "b/runs/a"
    assert storage.uri_of("ledger/x.json") == f"s3://b/runs/a/ledger/x.json?{EP}"
    assert storage.open_uri("train") == f"s3://AKIDX:topsecret@b/runs/a/train?{EP}"
    path, fs = train_storage_args(storage.open_uri("train"))
    assert path == "b/runs/a/train" and type(fs).__name__ == "S3FileSystem"


def test_secrets_in_the_given_uri_appear_in_no_message(tmp_path):
    own = RunStorage(f"s3://AKIDX:topsecret@b/p?{EP}")
    assert "topsecret" not in own.uri + own.uri_of("report.md") and "AKIDX" not in own.uri
    with pytest.raises(StorageError) as err:
        RunStorage(f"s3://b/p?{EP}&access_key=AKIDX&secret_key=topsecret")
    assert "topsecret" not in str(err.value) and "AKIDX" not in str(err.value)
    assert "secret_key=***" in str(err.value)
    assert train_storage_args(str(tmp_path)) == (str(tmp_path), None)
    assert train_storage_args(f"file://{tmp_path}") == (str(tmp_path), None)
