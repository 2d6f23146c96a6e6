"""Publishing all ten models in one safe, repeatable run.

For each model: take its archive (``<archives>/<Name>.tar.gz``) or the authors' published
URL, convert it (or reuse an earlier conversion of the same source, see :mod:`.batch`), write
the full model card (:mod:`.cards`), and push the folder in one commit (:mod:`.push`, which
retries transient failures and uploads nothing when the Hub already holds identical files). A
model that fails is reported and the others go on; the summary and the return code say which
failed. The manifest, when one is given (the maintainers keep theirs in a checkout's
``conversion/manifest.json``), records per model the source sha256, the sha256 of every
pushed file, the commit sha, the parity figure and the card's provenance, so a publication can
be audited, re-verified later by the pinned commit (:func:`verify_published`) and its card
rendered again (:func:`model_cards`).

A dry run prints the plan (repository, files, sizes, sha256) and touches no network: local
archives are converted (the plan needs the files' hashes); a URL is neither downloaded nor
converted unless an earlier conversion of it is already in the work folder.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from ..architectures import ARCHITECTURES, DEFAULT_ORG, ArchSpec, find_arch
from ..archives.download import is_url
from ..errors import BadInputError, ConvertedFolderError, PublishedMismatchError
from ..folder import CARD_NAME, RECORD_NAME, read_weights_metadata
from ..parity import ParityReport
from ..version import __version__
from .batch import DEFAULT_WORK_DIR, Echo, Outcome, Prepared, batch_sources, for_each, prepare, source_url
from .push import LocalFile, PushResult, push_folder

__all__ = ["DEFAULT_WORK_DIR", "MANIFEST_FORMAT", "PublishReport", "Published", "empty_manifest", "model_card",
           "model_cards", "publish_all", "read_manifest", "verify_published"]

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class Published:
    """What happened to one model: ``published``, ``unchanged`` (nothing uploaded) or ``planned`` (dry run)."""

    spec: ArchSpec
    repo_id: str
    status: str
    prepared: Prepared | None = None  # None: a dry run that could not convert without the network
    files: tuple[LocalFile, ...] = ()
    commit_sha: str | None = None
    commit_url: str | None = None
    verified: ParityReport | None = None


@dataclass(frozen=True)
class PublishReport:
    """The outcome of a batch, one entry per model, in table order."""

    outcomes: list[Outcome[Published]]
    dry_run: bool
    manifest: Path | None = None

    @property
    def failed(self) -> list[str]:
        return [o.spec.name for o in self.outcomes if not o.ok]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> str:
        lines = []
        for outcome in self.outcomes:
            if outcome.ok and outcome.value is not None:
                value = outcome.value
                where = f"commit {value.commit_sha}" if value.commit_sha else f"{len(value.files)} files"
                lines.append(f"  {outcome.spec.name:<17} {value.repo_id:<40} {value.status:<10} {where}")
            else:
                lines.append(f"  {outcome.spec.name:<17} {'':<40} {'FAILED':<10} {outcome.error}")
        statuses = [o.value.status for o in self.outcomes if o.ok and o.value is not None]
        counts = ", ".join(f"{statuses.count(s)} {s}" for s in ("published", "unchanged", "planned") if s in statuses)
        verdict = f"{len(self.failed)} failed ({', '.join(self.failed)})" if self.failed else "none failed"
        tail = [f"manifest: {self.manifest}"] if self.manifest else []
        return "\n".join([f"summary: {counts or 'nothing done'}; {verdict}", *lines, *tail])


def publish_all(*, archives: str | os.PathLike[str] | None = None, names: Sequence[str] | None = None,
                org: str | None = None, work_dir: str | os.PathLike[str] = DEFAULT_WORK_DIR,
                manifest: str | os.PathLike[str] | None = None, dry_run: bool = False,
                revision: str | None = None, private: bool = False, verify_after: bool = False,
                token: str | None = None, endpoint: str | None = None, cache_dir: Path | None = None,
                progress: bool = True, echo: Echo = print) -> PublishReport:
    """Convert and push every requested model (all ten by default); see the module docstring.

    Args:
        archives: folder holding ``<Name>.tar.gz``; the published URLs when ``None``.
        names: the models to publish (any names ``find_arch`` accepts); all ten when ``None``.
        org: Hub organisation (default ``$RNET_HUB_ORG`` or ``radiologynet``).
        work_dir: where the converted folders live (``<work_dir>/<timm architecture>``), kept between runs.
        manifest: the JSON manifest to update after each model (see :func:`read_manifest`); ``None``
            records nothing. A dry run never writes it.
        verify_after: after pushing, download each model by its commit sha and rerun parity against the source;
            a model that does not reproduce it fails with :class:`~rnet_hub.errors.PublishedMismatchError`.
    """
    work = Path(work_dir)
    manifest_path = None if manifest is None else Path(manifest)
    if manifest_path is not None:
        read_manifest(manifest_path)  # refuse a file that is no manifest before anything is pushed

    def record(published: Published) -> None:
        if manifest_path is not None:
            _record(manifest_path, published, revision=revision)

    def publish_one(spec: ArchSpec, source: str) -> Published:
        published = _publish_one(spec, source, work / spec.timm_arch, repo_id=spec.repo_id(org), dry_run=dry_run,
                                 revision=revision, private=private, token=token, endpoint=endpoint,
                                 cache_dir=cache_dir, progress=progress, echo=echo)
        if dry_run:
            return published
        record(published)
        if verify_after:
            published = _verified(published, token=token, endpoint=endpoint, cache_dir=cache_dir,
                                  progress=progress, echo=echo)
            record(published)
            if published.verified is not None and not published.verified.passed:
                raise PublishedMismatchError(f"{published.repo_id}@{published.commit_sha} does not reproduce its "
                                             f"source: {published.verified}")
        return published

    outcomes = for_each(batch_sources(archives=archives, names=names), publish_one, echo=echo)
    report = PublishReport(outcomes, dry_run=dry_run, manifest=None if dry_run else manifest_path)
    echo(report.summary())
    return report


def _publish_one(spec: ArchSpec, source: str, folder: Path, *, repo_id: str, dry_run: bool, revision: str | None,
                 private: bool, token: str | None, endpoint: str | None, cache_dir: Path | None, progress: bool,
                 echo: Echo) -> Published:
    echo(f"  {source} -> {repo_id}")
    if dry_run and is_url(source) and not (folder / RECORD_NAME).is_file():
        echo(f"  would download {source} ({spec.archive_mib:.0f} MiB as published), convert it and push it to "
             f"{repo_id}; the files are known only after conversion (dry run: nothing downloaded)")
        return Published(spec, repo_id, "planned")
    prepared = _reuse_for_dry_run(spec, source, folder) if dry_run and is_url(source) else prepare(
        spec, source, folder, repo_id=repo_id, cache_dir=cache_dir, progress=progress, echo=echo)
    _write_card(prepared, repo_id)
    result = push_folder(folder, repo_id=repo_id, revision=revision, private=private, dry_run=dry_run, token=token,
                         endpoint=endpoint, commit_message=f"Upload RadiologyNET {spec.name} (rnet-hub {__version__})")
    _echo_push(result, echo)
    status = "planned" if dry_run else "published" if result.changed else "unchanged"
    return Published(spec, repo_id, status, prepared, result.files, result.commit_sha, result.commit_url)


def _reuse_for_dry_run(spec: ArchSpec, source: str, folder: Path) -> Prepared:
    """An earlier conversion of ``source`` (a URL) as it stands, without downloading to re-check the source."""
    record = json.loads((folder / RECORD_NAME).read_text())
    parity = record["parity"]
    return Prepared(spec, folder, source, record["source_sha256"], record["weights_sha256"], parity["max_abs_diff"],
                    parity["tolerance"], converted=False, converted_with=record.get("converted_with"))


def _write_card(prepared: Prepared, repo_id: str) -> None:
    """Replace the conversion's short card by the full card (deterministic, so re-runs upload nothing)."""
    from .cards import build_card_for_folder

    if prepared.parity_max_abs_diff is None:
        raise ConvertedFolderError(f"{prepared.folder}: no parity figure recorded; convert it again")
    card = build_card_for_folder(prepared.folder, parity_max_abs_diff=prepared.parity_max_abs_diff,
                                 parity_tolerance=prepared.parity_tolerance, repo_id=repo_id,
                                 source_url=source_url(prepared.source), converted_with=_card_versions(prepared))
    card.save(prepared.folder / CARD_NAME)


def _card_versions(prepared: Prepared) -> dict[str, str]:
    """The converter versions the card states: those recorded at conversion, else (older records) these."""
    from .cards import converter_versions

    return {**converter_versions(), **(prepared.converted_with or {})}


def _echo_push(result: PushResult, echo: Echo) -> None:
    if result.dry_run:
        echo(f"  dry run: would push {len(result.files)} files ({result.total_bytes} bytes) to "
             f"{result.repo_id}@{result.revision} in one commit; nothing uploaded")
        for file in result.files:
            echo(f"    {file.path:<20} {file.size:>12} bytes  sha256 {file.sha256}")
    elif result.changed:
        echo(f"  pushed {len(result.files)} files in one commit {result.commit_sha}: {result.commit_url}")
    else:
        echo(f"  unchanged: {result.repo_id}@{result.revision} already holds identical files (sha256 compared); "
             f"nothing uploaded")


def verify_published(repo_id: str, *, revision: str, against: str | os.PathLike[str], token: str | None = None,
                     endpoint: str | None = None, cache_dir: Path | None = None,
                     progress: bool = True) -> ParityReport:
    """Download ``repo_id`` at ``revision`` (pin a commit sha) and rerun parity against the source archive."""
    from ..converter import verify
    from ..hub import download_model_files

    with tempfile.TemporaryDirectory(prefix="rnet-hub-verify-") as tmp:
        folder = download_model_files(repo_id, revision=revision, local_dir=tmp, token=token, endpoint=endpoint)
        return verify(folder, against, cache_dir=cache_dir, progress=progress)


def _verified(published: Published, *, token: str | None, endpoint: str | None, cache_dir: Path | None,
              progress: bool, echo: Echo) -> Published:
    assert published.prepared is not None and published.commit_sha is not None
    report = verify_published(published.repo_id, revision=published.commit_sha, against=published.prepared.source,
                              token=token, endpoint=endpoint, cache_dir=cache_dir, progress=progress)
    echo(f"  verified {published.repo_id}@{published.commit_sha}: {report}")
    return replace(published, verified=report)


# ------------------------------------------------------------------ manifest
def empty_manifest() -> dict[str, Any]:
    """A manifest that records nothing yet (what :func:`read_manifest` returns for a missing file)."""
    return {"format": MANIFEST_FORMAT, "models": {}}


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest at ``path`` as a dict, ``{"format": 1, "models": {Name: entry}}``; empty when there is none yet.

    An entry (one per published model, keyed by its legacy name, e.g. ``ResNet50``) holds ``repo_id``,
    ``revision``, ``commit_sha``, ``commit_url``, ``source`` (path or URL), ``source_name``,
    ``source_sha256``, ``weights_sha256``, ``files`` (path -> size, sha256), ``parity``
    (``max_abs_diff``, ``tolerance``), ``converted_with`` (rnet_hub/torch/timm versions of the
    conversion), ``converter`` (the rnet_hub that published it) and, after ``verify_after``,
    ``verified_at_commit``.
    """
    path = Path(path)
    if not path.is_file():
        return empty_manifest()
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise BadInputError(f"{path} is not an rnet-hub manifest of format {MANIFEST_FORMAT}; move it away or "
                            f"pass another --manifest")
    return manifest


def _entry(published: Published, revision: str | None) -> dict[str, Any]:
    prepared = published.prepared
    assert prepared is not None
    entry: dict[str, Any] = {
        "repo_id": published.repo_id,
        "revision": revision or "main",
        "commit_sha": published.commit_sha,
        "commit_url": published.commit_url,
        "source": prepared.source,
        "source_name": read_weights_metadata(prepared.folder).get("source_file", "unknown"),
        "source_sha256": prepared.source_sha256,
        "weights_sha256": prepared.weights_sha256,
        "files": {f.path: {"size": f.size, "sha256": f.sha256} for f in published.files},
        "parity": {"max_abs_diff": prepared.parity_max_abs_diff, "tolerance": prepared.parity_tolerance},
        "converted_with": _card_versions(prepared),
        "converter": f"rnet_hub {__version__}",
    }
    if published.verified is not None:
        entry["verified_at_commit"] = {"max_abs_diff": published.verified.max_abs_diff,
                                       "passed": published.verified.passed}
    return entry


def _record(path: Path, published: Published, *, revision: str | None) -> None:
    """Write this model's entry into the manifest (atomically, after each model, so a crash loses nothing)."""
    manifest = read_manifest(path)
    manifest["models"][published.spec.name] = _entry(published, revision)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(staging, path)


# ------------------------------------------------------------------ cards of the published models
def model_card(spec: ArchSpec | str, manifest: Mapping[str, Any]) -> ModelCard:
    """The card ``publish_all`` pushes for ``spec``: from its manifest entry, or pending when it has none.

    A model the manifest records gets the card its publication pushed (same repository, source,
    sha256, parity and converter versions). Any other gets the card of
    ``radiologynet/<timm architecture>`` with its provenance marked pending (see
    :func:`rnet_hub.publish.cards.build_card`); neither reads ``$RNET_HUB_ORG`` or installed versions,
    so the text depends only on the manifest and this package.
    """
    from .cards import build_card

    spec = spec if isinstance(spec, ArchSpec) else find_arch(spec)
    entry = manifest.get("models", {}).get(spec.name)
    if entry is None:
        return build_card(spec, repo_id=spec.repo_id(DEFAULT_ORG), source_name=None, source_sha256=None,
                          parity_max_abs_diff=None)
    missing = [key for key in ("repo_id", "source", "source_name", "source_sha256", "parity", "converted_with")
               if key not in entry]
    if missing:
        raise BadInputError(f"the manifest entry of {spec.name} lacks {', '.join(missing)} (recorded by an older "
                            f"rnet_hub); publish it again, which uploads nothing when unchanged and rewrites the entry")
    return build_card(spec, repo_id=entry["repo_id"], source_name=entry["source_name"],
                      source_sha256=entry["source_sha256"], parity_max_abs_diff=entry["parity"]["max_abs_diff"],
                      parity_tolerance=entry["parity"]["tolerance"], source_url=source_url(entry["source"]),
                      converted_with=entry["converted_with"])


def model_cards(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The ten cards :func:`model_card` renders, as ``{"<timm architecture>.md": text}`` in table order.

    The text is byte for byte the ``README.md`` that would be pushed.
    """
    return {f"{spec.timm_arch}.md": str(model_card(spec, manifest)) for spec in ARCHITECTURES}
