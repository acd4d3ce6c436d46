"""What a resume asks of object storage: objects listed and read, consolidated or not (issue 20).

    .venv/bin/python -m bench.s3_state --rows 1000000     # 2M candidates (2 a row)

A synthetic output (bench/scale.py: one candidate in sixteen written with its file and
embedding) goes to a moto server on loopback twice: as an older release left it (every shard
and sidecar, no `_state/`) and consolidated (after the first compaction: one file per range).
Then the resume of a rerun (`State`, `Joined`, `resume.to_do`: run_job's phase 4) runs against
each, through the pipeline's own S3 client, while the server counts what it was asked: list
requests and the keys they returned, GETs (ranged reads of one object count once each) and
the distinct objects read. The server runs in this process: wall times include its work.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, machine, table  # noqa: E402

BUCKET = "bench-state"
KEY = re.compile(rb"<Key>")


class Counted:
    """WSGI middleware: every request to the bucket by kind, the keys list responses named, the
    objects GETs read."""

    def __init__(self, app):
        self.app, self.requests, self.listed, self.read = app, Counter(), 0, set()

    def reset(self) -> None:
        self.requests, self.listed, self.read = Counter(), 0, set()

    def __call__(self, environ, start_response):
        method, path, query = environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
        key = path.split("/", 2)[2] if path.count("/") >= 2 else ""
        listing = method == "GET" and not key and ("list-type" in query or "prefix" in query or not query)
        kind = "list" if listing else f"{method.lower()}{'' if key else ' (bucket)'}"
        self.requests[kind] += 1
        if method == "GET" and key:
            self.read.add(key)
        body = self.app(environ, start_response)
        if not listing:
            return body
        data = b"".join(body)
        self.listed += len(KEY.findall(data))
        return [data]


def serve() -> tuple[str, Counted]:
    """A moto S3 server on a free loopback port, its requests counted."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    counted = Counted(DomainDispatcherApplication(create_backend_app))

    class Server(ThreadedMotoServer):
        def _server_entry(self) -> None:
            self._server = make_server("127.0.0.1", port, counted, True, request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    Server("127.0.0.1", port, verbose=False).start()
    return f"http://127.0.0.1:{port}", counted


def upload(fs, local: Path, prefix: str, names: list[str]) -> int:
    """The output folder's `names` (folders or files) under `prefix` in the bucket; how many files."""
    paths = [p for n in names if (local / n).exists()
             for p in ([local / n] if (local / n).is_file() else (local / n).rglob("*")) if p.is_file()]
    fs.put([str(p) for p in paths], [f"{BUCKET}/{prefix}/{p.relative_to(local).as_posix()}" for p in paths])
    return len(paths)


def resume_counted(uri: str, plan, counted: Counted) -> dict:
    """run_job's phase 4 against `uri`, and what the server was asked meanwhile."""
    from pipeline.run import resume
    from pipeline.run.joined import Joined
    from pipeline.run.state import State
    from pipeline.storage.store import Output

    with tempfile.TemporaryDirectory(prefix="s3-state-") as work:
        counted.reset()
        t0 = time.perf_counter()
        state = State(Output(uri), Path(work), expected=plan.num_rows)
        joined = Joined(state, [plan], Path(work))
        todo = resume.to_do(joined)
        joined.close()
        state.close()
        s = time.perf_counter() - t0
    assert todo.candidates == 0, todo
    return {"s": s, "ranges": len(state.prefixes()), "requests": dict(counted.requests),
            "list_requests": counted.requests["list"], "objects_listed": counted.listed,
            "get_requests": counted.requests["get"], "objects_read": len(counted.read)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="manifest rows (2 candidates each)")
    ap.add_argument("--json")
    args = ap.parse_args()

    from bench.scale import _bench_paths, phase_compaction, phase_plan, phase_synthesize, write_inputs

    endpoint, counted = serve()
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_REGION": "us-east-1"}.items():
        os.environ[key] = value
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(BUCKET)
    uri = f"s3://{BUCKET}/out"
    result: dict = {"bench": "s3_state", "rows": args.rows, "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="s3-state-") as tmp:
        job = write_inputs(Path(tmp), args.rows, 2)
        result["candidates"] = phase_plan(str(job))["candidates"]
        result["synthesized"] = phase_synthesize(str(job))
        _, _, _, plan = _bench_paths(str(job))
        out = Path(tmp) / "out"
        t0 = time.perf_counter()
        result["uploaded"] = upload(fs, out, "out", ["_shards", "_embeddings", "images"])
        result["upload_s"] = time.perf_counter() - t0
        result["older_release"] = resume_counted(uri, plan, counted)
        # the first compaction, here, then its outcome mirrored: the range files and results up,
        # the shards, sidecars and strays it removed gone
        before = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
        result["compaction"] = phase_compaction(str(job), first_run=True)
        after = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
        upload(fs, out, "out", ["_state", "results.parquet"])
        fs.rm([f"{BUCKET}/out/{rel}" for rel in sorted(before - after)])
        result["consolidated"] = resume_counted(uri, plan, counted)
    rows = []
    for name in ("older_release", "consolidated"):
        r = result[name]
        rows.append((f"resume on S3, {name.replace('_', ' ')}, {result['candidates']:,} candidates",
                     f"{r['list_requests']:,} list requests naming {r['objects_listed']:,} objects; "
                     f"{r['get_requests']:,} GETs of {r['objects_read']:,} objects; {r['s']:.1f} s"))
    print(table(rows, "resume against moto on loopback"))
    emit(result, "s3_state", args.json)


if __name__ == "__main__":
    main()
