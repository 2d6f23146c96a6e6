"""``rnet_hub.embed``: one entry to both embedding engines, the local one (default) and the Ray one.

* ``engine="local"``: :func:`rnet_hub.imaging.embed.embed`, this process (reading workers, one device);
* ``engine="ray"``: :func:`rnet_hub.imaging.embed_ray.embed_ray`, a Ray Data pipeline on a cluster.

Both read the same inputs the same way and write rows of the same schema (:mod:`.embed_schema`);
the options each engine alone has are refused for the other, naming the option.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..errors import BadInputError
from .embed import DEFAULT_FILE_TIMEOUT, EmbedReport

__all__ = ["ENGINES", "embed"]

ENGINES = ("local", "ray")


def embed(inputs: Sequence[str | os.PathLike[str]], *, model: str, out: str | os.PathLike[str] = "embeddings",
          engine: str = "local", batch_size: int = 32, resume: bool = False, stage: int | None = None,
          faithful: bool = False, progress: bool = True, file_timeout: float | None = DEFAULT_FILE_TIMEOUT,
          aggregate: Sequence[str] = (), max_pool: bool = False, num_workers: int | None = None,
          device: str | None = None, address: str | None = None, workers: int | None = None,
          gpus_per_worker: float | None = None, rows_per_shard: int | None = None) -> EmbedReport:
    """Embed every image under ``inputs`` with ``model`` on ``engine``; returns an
    :class:`~rnet_hub.imaging.embed.EmbedReport`.

    Both engines: ``out`` (the output stem), ``batch_size``, ``resume``, ``stage``, ``faithful``,
    ``progress``, ``file_timeout``, ``aggregate`` (``"series"``/``"study"``) and ``max_pool``.
    Local engine only: ``num_workers`` (reading processes) and ``device``. Ray engine only: ``address``,
    ``workers`` (model actors), ``gpus_per_worker`` and ``rows_per_shard``.

    Raises:
        BadInputError: an unknown engine, or an option of the other engine.
        MissingExtraError: ``engine="ray"`` without Ray Data (``pip install 'rnet-hub[ray]'``).
    """
    common = {"model": model, "out": out, "batch_size": batch_size, "resume": resume, "stage": stage,
              "faithful": faithful, "progress": progress, "file_timeout": file_timeout, "aggregate": aggregate,
              "max_pool": max_pool}
    local_only = {"num_workers": num_workers, "device": device}
    ray_only = {"address": address, "workers": workers, "gpus_per_worker": gpus_per_worker,
                "rows_per_shard": rows_per_shard}
    if engine not in ENGINES:
        raise BadInputError(f"engine must be local or ray, got {engine!r}")
    other = [name for name, value in (ray_only if engine == "local" else local_only).items() if value is not None]
    if other:
        raise BadInputError(f"{other[0]} is an option of the {'ray' if engine == 'local' else 'local'} engine, "
                            f"not of engine={engine!r}; leave it out or choose that engine")
    if engine == "ray":
        from .embed_ray import embed_ray

        return embed_ray(inputs, **common, **ray_only)
    from .embed import embed as embed_local

    return embed_local(inputs, **common, **local_only)
