"""Downloading source archives over HTTP(S): streamed, resumable, verified.

A download goes to ``<cache>/<url hash>/<file name>.part`` and is renamed into place only
when complete, so an interrupted download never looks finished. A cut connection is
resumed with an HTTP ``Range`` request (a server that ignores ``Range`` restarts it).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from ..errors import DownloadError
from ..progress import progress_bar

__all__ = ["default_cache_dir", "download_to_cache", "is_url"]

_CHUNK = 1024 * 1024
MAX_ATTEMPTS = 5




def is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def default_cache_dir() -> Path:
    """``$RNET_HUB_CACHE``, else ``$HF_HOME/rnet_hub`` style: ``~/.cache/rnet_hub``."""
    return Path(os.environ.get("RNET_HUB_CACHE") or Path.home() / ".cache" / "rnet_hub")


def _target_for(url: str, cache_dir: Path) -> Path:
    name = PurePosixPath(urlparse(url).path).name or "download"
    return cache_dir / "archives" / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def _fetch_once(url: str, part: Path, progress: bool) -> None:
    """One request: append to ``part`` from where it ends (Range), or restart it."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # already complete
            return
        raise
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored Range: start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with open(part, "ab" if offset else "wb") as out, progress_bar(
                total=total, initial=offset, desc=f"download {part.name.removesuffix('.part')}",
                disable=not progress) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
        if total is not None and part.stat().st_size < total:
            raise ConnectionError(f"connection closed after {part.stat().st_size} of {total} bytes")


def download_to_cache(url: str, *, cache_dir: Path | None = None, progress: bool = True,
                      force: bool = False) -> Path:
    """Download ``url`` once into the cache (resuming after dropped connections) and return its path.

    Raises:
        DownloadError: the server refused, the connection failed after every retry, or the
            cache folder cannot be written.
    """
    target = _target_for(url, cache_dir or default_cache_dir())
    if target.is_file() and not force:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the download cache {target.parent}: {exc.strerror or exc}; "
                            f"set RNET_HUB_CACHE (or pass a cache folder) to a writable folder") from exc
    part = target.with_name(target.name + ".part")
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            _fetch_once(url, part, progress)
            break
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == MAX_ATTEMPTS:
                raise DownloadError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            if attempt == MAX_ATTEMPTS:
                raise DownloadError(f"could not download {url} after {attempt} attempts: {exc}; check the "
                                    f"URL and your connection, or download it yourself and pass the file") from exc
        except OSError as exc:  # writing the cache (disk full, permissions) or another socket error: no retry
            raise DownloadError(f"could not download {url} into {part}: {exc.strerror or exc}; check that the "
                                f"cache folder is writable with room for the file (RNET_HUB_CACHE selects "
                                f"another) and your connection") from exc
        time.sleep(min(2 ** (attempt - 1) * 0.5, 8))
    os.replace(part, target)
    return target
