"""Every name in an output folder or prefix, defined once (DESIGN.md "Storage and exactly-once").

A newcomer reads here what an output holds; every module that writes, lists, reads or deletes
in an output takes its names from here and spells none itself:

    images/<ab>/<item_id>.<ext>   the images, by the first two characters of their item id
    _previews/<ab>/<item_id>.webp small unsigned previews of judged candidates, for review only:
                                  never an asset, never `path`, disposable (`preview_path`)
    _shards/part-*.parquet        committed outcomes: the commit points
    _embeddings/part-*.parquet    the image embeddings of those outcomes (a shard's sidecar)
    _state/current.json           the consolidated state in force: its generation, the ranges of
                                  item ids it cuts the outcomes into, the last shard it covers
    _state/<generation>/outcomes-<prefix>.parquet    a range's latest outcomes, by item id
                       /embeddings-<prefix>.parquet  their image embeddings
    _decisions/part-*.parquet     a reviewer's decisions, as applied
    _runs/<run_id>.json           one record per run: its config, versions and models
    _work/                        a local run's driver files (plan, pending work), removed at its end
    results.parquet, summary.json, report.html
    report_assets/outline-<key>.png           a staged product's outline, shown over its images
    report_assets/<generation>/rows-<n>.js    one report's rows, a chunk at a time, loaded on demand
                              /index.js       the filters' codes of every row (styles, statuses, reasons)
                              /search-<n>.js  the text a search matches, a part at a time
    _demo_signer/                 the throwaway CA and signer of demo mode
    .lock                         the lock of the one run that holds the output (flocked locally)
    .tmp-*                        what a local write in progress (or a killed one) leaves

Pure names: no I/O and no heavy imports, so any module of any folder may import it.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

from pipeline.spec.limits import FORMATS

if TYPE_CHECKING:
    import polars as pl

IMAGES = "images"
PREVIEWS = "_previews"
SHARDS = "_shards"
EMBEDDINGS = "_embeddings"
STATE = "_state"
STATE_CURRENT = f"{STATE}/current.json"
DECISIONS = "_decisions"
RUNS = "_runs"
WORK = "_work"
RESULTS = "results.parquet"
SUMMARY = "summary.json"
REPORT = "report.html"
ASSETS = "report_assets"
DEMO_SIGNER = "_demo_signer"
LOCK = ".lock"
DEMO_FILES = ("ca.pem", "chain.pem", "signer.key")  # the CA, the signer's chain, its key
DEMO_CA = f"{DEMO_SIGNER}/{DEMO_FILES[0]}"

OUTLINE_PREFIX, GENERATION_PREFIX = "outline-", "g-"  # the two kinds of thing in ASSETS
TEMP_PREFIX = ".tmp-"  # a local write's temp file (or folder) beside its target
PART_PREFIX, PART_SUFFIX = "part-", ".parquet"  # shards, sidecars and decision parts

# Where local writes leave temp files: the output folder itself (results, summary, the demo
# signer's folder), the shard, sidecar and run-record folders, and each image and preview folder. (A PUT to
# object storage is whole or absent: it leaves no temp objects.)
TEMP_GLOBS = (f"{TEMP_PREFIX}*", f"{SHARDS}/{TEMP_PREFIX}*", f"{EMBEDDINGS}/{TEMP_PREFIX}*",
              f"{STATE}/{TEMP_PREFIX}*", f"{STATE}/*/{TEMP_PREFIX}*",
              f"{RUNS}/{TEMP_PREFIX}*", f"{IMAGES}/*/{TEMP_PREFIX}*", f"{PREVIEWS}/*/{TEMP_PREFIX}*")



def image_path(item_id: str, fmt: str) -> str:
    """Where a candidate's image goes, relative to the output: from its item id only."""
    return f"{IMAGES}/{item_id[:2]}/{item_id}.{FORMATS[fmt].extension}"


def clean_path(item_id: str, fmt: str) -> str:
    """Where the image as generated goes when a brand overlay is drawn on the one at `image_path`."""
    return f"{IMAGES}/{item_id[:2]}/{item_id}.clean.{FORMATS[fmt].extension}"


def preview_path(item_id: str) -> str:
    """Where a candidate's preview goes: outside `images/`, so nothing that lists, verifies or
    cleans images ever takes it for one; always WebP, whatever the output format."""
    return f"{PREVIEWS}/{item_id[:2]}/{item_id}.webp"


def source_path(parent: str, fmt: str, overlaid: bool) -> str:
    """The file a child (a refinement, a channel format) starts from: its parent's image as
    generated, the clean one where a brand overlay was drawn on it."""
    return clean_path(parent, fmt) if overlaid else image_path(parent, fmt)


def image_path_expr(item_id: pl.Expr, fmt: str) -> pl.Expr:
    """`image_path` over a column (a Python call per candidate cost about 1 s per 2M)."""
    import polars as pl

    return pl.concat_str([pl.lit(f"{IMAGES}/"), item_id.str.slice(0, 2), pl.lit("/"), item_id,
                          pl.lit(f".{FORMATS[fmt].extension}")])


def part_name(number: int, token: str) -> str:
    """The name of the `number`th part of a folder: names sort in commit order, `token` keeps
    two writers' parts apart."""
    return f"{PART_PREFIX}{number:06d}-{token}{PART_SUFFIX}"


def part_number(rel: str) -> int:
    """The commit number of a part (`part_name`): parts are ordered by it, never by name (a
    millionth part's name sorts before the 999,999th's)."""
    return int(posixpath.basename(rel)[len(PART_PREFIX):].split("-", 1)[0])


def state_generation(token: str) -> str:
    """The folder of one consolidated state; `STATE_CURRENT` names the one in force."""
    return f"{STATE}/{GENERATION_PREFIX}{token}"


def state_outcomes(generation: str, prefix: str) -> str:
    """A consolidated range's latest outcomes (`prefix`: the range's leading item-id digits)."""
    return f"{generation}/outcomes-{prefix or 'all'}.parquet"


def state_embeddings(generation: str, prefix: str) -> str:
    """A consolidated range's image embeddings."""
    return f"{generation}/embeddings-{prefix or 'all'}.parquet"


def is_part(rel: str) -> bool:
    """Whether `rel` is a committed part (not a temp file, not another file in the folder)."""
    name = posixpath.basename(rel)
    return name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)


def outline_path(key: str) -> str:
    """Where the outline of a staged product goes (`key`: a digest of its inputs and size)."""
    return f"{ASSETS}/{OUTLINE_PREFIX}{key}.png"


def is_outline(rel: str) -> bool:
    """Whether `rel`, a file under `ASSETS`, is an outline (not one of a report's generations)."""
    return posixpath.dirname(rel) == ASSETS and posixpath.basename(rel).startswith(OUTLINE_PREFIX)


def report_generation(token: str) -> str:
    """The folder of one written report's row files: report.html names exactly one, so a new
    report's files never mix with those a reader of the old one is still loading."""
    return f"{ASSETS}/{GENERATION_PREFIX}{token}"


def generation_of(rel: str) -> str | None:
    """The generation folder that `rel`, a file under `ASSETS`, belongs to (None: an outline)."""
    parts = rel.split("/")
    if len(parts) > 2 and parts[0] == ASSETS and parts[1].startswith(GENERATION_PREFIX):
        return f"{ASSETS}/{parts[1]}"
    return None


def report_rows(generation: str, number: int) -> str:
    """The `number`th chunk of a report's rows (a script that hands them to the page)."""
    return f"{generation}/rows-{number:06d}.js"


def report_index(generation: str) -> str:
    """A report's filter codes: every row's style and every candidate's status and reason."""
    return f"{generation}/index.js"


def report_search(generation: str, number: int) -> str:
    """The `number`th part of the text a report's search matches."""
    return f"{generation}/search-{number:04d}.js"


def run_record(run_id: str) -> str:
    """Where a run's record goes."""
    return f"{RUNS}/{run_id}.json"


def is_run_record(rel: str) -> bool:
    """Whether `rel`, a file under `RUNS`, is a run's record."""
    return rel.endswith(".json")
