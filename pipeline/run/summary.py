"""What a run made, counted: the funnel, the reasons, times and cost, and brand consistency.

The funnel planned → generated → passed moderation → passed CLIP → selected → signed → written,
each step a subset of the one before, is counted a chunk of the results at a time, so a
summary of any size costs the memory of one chunk.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.judge.outcome import reason_codes
from pipeline.run.state import Range
from pipeline.spec import schema, vocabulary
from pipeline.storage.store import Output

NO_STYLE = "(no style)"  # figures of rows without a style
FUNNEL = ("generated", "passed_moderation", "passed_filters", "selected", "signed", "written")


def funnel(results: pa.Table) -> dict[str, pa.Array]:
    """Each step of the funnel as a mask over the results, every one a subset of the one before:
    generated (it has pixels) → passed moderation (its image was measured and judged safe) →
    passed the CLIP threshold (it was ranked: ranks go to candidates that passed every filter) →
    selected (picked for a place) → signed → written."""
    def valid(name: str) -> pa.Array:
        return pc.is_valid(results[name])

    # model time and no generation error: a candidate whose generation failed on every attempt
    # carries the time those attempts cost (it is paid for), not an image
    failed = pc.and_(pc.equal(pc.fill_null(results["status"], ""), vocabulary.ERROR),
                     pc.equal(pc.fill_null(reason_codes(results), ""), vocabulary.GENERATE_ERROR))
    generated = pc.and_(valid("ms_generate"), pc.invert(failed))
    moderated = pc.and_(pc.and_(generated, valid("image_unsafe_score")),
                        pc.equal(pc.fill_null(results["moderation"], ""), vocabulary.PASS))
    ranked = pc.and_(moderated, valid("rank"))
    selected = pc.and_(ranked, pc.fill_null(results["selected"], False))
    signed = pc.and_(selected, valid("ms_sign"))
    written = pc.and_(signed, pc.equal(pc.fill_null(results["status"], ""), vocabulary.WRITTEN))
    return {"generated": generated, "passed_moderation": moderated, "passed_filters": ranked,
            "selected": selected, "signed": signed, "written": written}


class Summary:
    """The funnel, counted a chunk of the results at a time: planned → generated → passed
    moderation → passed CLIP (`passed_filters`) → selected → signed → written, with counts per
    status and reason, and the mean model and CPU time per image."""

    # Per generated candidate: generate + score + moderate on the model actor (GPU-seconds on
    # a GPU); per written image: encode + sign + write + verify on the CPU writers.
    TIMES = {"model_s_per_candidate": ("ms_generate", "ms_score", "ms_moderate"),
             "cpu_s_per_written_image": ("ms_encode", "ms_sign", "ms_write", "ms_verify")}

    def __init__(self):
        self.planned = 0
        self.steps: Counter = Counter()
        self.status: Counter = Counter()
        self.reasons: Counter = Counter()
        self.times = {name: [0.0, 0] for name in self.TIMES}  # total ms, rows counted
        self.truncated = 0  # candidates whose prompt the text encoder cut
        # similarity column → style → [sum, count] over its written images (SIMILARITIES)
        self.similarity: dict[str, dict[str, list]] = {column: {} for column in SIMILARITIES}
        self.gpu_s = 0.0
        self.cost: float | None = None  # None: no row was priced

    def add(self, results: pa.Table) -> Summary:
        self.planned += results.num_rows
        self.status.update(results["status"].to_pylist())
        self.truncated += pc.sum(pc.cast(pc.fill_null(results["truncated"], False), pa.int64())).as_py() or 0
        for column in SIMILARITIES:
            if column not in results.column_names:  # results of older releases lack it
                continue
            kept = results.filter(pc.and_(brand_images(results), pc.is_valid(results[column])))
            grouped = kept.group_by("style").aggregate([(column, "sum"), (column, "count")])
            for style, total, n in zip(*(grouped[c].to_pylist() for c in ("style", f"{column}_sum", f"{column}_count")),
                                       strict=True):
                entry = self.similarity[column].setdefault(style if style is not None else NO_STYLE, [0.0, 0])
                entry[0] += total
                entry[1] += n
        self.reasons.update(c for c in reason_codes(results).to_pylist() if c)  # by code, never by text
        for name, mask in funnel(results).items():
            self.steps[name] += pc.sum(pc.cast(mask, pa.int64())).as_py() or 0
        for name, columns in self.TIMES.items():
            present = pc.is_valid(results[columns[0]])
            self.times[name][0] += sum(pc.sum(results[c].filter(present)).as_py() or 0.0 for c in columns)
            self.times[name][1] += pc.sum(pc.cast(present, pa.int64())).as_py() or 0
        if "gpu_s" in results.column_names:  # results of a release before costs lack them
            self.gpu_s += pc.sum(results["gpu_s"]).as_py() or 0.0
            cost = pc.sum(results["cost_usd"]).as_py()
            if cost is not None:
                self.cost = (self.cost or 0.0) + cost
        return self

    def result(self) -> dict:
        return {
            "planned": self.planned,
            "finished": self.planned - self.status.get(None, 0),
            **{name: self.steps[name] for name in FUNNEL},
            vocabulary.REJECTED: self.status.get(vocabulary.REJECTED, 0),
            vocabulary.ERROR: self.status.get(vocabulary.ERROR, 0),
            vocabulary.PENDING: self.status.get(None, 0),
            "reasons": dict(self.reasons),
            **{name: round(total / count / 1000, 6) if count else None for name, (total, count) in self.times.items()},
            "truncated_prompts": self.truncated,
            "similarity": {column: {s: round(total / n, 4) for s, (total, n) in sorted(by_style.items())}
                           for column, by_style in self.similarity.items()},
            # every candidate that ran counts, so over-generation is in the cost per written image
            "gpu_s_total": round(self.gpu_s, 6),
            "cost_usd_total": self.cost,
            "cost_per_written_image_usd": (self.cost / self.steps["written"]
                                           if self.cost is not None and self.steps["written"] else None),
        }


def summarize(results: pa.Table) -> dict:
    """The funnel of a whole results table (see `Summary`)."""
    return Summary().add(results).result()


def summarize_results(output: Output | Path | str) -> dict:
    """The funnel of an output's `results.parquet`, read a batch at a time (any size, one batch's memory)."""
    from pipeline.storage.records import iter_results

    counted = Summary()
    for batch in iter_results(output):
        counted.add(batch)
    pa.default_memory_pool().release_unused()  # the batches' memory back, for what the caller reads next
    return counted.result()


# Per-image similarities to a style's images that the brand figures average: its reference image
# (the image-to-image start) and its style image (the IP-Adapter's), CLIP cosines.
SIMILARITIES = ("reference_similarity", "style_image_similarity")


def brand_images(table: pa.Table) -> pa.ChunkedArray:
    """Which rows are a style's images for its brand figures: written, and not a channel format
    (a format is its source extended: counting it would count the source again)."""
    written = pc.fill_null(pc.equal(table["status"].cast(pa.string()), vocabulary.WRITTEN), False)
    return pc.and_(written, pc.is_null(table["variant"])) if "variant" in table.column_names else written


class BrandFigures:
    """Per style, how alike its written images are: the mean pairwise cosine of their CLIP
    image embeddings, gathered range by range as a join visits them (`__call__`). For unit
    vectors the mean over pairs is (|Σe|² − n) / (n(n−1)), so it streams: a sum and a count per
    style, no pairwise matrix. An item measured twice (a killed run's sidecar, then the
    rerun's) counts once: its latest."""

    def __init__(self):
        self.sums: dict[str, tuple[np.ndarray, int]] = {}

    def __call__(self, found: Range) -> None:
        table = found.embeddings()
        if not table.num_rows:
            return
        outcomes = found.outcomes
        status = outcomes["status"].take(pc.index_in(table["item_id"], value_set=outcomes["item_id"]))
        table = table.filter(brand_images(table.append_column("status", status)))
        if not table.num_rows:
            return
        column = schema.EMBEDDING_FIELD.name
        values = pc.list_flatten(table[column]).to_numpy()  # one copy (an array a row took a second a 100k)
        vectors = values.reshape(table.num_rows, -1).astype(np.float64)
        styles = np.array([s if s is not None else NO_STYLE for s in table["style"].to_pylist()], object)
        for style in set(styles):
            total, n = self.sums.get(style, (0.0, 0))
            chosen = vectors[styles == style]
            self.sums[style] = (total + chosen.sum(axis=0), n + len(chosen))

    def result(self, similarity: dict | None = None) -> dict:
        """The figures per style; `similarity`: per column of SIMILARITIES, the mean similarity
        of each style's written images to its reference / style image (`Summary`), added where
        the style has one."""
        figures = {style: {"images": n, "mean_pairwise_cosine": (round(float((total @ total - n) / (n * (n - 1))), 4)
                                                                 if n > 1 else None)}
                   for style, (total, n) in sorted(self.sums.items())}
        for column, by_style in (similarity or {}).items():
            for style, mean in by_style.items():
                figures.setdefault(style, {"images": 0, "mean_pairwise_cosine": None})[column] = mean
        return figures
