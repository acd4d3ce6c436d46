"""Shared fixtures: embedded models are built once per session into a temporary cache."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def models_cache(tmp_path_factory):
    """Point `ASSET_PIPELINE_MODELS` at a session tmp dir: tests never touch the user's cache."""
    root = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASSET_PIPELINE_MODELS", str(root))
        yield root


class S3:
    """A real S3-compatible server (moto) on loopback; reached only through the standard
    environment variables, the way a user points the pipeline at MinIO or AWS."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True)


@pytest.fixture(scope="session")
def s3_server():
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch, request):
    """The server's endpoint and test credentials in the environment, and a fresh bucket."""
    import hashlib
    import re

    for key, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    store = S3(s3_server)
    digest = hashlib.blake2b(request.node.nodeid.encode(), digest_size=4).hexdigest()
    store.bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + digest
    store.fs().mkdir(store.bucket)
    return store


@pytest.fixture
def model_calls(monkeypatch):
    """How many candidates the models generated and measured, in this process (in-process runs)."""
    from pipeline.stages.candidate import CandidateStage
    from pipeline.stages.generate import Generator

    calls = {"generated": 0, "measured": 0}
    generate, measure = Generator.__call__, CandidateStage._measure

    def counted_generate(self, todo):
        calls["generated"] += len(todo)
        return generate(self, todo)

    def counted_measure(self, made, images):
        calls["measured"] += len(made)
        return measure(self, made, images)

    monkeypatch.setattr(Generator, "__call__", counted_generate)
    monkeypatch.setattr(CandidateStage, "_measure", counted_measure)
    return calls


@pytest.fixture
def tsa(tmp_path_factory):
    """A timestamp authority on loopback (tests/tsa_server.py), recording its requests."""
    from tests.tsa_server import LoopbackTSA

    server = LoopbackTSA(tmp_path_factory.mktemp("tsa"))
    yield server
    server.close()
