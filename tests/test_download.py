"""Source downloads against a loopback HTTP server (127.0.0.1, stdlib) that misbehaves on purpose.

The server serves one payload and can cut the connection mid-file, ignore ``Range``, answer
503 or 404, or cut a chunked response; it logs every request so the tests can check what the
client asked for (a resumed request must start exactly where the cut left the file).
"""

from __future__ import annotations

import hashlib
import http.server
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from safetensors import safe_open

from rnet_hub.archives import download as _download
from rnet_hub.archives.download import download_to_cache
from rnet_hub.errors import DownloadError

PAYLOAD = os.urandom(3 * 1024 * 1024 + 12345)  # not a multiple of the client's 1 MiB chunks
CUT_AT = 1_300_001


@dataclass
class Behaviour:
    """How the server answers, and what it saw."""

    payload: bytes = PAYLOAD
    cuts_left: int = 0  # answers that stop after ``cut_at`` bytes and drop the connection
    cut_at: int = CUT_AT
    honour_range: bool = True
    fail_first_with: int | None = None  # one answer with this status before the good ones
    status: int = 200  # e.g. 404 for every answer
    chunked: bool = False
    requests: list[str | None] = field(default_factory=list)  # the Range header of each GET


def _handler(behaviour: Behaviour) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            behaviour.requests.append(self.headers.get("Range"))
            self.close_connection = True
            if behaviour.fail_first_with is not None:
                status, behaviour.fail_first_with = behaviour.fail_first_with, None
                return self._error(status)
            if behaviour.status != 200:
                return self._error(behaviour.status)
            start = self._range_start()
            body = behaviour.payload[start:]
            self.send_response(206 if start else 200)
            if start:
                size = len(behaviour.payload)
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self._send_body(body, cut=behaviour.cuts_left > 0)

        def _range_start(self) -> int:
            header = self.headers.get("Range")
            if not (header and behaviour.honour_range):
                return 0
            return int(header.removeprefix("bytes=").split("-", 1)[0])

        def _send_body(self, body: bytes, *, cut: bool) -> None:
            sent = body[:behaviour.cut_at] if cut else body
            behaviour.cuts_left -= int(cut)
            if behaviour.chunked:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(f"{len(body):x}\r\n".encode() + sent)
                if not cut:
                    self.wfile.write(b"\r\n0\r\n\r\n")
            else:
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(sent)
            self.wfile.flush()

        def _error(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[str, Behaviour]]]:
    """``serve(**behaviour) -> (url, behaviour)``: a loopback server for the duration of a test."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(name: str = "payload.bin", **kwargs: object) -> tuple[str, Behaviour]:
        behaviour = Behaviour(**kwargs)  # type: ignore[arg-type]
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(behaviour))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/models/{name}", behaviour

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_cut_connection_is_resumed_with_range(serve, tmp_path: Path) -> None:
    url, behaviour = serve(cuts_left=1)
    path = download_to_cache(url, cache_dir=tmp_path, progress=False)
    assert _sha256(path.read_bytes()) == _sha256(PAYLOAD)
    assert behaviour.requests == [None, f"bytes={CUT_AT}-"]  # resumed exactly where the cut left off
    assert _files(tmp_path) == [path]  # no .part left


def test_server_ignoring_range_restarts_the_download(serve, tmp_path: Path) -> None:
    url, behaviour = serve(cuts_left=1, honour_range=False)
    path = download_to_cache(url, cache_dir=tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD  # the 200 answer replaced the partial file instead of being appended
    assert behaviour.requests == [None, f"bytes={CUT_AT}-"]


def test_cut_chunked_response_is_resumed(serve, tmp_path: Path) -> None:
    url, behaviour = serve(cuts_left=1, chunked=True)
    path = download_to_cache(url, cache_dir=tmp_path, progress=False)  # http.client raises IncompleteRead here
    assert _sha256(path.read_bytes()) == _sha256(PAYLOAD)
    first, resumed = behaviour.requests
    assert first is None and 0 < int(resumed.removeprefix("bytes=").rstrip("-")) <= CUT_AT


def test_server_error_is_retried(serve, tmp_path: Path) -> None:
    url, behaviour = serve(fail_first_with=503)
    path = download_to_cache(url, cache_dir=tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert behaviour.requests == [None, None]


def test_missing_file_is_a_clear_error_without_retries(serve, tmp_path: Path) -> None:
    url, behaviour = serve(status=404)
    message = r"could not download http://127\.0\.0\.1:\d+/models/payload\.bin: HTTP 404"
    with pytest.raises(DownloadError, match=message):
        download_to_cache(url, cache_dir=tmp_path, progress=False)
    assert behaviour.requests == [None]
    assert _files(tmp_path) == []


def test_gives_up_after_the_last_attempt_and_resumes_later(serve, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_download, "MAX_ATTEMPTS", 2)
    url, behaviour = serve(cuts_left=2, cut_at=1_000_000)
    with pytest.raises(DownloadError, match=r"after 2 attempts.*download it yourself and pass the file"):
        download_to_cache(url, cache_dir=tmp_path, progress=False)
    (part,) = _files(tmp_path)
    assert part.name == "payload.bin.part" and part.stat().st_size == 2_000_000  # never looks finished
    path = download_to_cache(url, cache_dir=tmp_path, progress=False)  # the server has recovered
    assert path.read_bytes() == PAYLOAD
    assert behaviour.requests == [None, "bytes=1000000-", "bytes=2000000-"]


def test_cached_file_is_not_downloaded_again(serve, tmp_path: Path) -> None:
    url, behaviour = serve()
    first = download_to_cache(url, cache_dir=tmp_path, progress=False)
    assert download_to_cache(url, cache_dir=tmp_path, progress=False) == first
    assert len(behaviour.requests) == 1


def test_progress_bar_survives_a_resumed_download(serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    from huggingface_hub.utils import tqdm as hf_tqdm

    monkeypatch.setattr(sys.modules[hf_tqdm.__module__], "HF_HUB_DISABLE_PROGRESS_BARS", None)  # conftest hides bars
    url, _ = serve(cuts_left=1)
    path = download_to_cache(url, cache_dir=tmp_path, progress=True)
    assert path.read_bytes() == PAYLOAD
    err = capfd.readouterr().err
    assert err.count("download payload.bin") >= 2  # one bar per request, the second starting at the cut
    assert "3.01M" in err  # the total size (3.01 MiB, 1024-based) is shown


def test_converting_from_a_url_records_the_served_sha256(serve, sample_archive, tmp_path: Path) -> None:
    from rnet_hub.converter import convert

    archive = sample_archive("MobileNetV3Small").read_bytes()
    url, behaviour = serve(name="MobileNetV3Small.tar.gz", payload=archive, cuts_left=1, cut_at=len(archive) // 2)
    result = convert(url, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert result.source_sha256 == _sha256(archive)
    with safe_open(result.out_dir / "model.safetensors", framework="pt") as weights:
        metadata = weights.metadata()
    assert metadata["source_sha256"] == _sha256(archive)
    assert metadata["source_file"] == "MobileNetV3Small.tar.gz"
    assert behaviour.requests == [None, f"bytes={len(archive) // 2}-"]
