"""How a judgement, or a failure, is written on a candidate record: its status, the `reason`
results show ("<code>: <detail>", or the bare code) and the `reason_code` that code reads.

Every rule of `judge/` and every stage records outcomes through these functions, so the two
columns never disagree and no module learns a reason by reading its text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.spec import vocabulary

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class Reason:
    """Why a candidate is rejected or failed: a code (vocabulary.REJECT_REASONS, vocabulary.ERROR_STAGES)
    and what a person reads besides (a matched term, a score, an exception)."""

    code: str
    detail: str | None = None

    @property
    def text(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code


def code_of(r: dict) -> str | None:
    """A record's reason code (tables read from an output carry it for every row: `reason_codes`)."""
    return r.get("reason_code")


def reject(r: dict, reason: Reason | str, **also) -> None:
    """The candidate is rejected for `reason` (a Reason, or a bare code)."""
    reason = reason if isinstance(reason, Reason) else Reason(reason)
    r.update(status=vocabulary.REJECTED, reason=reason.text, reason_code=reason.code, **also)


def fail(r: dict, stage: str, detail: str, **also) -> None:
    """The candidate is an error of `stage` (vocabulary.ERROR_STAGES): a rerun retries it."""
    r.update(status=vocabulary.ERROR, reason=Reason(stage, detail).text, reason_code=stage, **also)


def written(r: dict, **also) -> None:
    """The candidate's image is written and verified: no reason."""
    r.update(status=vocabulary.WRITTEN, reason=None, reason_code=None, **also)


def reason_codes(table: pa.Table) -> pa.Array:
    """Each row's reason code, over a table of stored outcomes. Rows committed before the
    `reason_code` column existed carry only `reason`, which this pipeline wrote as `<code>` or
    `<code>: <detail>`: their code is taken from it here, the one place a stored reason's text is
    read, so outputs written before stay judged as they were."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = table.column_names
    reason = table["reason"].cast(pa.string()) if "reason" in names else pa.nulls(table.num_rows, pa.string())
    written_before = pc.list_element(pc.split_pattern(reason, ": ", max_splits=1), 0)
    return pc.coalesce(table["reason_code"].cast(pa.string()), written_before) if "reason_code" in names \
        else written_before


def with_reason_codes(table: pa.Table) -> pa.Table:
    """`table` with a `reason_code` for every row (`reason_codes`), in place of the column it had."""
    codes = reason_codes(table)
    if "reason_code" in table.column_names:
        return table.set_column(table.schema.get_field_index("reason_code"), "reason_code", codes)
    return table.append_column("reason_code", codes)
