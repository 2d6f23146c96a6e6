"""Source downloads against a loopback HTTP server (127.0.0.1, stdlib) that misbehaves on purpose.

The server serves one payload and can cut the connection mid-file, ignore ``Range``, answer
503 or 404, cut a chunked response, leave out the length, answer ``Range`` from the wrong byte,
change the file between requests, trickle or stop sending; it logs every request so the tests
can check what the client asked for (a resumed request must start exactly where the cut left the
file). Time limits are set small (a fraction of a second) so each test takes a few seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from safetensors import safe_open

from rnet_hub.archives import download as _download
from rnet_hub.archives.download import download_to_cache
from rnet_hub.errors import DownloadError

# not a multiple of the client's 1 MiB chunks; starts like a torch zip checkpoint, as payload.bin must
PAYLOAD = b"PK\x03\x04" + os.urandom(3 * 1024 * 1024 + 12345 - 4)
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
    send_length: bool = True  # False: no Content-Length, the end of the body is the connection's close
    range_shift: int = 0  # a 206 starts this many bytes before the asked start (and says so in Content-Range)
    etag: str | None = None
    changes_to: bytes | None = None  # after the first cut the file becomes this (ETag "<etag>-2")
    trickle_s: float = 0.0  # one byte of the body every trickle_s seconds
    pauses_left: int = 0  # answers that stop sending for pause_s ...
    pause_after: int | None = None  # ... after this many bytes of their body (None: before their headers)
    pause_s: float = 30.0
    wake: threading.Event = field(default_factory=threading.Event)  # ends pauses and trickles at teardown
    requests: list[str | None] = field(default_factory=list)  # the Range header of each GET
    if_ranges: list[str | None] = field(default_factory=list)  # the If-Range header of each GET


def _handler(behaviour: Behaviour) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            behaviour.requests.append(self.headers.get("Range"))
            behaviour.if_ranges.append(self.headers.get("If-Range"))
            self.close_connection = True
            with contextlib.suppress(OSError):  # the client gave up (a stall or rate test)
                self._answer()

        def _answer(self) -> None:
            if behaviour.pauses_left and behaviour.pause_after is None:
                behaviour.pauses_left -= 1
                behaviour.wake.wait(behaviour.pause_s)
            if behaviour.fail_first_with is not None:
                status, behaviour.fail_first_with = behaviour.fail_first_with, None
                return self._error(status)
            if behaviour.status != 200:
                return self._error(behaviour.status)
            start, size = self._range_start(), len(behaviour.payload)
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = max(0, start - behaviour.range_shift) if start else 0
            body = behaviour.payload[start:]
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            if behaviour.etag:
                self.send_header("ETag", behaviour.etag)
            self._send_body(body, cut=behaviour.cuts_left > 0)
            if behaviour.changes_to is not None and behaviour.cuts_left == 0:
                behaviour.payload, behaviour.changes_to = behaviour.changes_to, None
                behaviour.etag = f'{(behaviour.etag or "")[:-1]}-2"'

        def _range_start(self) -> int:
            header = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if not (header and behaviour.honour_range) or (if_range is not None and if_range != behaviour.etag):
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
                if behaviour.send_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self._write(sent)
            self.wfile.flush()

        def _write(self, data: bytes) -> None:
            pause_at = behaviour.pause_after
            if behaviour.pauses_left and pause_at is not None:
                behaviour.pauses_left -= 1
                self.wfile.write(data[:pause_at])
                self.wfile.flush()
                behaviour.wake.wait(behaviour.pause_s)
                data = data[pause_at:]
            if not behaviour.trickle_s:
                self.wfile.write(data)
                return
            for index in range(len(data)):
                if behaviour.wake.wait(behaviour.trickle_s):
                    return
                self.wfile.write(data[index:index + 1])
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
    behaviours: list[Behaviour] = []

    def start(name: str = "payload.bin", **kwargs: object) -> tuple[str, Behaviour]:
        behaviour = Behaviour(**kwargs)  # type: ignore[arg-type]
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(behaviour))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        behaviours.append(behaviour)
        return f"http://127.0.0.1:{server.server_address[1]}/models/{name}", behaviour

    yield start
    for behaviour in behaviours:
        behaviour.wake.set()
    for server in servers:
        server.shutdown()
        server.server_close()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _record(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def test_cut_connection_is_resumed_with_range(serve, tmp_path: Path) -> None:
    url, behaviour = serve(cuts_left=1)
    path = download_to_cache(url, cache_dir=tmp_path, progress=False)
    assert _sha256(path.read_bytes()) == _sha256(PAYLOAD)
    assert behaviour.requests == [None, f"bytes={CUT_AT}-"]  # resumed exactly where the cut left off
    assert _files(tmp_path) == [path, _record(path)]  # no .part left; what was verified is recorded


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


# ------------------------------------------------------------------ time limits (issue 12, item 3)
SMALL = b"PK\x03\x04" + bytes(96)  # 100 bytes that start like a torch zip checkpoint


def test_a_trickling_server_is_given_up_on_by_the_throughput_floor(serve, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_download, "MAX_ATTEMPTS", 2)
    monkeypatch.setenv("RNET_HUB_DOWNLOAD_MIN_KIBPS", "1")
    monkeypatch.setenv("RNET_HUB_DOWNLOAD_RATE_WINDOW_S", "0.5")
    monkeypatch.setenv("RNET_HUB_DOWNLOAD_STALL_S", "2")  # each byte comes well within it
    url, behaviour = serve(payload=SMALL, trickle_s=0.05)  # 20 bytes/s: 5 s for the file
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"after 2 attempts: the download was slower than 1 KiB/s .*; retry "
                                            r"later or download it yourself and pass the file"):
        download_to_cache(url, cache_dir=tmp_path, progress=False)
    assert time.monotonic() - started < 3  # two windows of 0.5 s and the back-off, not the whole trickle
    first, resumed = behaviour.requests
    assert first is None and resumed.startswith("bytes=")  # the slow attempt counted, and the next one resumed
    (part,) = _files(tmp_path)
    assert part.name == "payload.bin.part"  # kept for the next run to resume


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_server_that_stops_sending_is_given_up_on_after_the_stall_timeout(serve, tmp_path: Path, where: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_download, "MAX_ATTEMPTS", 2)
    url, behaviour = serve(payload=SMALL * 20, pauses_left=2, pause_after=500 if where == "body" else None)
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"the server sent no data for 0\.5 s"):
        download_to_cache(url, cache_dir=tmp_path, progress=False, stall_s=0.5, min_kibps=0)
    assert time.monotonic() - started < 3
    assert behaviour.requests == ([None, "bytes=500-"] if where == "body" else [None, None])


def test_a_stalled_attempt_is_retried_and_the_download_completes(serve, tmp_path: Path) -> None:
    url, behaviour = serve(payload=SMALL * 20, pauses_left=1, pause_after=1000)
    path = download_to_cache(url, cache_dir=tmp_path, progress=False, stall_s=0.5)
    assert path.read_bytes() == SMALL * 20
    assert behaviour.requests == [None, "bytes=1000-"]


def test_a_limit_that_is_not_a_number_is_a_clear_error(serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rnet_hub.errors import BadInputError

    monkeypatch.setenv("RNET_HUB_DOWNLOAD_STALL_S", "soon")
    url, behaviour = serve()
    with pytest.raises(BadInputError, match=r"RNET_HUB_DOWNLOAD_STALL_S='soon' is not a valid limit"):
        download_to_cache(url, cache_dir=tmp_path, progress=False)
    assert behaviour.requests == []


# ------------------------------------------------------------------ what is cached (issue 12, item 5)
HTML = b"<!DOCTYPE html><html><body>Bandwidth quota exceeded</body></html>"


def _bad(folder: Path) -> list[Path]:
    return [p for p in _files(folder) if ".bad-" in p.name]


def test_an_answer_without_a_length_cut_short_is_not_cached(serve, tmp_path: Path) -> None:
    url, behaviour = serve(payload=os.urandom(len(PAYLOAD)), send_length=False, cuts_left=1)
    with pytest.raises(DownloadError, match=r"cannot be used: it is of unknown kind .*moved aside to .*\.bad-"):
        download_to_cache(url, cache_dir=tmp_path, progress=False)  # a clean close: only the kind check can tell
    with pytest.raises(DownloadError):
        download_to_cache(url, cache_dir=tmp_path, progress=False)
    assert behaviour.requests == [None, None]  # never reused from the cache
    assert [p.name.split(".bad-")[0] for p in _files(tmp_path)] == ["payload.bin"]  # only the latest set aside


def test_an_answer_without_a_length_is_checked_against_the_expected_sha256(serve, tmp_path: Path) -> None:
    url, _ = serve(send_length=False, cuts_left=1)  # a zip header, so the kind check passes
    with pytest.raises(DownloadError, match=rf"its sha256 {_sha256(PAYLOAD[:CUT_AT])} is not the expected "
                                            rf"{_sha256(PAYLOAD)}.*rm -r "):
        download_to_cache(url, cache_dir=tmp_path, progress=False, expected_sha256=_sha256(PAYLOAD))
    path = download_to_cache(url, cache_dir=tmp_path, progress=False, expected_sha256=_sha256(PAYLOAD).upper())
    assert path.read_bytes() == PAYLOAD
    assert json.loads(_record(path).read_text())["length_from"] is None  # ended by the connection's clean close
    assert _files(tmp_path) == [path, _record(path)]  # the file set aside is gone once a good one is in place


def test_a_206_answer_that_starts_elsewhere_restarts_the_download(serve, tmp_path: Path) -> None:
    url, behaviour = serve(cuts_left=1, range_shift=1000)
    path = download_to_cache(url, cache_dir=tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD  # not 1000 bytes of it twice
    assert behaviour.requests == [None, f"bytes={CUT_AT}-", None]


def test_a_file_that_changed_on_the_server_between_attempts_starts_over(serve, tmp_path: Path) -> None:
    changed = b"PK\x03\x04" + os.urandom(len(PAYLOAD) - 4)
    url, behaviour = serve(cuts_left=1, etag='"v1"', changes_to=changed)
    path = download_to_cache(url, cache_dir=tmp_path, progress=False)
    assert path.read_bytes() == changed  # not the first part of one file and the rest of another
    assert behaviour.if_ranges == [None, '"v1"'] and behaviour.requests == [None, f"bytes={CUT_AT}-"]
    assert json.loads(_record(path).read_text())["etag"] == '"v1-2"'


def test_an_html_page_served_with_200_is_moved_aside(serve, tmp_path: Path) -> None:
    url, behaviour = serve(name="ResNet50.tar.gz", payload=HTML)
    with pytest.raises(DownloadError) as caught:
        download_to_cache(url, cache_dir=tmp_path, progress=False)
    (aside,) = _files(tmp_path)
    message = str(caught.value)
    assert "it is an HTML page (an error or login page?), not gzip as ResNet50.tar.gz must be" in message
    assert f"moved aside to {aside}" in message and f"rm -r {aside.parent}" in message
    assert aside.read_bytes() == HTML and aside.name.startswith("ResNet50.tar.gz.bad-")
    behaviour.payload = b"\x1f\x8b\x08\x00" + os.urandom(1000)  # the server recovers
    path = download_to_cache(url, cache_dir=tmp_path, progress=False)
    assert path.read_bytes() == behaviour.payload and behaviour.requests == [None, None]


def test_the_expected_sha256_is_checked_for_fresh_and_cached_files(serve, tmp_path: Path) -> None:
    url, behaviour = serve()
    wrong = "0" * 64
    with pytest.raises(DownloadError, match=rf"its sha256 {_sha256(PAYLOAD)} is not the expected {wrong}\. It was "
                                            rf"moved aside to .*payload\.bin\.bad-\S+ and the next run downloads"):
        download_to_cache(url, cache_dir=tmp_path, progress=False, expected_sha256=wrong)
    path = download_to_cache(url, cache_dir=tmp_path, progress=False, expected_sha256=_sha256(PAYLOAD))
    assert json.loads(_record(path).read_text())["sha256"] == _sha256(PAYLOAD)
    assert len(behaviour.requests) == 2
    with pytest.raises(DownloadError, match=r"is not the expected 1{64}"):  # a verified cached file too, no request
        download_to_cache(url, cache_dir=tmp_path, progress=False, expected_sha256="1" * 64)
    assert len(behaviour.requests) == 2 and not path.exists() and len(_bad(tmp_path)) == 1


def test_a_verified_file_is_trusted_until_it_changes(serve, tmp_path: Path) -> None:
    url, behaviour = serve()
    path = download_to_cache(url, cache_dir=tmp_path, progress=False)
    record = json.loads(_record(path).read_text())
    assert record["size"] == len(PAYLOAD) and record["sha256"] == _sha256(PAYLOAD) and record["url"] == url
    os.utime(path)  # touched, same bytes: hashed again and still trusted, with no request
    assert download_to_cache(url, cache_dir=tmp_path, progress=False) == path and len(behaviour.requests) == 1
    with open(path, "r+b") as handle:  # the same size, other bytes: set aside and downloaded again
        handle.seek(1000)
        handle.write(b"corrupt")
    assert download_to_cache(url, cache_dir=tmp_path, progress=False).read_bytes() == PAYLOAD
    assert behaviour.requests == [None, None] and len(_bad(tmp_path)) == 0  # superseded by the good download


def test_a_cached_file_without_a_record_is_checked_with_the_server(serve, tmp_path: Path) -> None:
    url, behaviour = serve()
    path = download_to_cache(url, cache_dir=tmp_path, progress=False)
    _record(path).unlink()  # as an older rnet_hub left it
    assert download_to_cache(url, cache_dir=tmp_path, progress=False) == path
    assert behaviour.requests == [None, f"bytes={len(PAYLOAD)}-"]  # 416 bytes */size: complete, nothing re-sent
    assert _record(path).is_file()
    path.write_bytes(PAYLOAD[:CUT_AT])  # a truncated file from an older rnet_hub: completed, not trusted
    _record(path).unlink()
    assert download_to_cache(url, cache_dir=tmp_path, progress=False).read_bytes() == PAYLOAD
    assert behaviour.requests[-1] == f"bytes={CUT_AT}-"


def test_offline_mode_uses_verified_files_and_requests_nothing(serve, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    url, behaviour = serve()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match=r"HF_HUB_OFFLINE is set and http://\S+ is not in the cache .*; unset "
                                            r"it or download the file and pass its path"):
        download_to_cache(url, cache_dir=tmp_path, progress=False)
    assert behaviour.requests == [] and list(tmp_path.iterdir()) == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    path = download_to_cache(url, cache_dir=tmp_path, progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download_to_cache(url, cache_dir=tmp_path, progress=False) == path
    assert len(behaviour.requests) == 1  # the offline run asked nothing


def test_a_failed_download_leaves_no_folder_behind(serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = serve(status=404)
    with pytest.raises(DownloadError):
        download_to_cache(url, cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(_download, "MAX_ATTEMPTS", 2)
    url, _ = serve(cuts_left=2, cut_at=0)  # the connection drops before any byte: nothing worth resuming
    with pytest.raises(DownloadError, match="after 2 attempts"):
        download_to_cache(url, cache_dir=tmp_path, progress=False)
    assert list((tmp_path / "archives").iterdir()) == []


def test_the_cache_lives_under_hf_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("RNET_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert _download.default_cache_dir() == Path.home() / ".cache" / "rnet_hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _download.default_cache_dir() == tmp_path / "xdg" / "rnet_hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert _download.default_cache_dir() == tmp_path / "hf" / "rnet_hub"
    monkeypatch.setenv("RNET_HUB_CACHE", str(tmp_path / "mine"))
    assert _download.default_cache_dir() == tmp_path / "mine"


def test_convert_all_checks_downloads_against_the_manifest(serve, sample_archive, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import runpy

    from rnet_hub import architectures

    archive = sample_archive("MobileNetV3Small").read_bytes()
    url, behaviour = serve(name="MobileNetV3Small.tar.gz", payload=archive)
    monkeypatch.setattr(architectures, "ARCHIVE_BASE_URL", url.rsplit("/", 1)[0])
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"format": 1, "models": {"MobileNetV3Small": {"source_sha256": "ab" * 32}}}))
    script = runpy.run_path(str(Path(__file__).resolve().parent.parent / "conversion" / "convert_all.py"))["main"]
    args = ["--only", "MobileNetV3Small", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
            "--manifest", str(manifest), "-q"]
    assert script([*args, "--dry-run"]) == 0
    assert f"must have sha256 {'ab' * 32}" in capsys.readouterr().out
    assert script(args) == 1
    out = capsys.readouterr().out
    assert f"FAILED DownloadError: the download of {url} cannot be used: its sha256 {_sha256(archive)} is not the " \
           f"expected {'ab' * 32}" in out
    assert not (tmp_path / "out").exists() and len(_bad(tmp_path / "cache")) == 1 and len(behaviour.requests) == 1
