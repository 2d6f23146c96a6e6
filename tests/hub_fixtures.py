"""Pytest fixtures around the loopback Hub (``hub_server.py``).

- ``hub_server``: a fresh :class:`LoopbackHub` on 127.0.0.1 for one test (``.endpoint``,
  ``.requests``, ``.authorizations()``, ``.history(repo_id)``, ``.file(...)``, ``.lfs_objects(...)``;
  faults: ``.fail_next``, ``.drop_next``, ``.before_next``; ``.commit_files`` for a concurrent client).
- ``shared_hub_server``: one server for the whole session, for tests that push once and read often.
- ``hub_client``: points every client of *this* process at ``hub_server`` (the endpoint
  ``huggingface_hub`` froze at import, the default ``HfApi``, ``HF_ENDPOINT``), isolates the
  caches and the token file in a temporary ``HF_HOME`` and sets ``HF_TOKEN``; its ``env()``
  gives the environment for a subprocess (``offline=True`` adds ``HF_HUB_OFFLINE=1``).

``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_OFFLINE`` and ``HF_HUB_DISABLE_XET``
once, at import: a subprocess only needs the environment variables, the running process needs its
``constants`` patched, which is what :func:`point_clients_at` does (and undoes).

Xet is disabled everywhere: with ``hf_xet`` installed the client would upload large files to a Xet
storage service, which the loopback Hub does not imitate; with it disabled it uses the LFS batch
API, which the loopback Hub speaks (``hub_lfs.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hub_server import LoopbackHub, running_hub

__all__ = ["TEST_TOKEN", "HubClient", "hub_client", "hub_server", "point_clients_at", "shared_hub_server"]

TEST_TOKEN = "hf_loopbackTestToken0123456789abcdef"


@contextmanager
def point_clients_at(endpoint: str, hf_home: Path, *, offline: bool = False) -> Iterator[None]:
    """Point this process's huggingface_hub (and so timm and transformers) at ``endpoint`` and ``hf_home``."""
    from huggingface_hub import constants, hf_api

    patches = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "HF_HUB_OFFLINE": offline,
        "HF_HUB_DISABLE_XET": True,
    }
    saved = {name: getattr(constants, name) for name in patches}
    saved_api_endpoint = hf_api.api.endpoint
    saved_env = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_HOME", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_XET")}
    try:
        for name, value in patches.items():
            setattr(constants, name, value)
        hf_api.api.endpoint = endpoint
        os.environ.update(HF_ENDPOINT=endpoint, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1" if offline else "0",
                          HF_HUB_DISABLE_XET="1")
        yield
    finally:
        for name, value in saved.items():
            setattr(constants, name, value)
        hf_api.api.endpoint = saved_api_endpoint
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class HubClient:
    """How the clients of a test reach the loopback Hub."""

    hub: LoopbackHub
    hf_home: Path
    token: str = TEST_TOKEN

    @property
    def endpoint(self) -> str:
        return self.hub.endpoint

    def env(self, *, offline: bool = False, token: bool = True, **extra: str) -> dict[str, str]:
        """Environment for a subprocess: this endpoint, this HF_HOME, optionally offline and without a token."""
        env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE")}
        env.update(HF_ENDPOINT=self.endpoint, HF_HOME=str(self.hf_home), HF_HUB_OFFLINE="1" if offline else "0",
                   HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_XET="1", **extra)
        if token:
            env["HF_TOKEN"] = self.token
        return env

    @contextmanager
    def offline(self) -> Iterator[None]:
        """This process in offline mode (``HF_HUB_OFFLINE=1``) with the same cache."""
        with point_clients_at(self.endpoint, self.hf_home, offline=True):
            yield


def pytest_configure(config: pytest.Config) -> None:
    # huggingface_hub's LFS upload hands httpx2 the file as ``data=`` (lfs._upload_single_part), which httpx2
    # deprecates; nothing in this project makes that call, so every push through the loopback Hub would warn
    config.addinivalue_line("filterwarnings",
                            r"ignore:Use 'content=<\.\.\.>' to upload raw bytes/text content:DeprecationWarning")


@pytest.fixture
def hub_server() -> Iterator[LoopbackHub]:
    """A loopback Hub for one test, stopped afterwards."""
    with running_hub() as hub:
        yield hub


@pytest.fixture(scope="session")
def shared_hub_server() -> Iterator[LoopbackHub]:
    """One loopback Hub for the whole session (repositories persist between tests)."""
    with running_hub() as hub:
        yield hub


@pytest.fixture
def hub_client(hub_server: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubClient]:
    """This process's clients pointed at ``hub_server``, with a private HF_HOME and ``HF_TOKEN`` set."""
    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    monkeypatch.setenv("HF_TOKEN", TEST_TOKEN)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with point_clients_at(hub_server.endpoint, hf_home):
        yield HubClient(hub_server, hf_home)
