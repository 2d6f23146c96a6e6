"""The study's report: ``report.md`` and a self-contained ``report.html`` (pictures inlined as base64).

Both are rendered from one list of blocks (:func:`build_blocks`): the settings, the results (mean ± std
over runs), the paired comparisons with their verdicts, the pictures, every cell's wall time and energy,
the exact command and the package versions.
"""

from __future__ import annotations

import base64
import html
import math
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .runner import ENERGY_MISSING

if TYPE_CHECKING:
    import pandas as pd

    from .plots import Picture

__all__ = ["PACKAGES", "build_blocks", "package_versions", "render_html", "render_markdown"]

#: The packages whose versions the report lists.
PACKAGES = ("rnet-hub", "torch", "timm", "transformers", "accelerate", "datasets", "scikit-learn", "scipy", "numpy",
            "pandas", "matplotlib", "ray", "codecarbon")
#: A block: ("h2", text) | ("p", text) | ("code", text) | ("table", (header, rows)) | ("image", (file, alt)).
Block = tuple[str, Any]


def package_versions() -> dict[str, str]:
    """Python's and each of :data:`PACKAGES`' version ("not installed" when missing)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–" if value is None or math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def _mean_std(frame: pd.DataFrame, column: str) -> str:
    values = frame[column].dropna() if column in frame.columns else []
    if len(values) == 0:
        return "–"
    std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    return f"{float(values.mean()):.4f} ± {_num(std)}"


def _results_rows(final: pd.DataFrame, columns: Sequence[str]) -> list[list[str]]:
    rows = []
    for (model, lr, fraction, init), block in final.groupby(["model", "lr", "fraction", "init"], sort=False):
        rows.append([str(model), f"{lr:g}", f"{fraction:g}", str(init), str(len(block)),
                     *(_mean_std(block, c) for c in columns)])
    return rows


def build_blocks(*, settings: Mapping[str, Any], command: str, final: pd.DataFrame, comparisons: pd.DataFrame,
                 pictures: Sequence[Picture], records: Sequence[Mapping[str, Any]], metric: str, greater: bool,
                 first: int, wall_s: float, versions: Mapping[str, str]) -> list[Block]:
    """The report's blocks (see the module docstring). ``records`` are the cells' ``cell.json`` records."""
    alpha = settings.get("alpha", 0.05)
    done = [r for r in records if r.get("status") == "done"]
    failed = [r for r in records if r.get("status") != "done"]
    direction = "higher is better" if greater else "lower is better"
    counts = ", ".join(f"{k} {v}" for k, v in settings.get("data_summary", {}).get("counts", {}).items())
    blocks: list[Block] = [
        ("h1", "Does RadiologyNET help on this data? A study of initialisations"),
        ("p", f"Data: {settings.get('data')} ({settings.get('task')}; {counts} images); models: "
              f"{', '.join(settings['models'])}; inits: {', '.join(settings['inits'])}; training fractions: "
              f"{', '.join(f'{f:g}' for f in settings['fractions'])}; learning rates: "
              f"{', '.join(f'{x:g}' for x in settings['lrs'])}; {settings['runs']} run(s) per cell (seeds "
              f"{settings['seed']}..{settings['seed'] + settings['runs'] - 1}); {settings['epochs']} epochs each, "
              f"no early stopping. Main metric: validation {metric} ({direction}). Cells: {len(done)} done, "
              f"{len(failed)} not done, of {len(records)}."),
        ("p", f"How to read it: mean ± std are over the runs. 'auc first {first}' is the area under the validation "
              f"curve over epochs 1..{first} divided by {max(first - 1, 1)}: its mean height, so a boost in the "
              f"first epochs raises it. The comparisons pair run r of one init with run r of another (same data, "
              f"same order, same seed). Results on stand-in (random) weights say nothing about the real "
              f"RadiologyNET weights."),
        ("h2", "Results (mean ± std over runs)"),
    ]
    columns = [f"best_{metric}", f"auc_first{first}_{metric}", f"test_{metric}"]
    header = ["model", "lr", "fraction", "init", "runs", f"best val {metric}", f"auc first {first}", f"test {metric}"]
    blocks.append(("table", (header, _results_rows(final, columns))))
    blocks.append(("h2", f"Paired comparisons between inits (alpha={alpha:g})"))
    blocks.append(("p", "Paired t-test with Cohen's d_z; Wilcoxon signed-rank with the rank-biserial correlation; "
                        "two-sided, not corrected for the number of comparisons. With n runs the Wilcoxon p "
                        "cannot go below 2/2^n (0.0625 for 5 runs)."))
    comp_rows = [[str(r.model), f"{r.lr:g}", f"{r.fraction:g}", str(r.measure), f"{r.a} vs {r.b}", str(r.n),
                  _num(r.mean_diff), _num(r.t_p), _num(r.cohens_dz, 3), _num(r.w_p), _num(r.rank_biserial, 3),
                  str(r.verdict)] for r in comparisons.itertuples()]
    blocks.append(("table", (["model", "lr", "fraction", "measure", "a vs b", "n", "mean a-b", "t-test p", "d_z",
                              "Wilcoxon p", "r (rank-biserial)", "verdict"], comp_rows)))
    blocks.append(("h2", "Pictures"))
    for picture in pictures:
        blocks.append(("p", picture.title))
        blocks.append(("image", (picture.name, picture.title)))
    blocks.append(("h2", "Cells: wall time and energy"))
    energy_notes = {str(r.get("energy_note")) for r in done if r.get("energy_kwh") is None}
    if energy_notes or not done:
        blocks.append(("p", f"Energy: {', '.join(sorted(energy_notes)) or ENERGY_MISSING}."))
    cell_rows = []
    for record in records:
        cell = record.get("cell", {})
        key = f"{cell.get('model')} {cell.get('init')} f={cell.get('fraction', 0):g} lr={cell.get('lr', 0):g} " \
              f"run {cell.get('run')}"
        test = record.get("test", {}).get(metric)
        status = f"{record.get('status')}{' (resumed)' if record.get('resumed') else ''}"
        cell_rows.append([key, status, str(record.get("attempt", "")),
                          str(len(record.get("epochs", []))), _num(test), _num(record.get("wall_s"), 3),
                          _num(record.get("energy_kwh"), 3) if record.get("energy_kwh") is not None else "–"])
    blocks.append(("table", (["cell", "status", "tries", "epochs", f"test {metric}", "wall time (s)", "energy (kWh)"],
                             cell_rows)))
    if any(r.get("resumed") for r in done):
        blocks.append(("p", "A resumed cell's wall time and energy cover the part after the interruption only."))
    for record in failed:
        if record.get("error"):
            blocks.append(("p", f"{record['cell'].get('model')} {record['cell'].get('init')} failed:"))
            blocks.append(("code", str(record["error"]).strip().splitlines()[-1]))
    blocks.append(("h2", "Reproduce"))
    blocks.append(("code", command))
    blocks.append(("p", f"Study wall time (this invocation): {wall_s:.1f} s; sum over the cells' runs: "
                        f"{sum(float(r.get('wall_s') or 0) for r in done):.1f} s."))
    blocks.append(("table", (["package", "version"], [[k, v] for k, v in versions.items()])))
    return blocks


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[Block]) -> str:
    """The blocks as Markdown (pictures by relative file name)."""
    out = []
    for kind, value in blocks:
        if kind in ("h1", "h2"):
            out.append(f"{'#' if kind == 'h1' else '##'} {value}")
        elif kind == "p":
            out.append(str(value))
        elif kind == "code":
            out.append(f"```\n{value}\n```")
        elif kind == "image":
            out.append(f"![{value[1]}]({value[0]})")
        elif kind == "table":
            header, rows = value
            lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
          "table{border-collapse:collapse;margin:1em 0;font-size:0.85em}td,th{border:1px solid #ccc;padding:3px 6px}"
          "th{background:#f3f3f3}pre{background:#f6f6f6;padding:0.6em;overflow-x:auto}img{max-width:100%}")


def render_html(blocks: Sequence[Block], folder: Path) -> str:
    """The blocks as one self-contained HTML page: each picture (read from ``folder``) inlined as base64."""
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>RadiologyNET study</title>"
           f"<style>{_STYLE}</style></head><body>"]
    for kind, value in blocks:
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{html.escape(str(value))}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{html.escape(str(value))}</p>")
        elif kind == "code":
            out.append(f"<pre><code>{html.escape(str(value))}</code></pre>")
        elif kind == "image":
            data = base64.b64encode((folder / value[0]).read_bytes()).decode("ascii")
            out.append(f"<p><img alt='{html.escape(value[1], quote=True)}' src='data:image/png;base64,{data}'></p>")
        elif kind == "table":
            header, rows = value
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
