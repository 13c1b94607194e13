"""Inputs and outputs on an S3-protocol server (moto's, on loopback): a whole run from s3:// to
s3://, a driver killed after a shard is uploaded and the run resumed, readers (verify, inspect)
on the bucket, and credentials that never land in anything written or printed.

The credentials and the endpoint reach talkcurate only through the environment, as in production
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION); the test reads
the bucket back with its own boto3 client.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import media
import pytest
from moto.server import ThreadedMotoServer
from runs import Talkcurate, comparable, compared, manifest_of, shard_samples, talkcurate

from core.media_io import decode_audio
from train.data import ShardReader, list_samples

pytestmark = pytest.mark.slow

BUCKET = "talk"
SETTINGS = ["shards.max_samples_per_shard=1"]  # a shard per sample: shards are uploaded while the run goes on
RUN_ARGS = [f"s3://{BUCKET}/raw/", *(a for s in SETTINGS for a in ("--set", s)), "--no-progress"]


class _RequestCounter(logging.Handler):
    """Counts the GET requests moto's server logs (werkzeug's access log)."""

    def __init__(self):
        super().__init__()
        self.gets: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "GET /" in record.getMessage():
            self.gets.append(record.getMessage())


@dataclass
class S3:
    env: dict[str, str]  # what talkcurate gets: endpoint and credentials, nothing on its command line
    client: object
    requests: _RequestCounter
    inputs: dict[str, Path]  # object key -> local original

    @property
    def secrets(self) -> list[str]:
        return [self.env["AWS_SECRET_ACCESS_KEY"], self.env["AWS_ACCESS_KEY_ID"]]

    def names(self, prefix: str) -> set[str]:
        """Objects under `prefix` (relative), less the empty "folder/" markers pyarrow makes."""
        listed = self.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        return {o["Key"][len(prefix) :] for o in listed if not o["Key"].endswith("/")}

    def objects(self, prefix: str) -> dict[str, bytes]:
        return {
            name: self.client.get_object(Bucket=BUCKET, Key=prefix + name)["Body"].read() for name in self.names(prefix)
        }


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[S3]:
    access = logging.getLogger("werkzeug")
    counter = _RequestCounter()
    level, propagate = access.level, access.propagate
    access.addHandler(counter)
    access.setLevel(logging.INFO)
    access.propagate = False  # one line per request: not for the test's output
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
            "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket=BUCKET)
        # Three GRID shots in one file (a source that is half done when the driver dies), one more
        # GRID clip, and a clip without audio (a rejected row).
        cuts = tmp_path_factory.mktemp("s3_inputs") / "three shots.mp4"
        media.concat_shots(cuts, [(media.GRID[0], 3.0), (media.GRID[1], 3.0), (media.GRID[2], 3.0)])
        inputs = {f"raw/{p.name}": p for p in (cuts, media.GRID[3], media.NO_AUDIO)}
        for key, path in inputs.items():
            client.upload_file(str(path), BUCKET, key)
        yield S3(env, client, counter, inputs)
    finally:
        server.stop()
        access.removeHandler(counter)
        access.setLevel(level)
        access.propagate = propagate


def assert_no_secret(s3: S3, texts: dict[str, bytes]) -> None:
    for secret in s3.secrets:
        leaked = [name for name, data in texts.items() if secret.encode() in data]
        assert not leaked, f"a credential landed in {leaked}"


def test_inputs_are_read_from_the_bucket_in_few_requests(s3, monkeypatch):
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    key = f"raw/{media.GRID[3].name}"
    before = len(s3.requests.gets)
    audio = decode_audio(f"s3://{BUCKET}/{key}")
    gets = [line for line in s3.requests.gets[before:] if key in line]
    assert (audio == decode_audio(str(media.GRID[3]))).all() and len(audio) > 0
    # 377 KB through a 4 MB read buffer: a request or two, not one per FFmpeg read of 32 KB.
    assert 1 <= len(gets) <= 3, gets


def test_credentials_in_a_uri_are_refused_without_being_printed(s3, tmp_path):
    secret = s3.env["AWS_SECRET_ACCESS_KEY"]
    cases = [
        [f"s3://{s3.env['AWS_ACCESS_KEY_ID']}:{secret}@{BUCKET}/raw/", "--out", f"s3://{BUCKET}/refused/"],
        [f"s3://{BUCKET}/raw/", "--out", f"s3://{BUCKET}/refused/?secret_key={secret}"],
    ]
    for number, args in enumerate(cases):
        rc, stdout, stderr = talkcurate("run", *args, logs=tmp_path / f"refused{number}", env=s3.env)
        assert rc == 2, stdout + stderr
        assert "carries credentials" in stderr and "environment" in stderr, stderr
        assert secret not in stdout + stderr and "Traceback" not in stderr
    assert not s3.names("refused/")


def test_a_missing_bucket_is_a_clear_error(s3, tmp_path):
    rc, stdout, stderr = talkcurate(
        "run", media.GRID[0], "--out", "s3://no-such-bucket/out/", logs=tmp_path / "bucket", env=s3.env
    )
    assert rc == 2, stdout + stderr
    assert "s3://no-such-bucket/out/: cannot create the output folder" in stderr and "Traceback" not in stderr, stderr


def test_a_killed_run_resumes_on_the_bucket_to_the_uninterrupted_result(s3, tmp_path, monkeypatch):
    outputs: dict[str, bytes] = {}

    def output_of(proc: Talkcurate) -> str:
        text = proc.output()
        outputs[proc.stdout.name] = text.encode()
        return text

    # The reference: one uninterrupted run from the bucket into the bucket.
    with Talkcurate(["run", *RUN_ARGS, "--out", f"s3://{BUCKET}/clean/"], tmp_path / "clean", env=s3.env) as proc:
        assert proc.finish() == 0, output_of(proc)[-3000:]
        output_of(proc)
    clean = s3.objects("clean/")

    resumed = f"s3://{BUCKET}/resumed/"
    args = ["run", *RUN_ARGS, "--out", resumed]
    with Talkcurate(args, tmp_path / "killed", env=s3.env) as proc:
        proc.wait_for(lambda: any(n.endswith(".tar") for n in s3.names("resumed/shards/")), "the first uploaded shard")
        proc.kill_driver()
        output_of(proc)
    done_before = len(s3.names("resumed/.talkcurate/sources/"))
    assert "manifest.parquet" not in s3.names("resumed/")
    assert len([n for n in s3.names("resumed/shards/") if n.endswith(".tar")]) < len(
        json.loads(clean["index.json"])["shardlist"]
    )

    # What a kill between a shard's upload and its journal record leaves, and a temporary object:
    # both must go.
    first = min(n for n in s3.names("resumed/shards/") if n.endswith(".tar"))
    s3.client.copy_object(
        Bucket=BUCKET, Key="resumed/shards/shard-000999.tar", CopySource=f"{BUCKET}/resumed/shards/{first}"
    )
    s3.client.put_object(Bucket=BUCKET, Key="resumed/shards/.shard-000998.tar.partial", Body=b"half a shard")

    with Talkcurate(args, tmp_path / "resumed", env=s3.env) as proc:
        assert proc.finish() == 0, output_of(proc)[-3000:]
        processed = re.search(r"^(\d+) sources processed", output_of(proc), re.MULTILINE)
    assert processed and int(processed.group(1)) == len(s3.inputs) - done_before  # finished sources were skipped
    done = s3.objects("resumed/")

    assert compared(manifest_of(done)) == compared(manifest_of(clean))
    kept = {r["key"] for r in manifest_of(done) if r["status"] == "kept"}
    assert len(kept) == 4  # the four GRID shots; the clip without audio is a rejected row
    assert comparable(shard_samples(done)) == comparable(shard_samples(clean))  # none twice: shard_samples checks
    assert set(shard_samples(done)) == kept
    index = json.loads(done["index.json"])
    assert {e["url"] for e in index["shardlist"]} == {n for n in done if n.startswith("shards/")}
    assert not [n for n in done if n.endswith(".partial")]

    rc, stdout, stderr = talkcurate("verify", resumed, logs=tmp_path / "verify", env=s3.env)
    outputs["verify"] = (stdout + stderr).encode()
    assert rc == 0 and f"{len(index['shardlist'])} shards checked, 0 problems" in stdout, stdout + stderr
    rc, stdout, stderr = talkcurate("inspect", resumed, "--json", logs=tmp_path / "inspect", env=s3.env)
    outputs["inspect"] = (stdout + stderr).encode()
    assert rc == 0 and json.loads(stdout)["kept"] == len(kept), stderr

    # The trainer's reader on the bucket: the kept samples, their members read by random access.
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    samples, reader = shard_samples(done), ShardReader(resumed)
    listed = list_samples(resumed)
    assert {info.key for info in listed} == kept
    for info in listed:
        assert reader.read(info.shard, info.key, ["json", "wav"]) == {m: samples[info.key][m] for m in ("json", "wav")}

    # Neither credential is in any object written (journal, config fingerprint, manifest, KEY.json,
    # report) nor in anything the driver printed.
    written = {f"clean/{k}": v for k, v in clean.items()} | {f"resumed/{k}": v for k, v in done.items()}
    written |= {
        f"{key}.{suffix}": data for key, members in shard_samples(done).items() for suffix, data in members.items()
    }
    assert_no_secret(s3, written | outputs)
