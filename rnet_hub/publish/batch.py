"""Converting many models in one run: sources, up-to-date checks and per-model failure isolation.

Shared by ``convert_all`` and ``publish_all``. A model's converted folder is reused when its
``model.safetensors`` says (metadata ``source_sha256``) it was converted from a source with
the same sha256, for the same Hub repository. Next to the weights the batch keeps a small
hidden record, ``.rnet-hub-conversion.json`` (:data:`rnet_hub.folder.RECORD_NAME`), with the
parity figure measured at conversion and the converter versions, so a reused folder still has
a measured figure for its card and the manifest (hidden files are never uploaded). A folder
without a matching record is re-verified against its source.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from ..architectures import ARCHITECTURES, ArchSpec, find_arch
from ..archives.download import is_url
from ..archives.extract import file_sha256
from ..errors import BadInputError, OutputExistsError, PublishedMismatchError
from ..folder import RECORD_NAME, WEIGHTS_NAME, is_converted_folder, read_config, read_weights_metadata

__all__ = ["DEFAULT_WORK_DIR", "Outcome", "Prepared", "batch_sources", "convert_all", "for_each", "prepare",
           "source_url"]

#: Where converted folders go by default (``<work dir>/<timm architecture>``), relative to the current directory.
DEFAULT_WORK_DIR = Path("converted")
_T = TypeVar("_T")
Echo = Callable[[str], None]


@dataclass(frozen=True)
class Prepared:
    """A converted folder ready to publish, and how it came to be."""

    spec: ArchSpec
    folder: Path
    source: str  # the path or URL given
    source_sha256: str
    weights_sha256: str
    parity_max_abs_diff: float | None  # None only when the caller did not ask for it on a reused folder
    parity_tolerance: float | None
    converted: bool  # False: an earlier conversion of the same source was reused
    converted_with: dict[str, str] | None = None  # rnet_hub/torch/timm versions of the conversion, when recorded


@dataclass(frozen=True)
class Outcome(Generic[_T]):
    """One model's result in a batch: a value, or the error that stopped this model (and only it)."""

    spec: ArchSpec
    value: _T | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def batch_sources(*, archives: str | os.PathLike[str] | None, names: Sequence[str] | None = None
                  ) -> list[tuple[ArchSpec, str]]:
    """``(spec, source)`` for each requested model: ``<archives>/<Name>.tar.gz``, or the published URL.

    A missing archive is not an error here: it fails that model only, with a clear message.
    """
    specs = [find_arch(n) for n in names] if names else list(ARCHITECTURES)
    if archives is None:
        return [(spec, spec.archive_url) for spec in specs]
    folder = Path(archives)
    if not folder.is_dir():
        raise BadInputError(f"{folder} is not a folder of archives; pass the folder that holds <Name>.tar.gz "
                            f"(e.g. ResNet50.tar.gz), or leave --archives out to use the published URLs")
    return [(spec, str(folder / f"{spec.name}.tar.gz")) for spec in specs]


def for_each(items: Sequence[tuple[ArchSpec, str]], work: Callable[[ArchSpec, str], _T], *,
             echo: Echo = print) -> list[Outcome[_T]]:
    """Run ``work`` on every item; an exception fails that item only and is reported, never raised."""
    outcomes: list[Outcome[_T]] = []
    for index, (spec, source) in enumerate(items, start=1):
        echo(f"[{index}/{len(items)}] {spec.name}")
        try:
            outcomes.append(Outcome(spec, value=work(spec, source)))
        except Exception as exc:  # one model's failure must not stop the others
            message = f"{type(exc).__name__}: {exc}"
            echo(f"  FAILED {message}")
            outcomes.append(Outcome(spec, error=message))
    return outcomes


def _local_source(source: str, cache_dir: Path | None, progress: bool, expected_sha256: str | None) -> Path:
    """The source as a local file (URLs downloaded into the cache, resumably, and checked against the sha256)."""
    from ..legacy.checkpoint import resolve_source

    return resolve_source(source, cache_dir=cache_dir, progress=progress, expected_sha256=expected_sha256)


def _converted_from(folder: Path) -> tuple[str | None, str | None]:
    """``(source_sha256, hf_hub_id)`` of an existing converted folder, ``(None, None)`` when there is none.

    Refuses a folder that exists but is not a converted one: converting would replace it.
    """
    if not folder.exists():
        return None, None
    if not is_converted_folder(folder):
        raise OutputExistsError(f"{folder} exists and is not a converted model folder, so it will not be replaced; "
                                f"move it away or choose another output folder")
    source_sha = read_weights_metadata(folder).get("source_sha256")
    hub_id = read_config(folder).get("pretrained_cfg", {}).get("hf_hub_id")
    return source_sha, hub_id


def _read_record(folder: Path, weights_sha256: str, source_sha256: str) -> dict | None:
    path = folder / RECORD_NAME
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    matches = record.get("weights_sha256") == weights_sha256 and record.get("source_sha256") == source_sha256
    return record if matches else None


def _write_record(folder: Path, *, source_sha256: str, weights_sha256: str, max_abs_diff: float,
                  tolerance: float) -> None:
    from .cards import converter_versions

    record = {"source_sha256": source_sha256, "weights_sha256": weights_sha256,
              "parity": {"max_abs_diff": max_abs_diff, "tolerance": tolerance}, "converted_with": converter_versions()}
    (folder / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")


def prepare(spec: ArchSpec, source: str, folder: Path, *, repo_id: str, cache_dir: Path | None = None,
            progress: bool = True, need_parity: bool = True, echo: Echo = print,
            expected_sha256: str | None = None) -> Prepared:
    """Convert ``source`` into ``folder``, unless the folder already holds a conversion of the same source.

    With ``need_parity``, a reused folder without a matching record is re-verified against the source.
    ``expected_sha256``: the sha256 a downloaded source must have (e.g. the manifest's ``source_sha256``).
    """
    local = _local_source(source, cache_dir, progress, expected_sha256)
    source_sha = file_sha256(local)
    if _converted_from(folder) != (source_sha, repo_id):
        return _convert_fresh(spec, source, local, folder, source_sha=source_sha, repo_id=repo_id,
                              progress=progress, echo=echo)
    echo(f"  up to date: {folder} was converted from the same source (sha256 {source_sha})")
    weights_sha = file_sha256(folder / WEIGHTS_NAME)
    record = _read_record(folder, weights_sha, source_sha)
    if record is None and need_parity:
        record = _reverify(folder, local, source_sha=source_sha, weights_sha=weights_sha, progress=progress,
                           echo=echo)
    parity = (record or {}).get("parity", {})
    return Prepared(spec, folder, source, source_sha, weights_sha, parity.get("max_abs_diff"),
                    parity.get("tolerance"), converted=False, converted_with=(record or {}).get("converted_with"))


def _convert_fresh(spec: ArchSpec, source: str, local: Path, folder: Path, *, source_sha: str, repo_id: str,
                   progress: bool, echo: Echo) -> Prepared:
    from ..converter import convert

    result = convert(local, folder, arch=spec.name, repo_id=repo_id, origin_url=source_url(source) or spec.archive_url,
                     overwrite=True, progress=progress)
    _write_record(folder, source_sha256=source_sha, weights_sha256=result.weights_sha256,
                  max_abs_diff=result.parity.max_abs_diff, tolerance=result.parity.tolerance)
    echo(f"  converted {source} (sha256 {source_sha}) -> {folder}: {result.parity}")
    return Prepared(spec, folder, source, source_sha, result.weights_sha256, result.parity.max_abs_diff,
                    result.parity.tolerance, converted=True, converted_with=_recorded_versions(folder))


def _reverify(folder: Path, local: Path, *, source_sha: str, weights_sha: str, progress: bool,
              echo: Echo) -> dict | None:
    """Measure the parity of a folder that has no record of it (converted outside a batch), and record it."""
    from ..converter import verify

    report = verify(folder, local, progress=progress)
    if not report.passed:
        raise PublishedMismatchError(f"{folder} does not reproduce {local.name}: {report}; convert it again")
    _write_record(folder, source_sha256=source_sha, weights_sha256=weights_sha, max_abs_diff=report.max_abs_diff,
                  tolerance=report.tolerance)
    echo(f"  re-verified: {report}")
    return _read_record(folder, weights_sha, source_sha)


def _recorded_versions(folder: Path) -> dict[str, str] | None:
    path = folder / RECORD_NAME
    return json.loads(path.read_text()).get("converted_with") if path.is_file() else None


def source_url(source: str) -> str | None:
    """The URL a source was downloaded from, when it was one."""
    return source if is_url(source) else None


def convert_all(*, archives: str | os.PathLike[str] | None = None, names: Sequence[str] | None = None,
                out_dir: str | os.PathLike[str] = DEFAULT_WORK_DIR, org: str | None = None,
                cache_dir: Path | None = None, progress: bool = True, echo: Echo = print,
                expected_sha256: Mapping[str, str] | None = None) -> list[Outcome[Prepared]]:
    """Convert every requested model (all ten by default) into ``<out_dir>/<timm architecture>``.

    Sources are ``<archives>/<Name>.tar.gz`` or, without ``archives``, the published URLs. A model
    whose folder was already converted from a source with the same sha256 is skipped; one that
    fails is reported and the others go on. ``expected_sha256`` (model name -> sha256, e.g. from
    the manifest) is what each downloaded source must hash to; a mismatch fails that model.
    """
    out = Path(out_dir)
    expected = dict(expected_sha256 or {})

    def convert_one(spec: ArchSpec, source: str) -> Prepared:
        return prepare(spec, source, out / spec.timm_arch, repo_id=spec.repo_id(org), cache_dir=cache_dir,
                       progress=progress, need_parity=False, echo=echo, expected_sha256=expected.get(spec.name))

    outcomes = for_each(batch_sources(archives=archives, names=names), convert_one, echo=echo)
    done = [o.value for o in outcomes if o.value is not None]
    failed = [o.spec.name for o in outcomes if not o.ok]
    echo(f"summary: {sum(p.converted for p in done)} converted, {sum(not p.converted for p in done)} up to date, "
         f"{len(failed)} failed{' (' + ', '.join(failed) + ')' if failed else ''}")
    return outcomes
