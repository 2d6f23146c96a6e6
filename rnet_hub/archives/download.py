"""Downloading source archives over HTTP(S): streamed, resumable, bounded in time, verified.

A download goes to ``<cache>/archives/<url hash>/<file name>.part``, is resumed after a cut with
``Range``/``If-Range`` (a server that ignores them restarts it) and is renamed into place only when

* its size matches the server's (``Content-Length``, or the total of a 206's ``Content-Range``,
  which must start where asked); with no length given, the answer must end cleanly;
* it starts like what its name says (``.tar.gz``: gzip, ``.tar``: tar, ``.pth``: torch zip or
  pickle, other names: any of these), so an HTML error page served with 200 is refused;
* it has ``expected_sha256``, when given (``conversion/convert_all.py`` passes the sha256 that
  ``conversion/manifest.json`` records for each published archive).

A file that fails a check is moved aside to ``<file name>.bad-<UTC time>`` (only the latest is kept,
to show what the server sent); the error names it and the ``rm -r`` that clears the URL's folder.
What was verified (size, sha256, mtime, URL, ETag) goes to ``<file name>.json``; a later run uses the
file with no request while its size and mtime match (a file without a record is re-checked from its
end with a ``Range`` request). After the last attempt fails, a ``.part`` holding data is kept for the
next run to resume (the error says so); anything else is removed, and the URL's folder if left empty.

Time is bounded: an attempt fails when the server sends nothing for ``stall_s`` seconds
(``$RNET_HUB_DOWNLOAD_STALL_S``, default 60) or a window of ``rate_window_s`` seconds
(``$RNET_HUB_DOWNLOAD_RATE_WINDOW_S``, default 60) averages below ``min_kibps`` KiB/s
(``$RNET_HUB_DOWNLOAD_MIN_KIBPS``, default 10; 0 turns the floor off, and with it the bound);
there are :data:`MAX_ATTEMPTS` attempts in all, each resuming the last.

The cache is ``$RNET_HUB_CACHE``, else ``$HF_HOME/rnet_hub``, else ``$XDG_CACHE_HOME/rnet_hub``, else
``~/.cache/rnet_hub``. With ``HF_HUB_OFFLINE=1`` a URL that is not cached and verified fails at once,
and a verified one is used with no request.
"""

from __future__ import annotations

import glob
import hashlib
import http.client
import json
import math
import os
import re
import shlex
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple
from urllib.parse import urlparse

from ..errors import BadInputError, DownloadError, SourceError
from ..progress import progress_bar
from .extract import CHECKPOINT_SUFFIXES, file_sha256, sniff

__all__ = ["default_cache_dir", "download_to_cache", "is_url"]

_CHUNK = 1024 * 1024
MAX_ATTEMPTS = 5
STALL_S = 60.0
MIN_KIBPS = 10.0
RATE_WINDOW_S = 60.0
_RECORD_FORMAT = 1


def is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def default_cache_dir() -> Path:
    """``$RNET_HUB_CACHE``, else ``$HF_HOME/rnet_hub``, else ``$XDG_CACHE_HOME/rnet_hub``, else ``~/.cache/...``."""
    if os.environ.get("RNET_HUB_CACHE"):
        return Path(os.environ["RNET_HUB_CACHE"]).expanduser()
    base = os.environ.get("HF_HOME") or os.environ.get("XDG_CACHE_HOME")
    return Path(base).expanduser() / "rnet_hub" if base else Path.home() / ".cache" / "rnet_hub"


def _target_for(url: str, cache_dir: Path) -> Path:
    name = PurePosixPath(urlparse(url).path).name or "download"
    return cache_dir / "archives" / hashlib.sha256(url.encode()).hexdigest()[:16] / name


class _Limits(NamedTuple):
    stall_s: float
    min_kibps: float
    window_s: float


def _limit(value: float | None, variable: str, default: float, *, zero_ok: bool = False) -> float:
    raw = os.environ.get(variable, "").strip() if value is None else str(value)
    try:
        number = float(raw) if raw else default
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and (number > 0 or (zero_ok and number == 0))):
        source = variable if value is None else variable.removeprefix("RNET_HUB_DOWNLOAD_").lower()
        raise BadInputError(f"{source}={raw!r} is not a valid limit: give a positive number"
                            f"{' (0 turns it off)' if zero_ok else ''}")
    return number


class _AttemptFailed(ConnectionError):
    """An attempt failed that another may fix; ``restart``: the partial file is wrong; ``later``: too slow."""

    def __init__(self, message: str, *, restart: bool = False, later: bool = False) -> None:
        super().__init__(message)
        self.restart, self.later = restart, later


def _stalled(limits: _Limits, during: str) -> _AttemptFailed:
    return _AttemptFailed(f"the server sent no data for {limits.stall_s:g} s {during} "
                          f"(RNET_HUB_DOWNLOAD_STALL_S sets the limit)", later=True)


@dataclass
class _State:  # what the attempts of one download learned from the server
    etag: str | None = None
    last_modified: str | None = None
    total: int | None = None
    length_from: str | None = None  # "Content-Length", "Content-Range", or None: the connection's clean end


_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
_UNSATISFIED = re.compile(r"bytes\s+\*/(\d+)\s*$")


def _request(url: str, offset: int, state: _State) -> urllib.request.Request:
    headers = {}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        validator = state.etag if state.etag and not state.etag.startswith("W/") else state.last_modified
        if validator:
            headers["If-Range"] = validator  # changed on the server meanwhile: answer 200 with all of it
    return urllib.request.Request(url, headers=headers)


def _start_of(response: http.client.HTTPResponse, offset: int, state: _State) -> int:
    """Where this answer's body starts in the file; learns the total size and validators."""
    headers = response.headers
    etag, modified = headers.get("ETag"), headers.get("Last-Modified")
    if response.status != 206:
        length = headers.get("Content-Length", "")
        state.total = int(length) if length.strip().isdigit() else None
        state.length_from = "Content-Length" if state.total is not None else None
        state.etag, state.last_modified = etag, modified
        return 0  # the whole file (a server that ignored Range restarts it)
    match = _RANGE.match(headers.get("Content-Range", ""))
    if match is None or int(match[1]) != offset:
        raise _AttemptFailed(f"asked for the bytes from {offset}, the server answered with Content-Range "
                             f"{headers.get('Content-Range')!r}", restart=True)
    if state.etag and etag and etag != state.etag:
        raise _AttemptFailed(f"the file changed on the server (ETag {state.etag} -> {etag})", restart=True)
    if match[3] != "*" and state.total not in (None, int(match[3])):
        raise _AttemptFailed(f"the file changed on the server ({state.total} -> {match[3]} bytes)", restart=True)
    if match[3] != "*":
        state.total, state.length_from = int(match[3]), "Content-Range"
    state.etag, state.last_modified = etag or state.etag, modified or state.last_modified
    return offset


def _fetch_once(url: str, part: Path, state: _State, limits: _Limits, progress: bool) -> None:
    """One request: append to ``part`` from where it ends (Range), or restart it. Returns when complete."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = urllib.request.urlopen(_request(url, offset, state), timeout=limits.stall_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            match = _UNSATISFIED.match(exc.headers.get("Content-Range", ""))
            exc.close()
            if match and int(match[1]) == offset and state.total in (None, offset):
                state.total, state.length_from = offset, "Content-Range"
                return  # the partial file is the whole file
            raise _AttemptFailed(f"the server refused to resume at byte {offset} (HTTP 416)", restart=True) from exc
        raise
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise _stalled(limits, "while connecting") from exc
        raise
    except TimeoutError as exc:
        raise _stalled(limits, "before its answer's headers") from exc
    with response:
        size = _start_of(response, offset, state)
        floor = limits.min_kibps * 1024
        window_start, window_size = time.monotonic(), size
        with open(part, "ab" if size else "wb") as out, progress_bar(
                total=state.total, initial=size, desc=f"download {part.name.removesuffix('.part')}",
                disable=not progress) as bar:
            while True:
                try:
                    chunk = response.read1(_CHUNK)  # one socket read: the stall and rate checks see every byte
                except TimeoutError as exc:
                    raise _stalled(limits, f"after {size} bytes") from exc
                if not chunk:
                    break
                out.write(chunk)
                size += len(chunk)
                bar.update(len(chunk))
                elapsed = time.monotonic() - window_start
                if floor and elapsed >= limits.window_s:
                    rate = (size - window_size) / elapsed
                    if rate < floor:
                        raise _AttemptFailed(
                            f"the download was slower than {limits.min_kibps:g} KiB/s ({rate / 1024:.3g} KiB/s over "
                            f"{elapsed:.3g} s; RNET_HUB_DOWNLOAD_MIN_KIBPS sets the floor)", later=True)
                    window_start, window_size = time.monotonic(), size
    size = part.stat().st_size
    if state.total is not None and size > state.total:
        raise _AttemptFailed(f"the partial file grew past the {state.total} bytes announced (another download "
                             f"of the same URL at the same time?)", restart=True)
    if state.total is not None and size < state.total:
        raise ConnectionError(f"connection closed after {size} of {state.total} bytes")


def _fetch(url: str, part: Path, limits: _Limits, progress: bool) -> _State:
    """Every attempt of one download; raises DownloadError after the last, keeping a ``.part`` worth resuming."""
    state = _State()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            _fetch_once(url, part, state, limits, progress)
            return state
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                part.unlink(missing_ok=True)  # the URL is wrong or refused: nothing to resume
                raise DownloadError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from exc
            if attempt == MAX_ATTEMPTS:
                raise DownloadError(f"could not download {url}: HTTP {exc.code} {exc.reason} after {attempt} "
                                    f"attempts; retry later{_resume_note(part)}") from exc
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            if isinstance(exc, _AttemptFailed) and exc.restart:
                part.unlink(missing_ok=True)
                state = _State()
            if attempt == MAX_ATTEMPTS:
                advice = "retry later or" if getattr(exc, "later", False) else "check the URL and your connection, or"
                raise DownloadError(f"could not download {url} after {attempt} attempts: {exc}; {advice} "
                                    f"download it yourself and pass the file{_resume_note(part)}") from exc
        except OSError as exc:  # writing the cache (disk full, permissions) or another socket error: no retry
            part.unlink(missing_ok=True)
            raise DownloadError(f"could not download {url} into {part}: {exc.strerror or exc}; check that the "
                                f"cache folder is writable with room for the file (RNET_HUB_CACHE selects "
                                f"another) and your connection") from exc
        time.sleep(min(2 ** (attempt - 1) * 0.5, 8))
    raise AssertionError("unreachable")


def _resume_note(part: Path) -> str:
    size = part.stat().st_size if part.is_file() else 0
    return (f" (the {size} bytes so far are kept in {part} and the next run resumes from there; "
            f"{_clear_hint(part)} to start over)") if size else ""


def _clear_hint(path: Path) -> str:
    return f"rm -r {shlex.quote(str(path.parent))}"


def _record_path(target: Path) -> Path:  # what was verified: <file name>.json beside the file
    return target.with_name(target.name + ".json")


def _expected_kinds(name: str) -> tuple[str, ...]:
    lower = name.lower()
    if lower.endswith((".tar.gz", ".tgz", ".gz")):
        return ("gzip",)
    if lower.endswith(".tar"):
        return ("tar",)
    return ("zip", "pickle") if lower.endswith(CHECKPOINT_SUFFIXES) else ("gzip", "tar", "zip", "pickle")


def _kind_problem(path: Path, name: str) -> str | None:
    """Why ``path`` is not what a file called ``name`` must be, or None."""
    wanted = _expected_kinds(name)
    try:
        kind = sniff(path)
    except SourceError:
        kind = None
    if kind in wanted:
        return None
    with open(path, "rb") as handle:
        head = handle.read(512)
    looks = ("an HTML page (an error or login page?)" if b"<html" in head.lower() or b"<!doctype" in head.lower()
             else "empty" if not head else f"a {kind} file" if kind else f"of unknown kind (starts with {head[:16]!r})")
    return f"it is {looks}, not {' or '.join(wanted)} as {name} must be"


def _drop_bad(target: Path) -> None:
    for older in target.parent.glob(f"{glob.escape(target.name)}.bad-*"):
        older.unlink(missing_ok=True)


def _move_aside(url: str, path: Path, target: Path, problem: str) -> DownloadError:
    """Move a file that failed a check to ``<target>.bad-<time>``; the error to raise."""
    _drop_bad(target)
    aside = target.with_name(f"{target.name}.bad-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    os.replace(path, aside)
    _record_path(target).unlink(missing_ok=True)
    return DownloadError(f"the download of {url} cannot be used: {problem}. It was moved aside to {aside} and "
                         f"the next run downloads it again; clear it with: {_clear_hint(target)}. If the server "
                         f"keeps sending this, download the file yourself and pass its path")


def _write_record(target: Path, record: dict) -> None:
    status = target.stat()
    record = {**record, "format": _RECORD_FORMAT, "size": status.st_size, "mtime_ns": status.st_mtime_ns}
    staging = target.with_name(f".{target.name}.json.{os.getpid()}.tmp")
    try:
        staging.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(staging, _record_path(target))
    except OSError:  # best effort: without a record the next run re-checks the file with the server
        staging.unlink(missing_ok=True)


def _read_record(target: Path, url: str) -> dict | None:
    try:
        record = json.loads(_record_path(target).read_text())
    except (OSError, ValueError):
        return None
    valid = (isinstance(record, dict) and record.get("format") == _RECORD_FORMAT and record.get("url") == url
             and isinstance(record.get("sha256"), str))
    return record if valid else None


def _trusted(url: str, target: Path, expected: str | None) -> bool | None:
    """True: the cached file is verified; None: it has no record; False: it changed after it was verified."""
    record = _read_record(target, url)
    if record is None:
        return None
    status = target.stat()
    if record.get("size") != status.st_size:
        return False
    if record.get("mtime_ns") != status.st_mtime_ns:  # touched or rewritten: hash it again
        if file_sha256(target) != record["sha256"]:
            return False
        _write_record(target, record)
    if expected and record["sha256"] != expected:
        raise _move_aside(url, target, target, f"its sha256 {record['sha256']} is not the expected {expected}")
    if problem := _kind_problem(target, target.name):
        raise _move_aside(url, target, target, problem)
    return True


def _verify(url: str, part: Path, target: Path, state: _State, expected: str | None) -> Path:
    if problem := _kind_problem(part, target.name):
        raise _move_aside(url, part, target, problem)
    digest = file_sha256(part)
    if expected and digest != expected:
        raise _move_aside(url, part, target, f"its sha256 {digest} is not the expected {expected}")
    os.replace(part, target)
    _drop_bad(target)  # what an earlier run set aside is superseded
    _write_record(target, {"url": url, "sha256": digest, "etag": state.etag, "last_modified": state.last_modified,
                           "length_from": state.length_from})
    return target


def _sha256_arg(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value.strip()):
        raise BadInputError(f"expected_sha256 {value!r} is not a sha256 (64 hexadecimal digits)")
    return value.strip().lower() if value else None


def download_to_cache(url: str, *, cache_dir: Path | None = None, progress: bool = True, force: bool = False,
                      expected_sha256: str | None = None, stall_s: float | None = None,
                      min_kibps: float | None = None, rate_window_s: float | None = None) -> Path:
    """Download ``url`` once into the cache (resuming after dropped connections), verify it, return its path.

    ``expected_sha256``: the sha256 the file must have (a cached one too); ``stall_s``, ``min_kibps``,
    ``rate_window_s``: an attempt's limits (default: see the module docstring); ``force``: download again.
    Raises DownloadError when the server refused, every attempt failed or was too slow, the file is not
    what it must be (moved aside; the message names it), ``HF_HUB_OFFLINE`` is set and the URL is not
    cached, or the cache folder cannot be written.
    """
    expected = _sha256_arg(expected_sha256)
    limits = _Limits(_limit(stall_s, "RNET_HUB_DOWNLOAD_STALL_S", STALL_S),
                     _limit(min_kibps, "RNET_HUB_DOWNLOAD_MIN_KIBPS", MIN_KIBPS, zero_ok=True),
                     _limit(rate_window_s, "RNET_HUB_DOWNLOAD_RATE_WINDOW_S", RATE_WINDOW_S))
    target = _target_for(url, cache_dir or default_cache_dir())
    part = target.with_name(target.name + ".part")
    trusted = _trusted(url, target, expected) if target.is_file() and not force else None
    if trusted:
        return target
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        raise DownloadError(f"HF_HUB_OFFLINE is set and {url} is not in the cache as a verified download "
                            f"({target}); unset it or download the file and pass its path")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the download cache {target.parent}: {exc.strerror or exc}; "
                            f"set RNET_HUB_CACHE (or pass a cache folder) to a writable folder") from exc
    try:
        if force:
            part.unlink(missing_ok=True)
            target.unlink(missing_ok=True)
        elif trusted is False:  # changed after it was verified: keep it for a look, download afresh
            _move_aside(url, target, target, "changed after it was verified")
        elif target.is_file():  # cached by an older rnet_hub, unverified: the server confirms its size
            os.replace(target, part)
        _record_path(target).unlink(missing_ok=True)
        state = _fetch(url, part, limits, progress)
        return _verify(url, part, target, state, expected)
    finally:
        if part.is_file() and not part.stat().st_size:
            part.unlink()  # nothing worth resuming
        if target.parent.is_dir() and not any(target.parent.iterdir()):
            target.parent.rmdir()  # a failure leaves no empty folder
