"""Channel formats: the shapes an approved visual is published in (a 9:16 story, a 1.91:1 link
card, a 300×250 banner), named the way marketing names them. One rule for reading a format's
name, used by the job's `[formats].sizes` and a style's `formats` column alike.

- An aspect `"W:H"` (`"9:16"`, `"1.91:1"`): the source extended by generated margins to that
  aspect, never cropped or scaled.
- An exact size `"WxH"` (`"300x250"`): outpainted to that aspect, then resized to exactly W×H.

Plain Python (no Arrow, no models): validation reads it before anything loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from pipeline.spec.limits import LIMITS, watermarkable

_ASPECT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*$")
_EXACT = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
MAX_ASPECT = 10  # wider or taller than 10:1 is a banner no outpainting fills sensibly
ALLOWED = ('an aspect "W:H" such as "9:16" or "1.91:1", or an exact size "WxH" such as "300x250" '
           f"(sides {LIMITS['format_side']}, at most {MAX_ASPECT}:1 either way)")


@dataclass(frozen=True)
class ChannelFormat:
    """One format: its name as results and file names show it, its aspect (width / height) and,
    for an exact size, the pixels it ends at."""

    name: str  # canonical: "9:16", "1.91:1", "300x250"
    aspect: Fraction  # width / height
    size: tuple[int, int] | None = None  # (width, height) of an exact size, else None

    @property
    def exact(self) -> bool:
        return self.size is not None


def parse(text: str) -> ChannelFormat:
    """The format a name stands for, or ValueError saying what is allowed."""
    if not isinstance(text, str):
        raise ValueError(f"a format is a string: {ALLOWED}")
    if m := _EXACT.match(text):
        w, h = int(m[1]), int(m[2])
        if not (LIMITS["format_side"].allows(w) and LIMITS["format_side"].allows(h)):
            raise ValueError(f"exact size sides must be {LIMITS['format_side']}")
        return _checked(ChannelFormat(f"{w}x{h}", Fraction(w, h), (w, h)))
    if m := _ASPECT.match(text):
        w, h = Fraction(m[1]), Fraction(m[2])
        if not w or not h:
            raise ValueError(f"an aspect's sides must be above 0: {ALLOWED}")
        return _checked(ChannelFormat(f"{_number(w)}:{_number(h)}", w / h))
    raise ValueError(f"not a format: {ALLOWED}")


def _checked(f: ChannelFormat) -> ChannelFormat:
    if not Fraction(1, MAX_ASPECT) <= f.aspect <= MAX_ASPECT:
        raise ValueError(f"{f.name} is more than {MAX_ASPECT}:1: {ALLOWED}")
    return f


def _number(x: Fraction) -> str:
    """1.91 as "1.91", 16 as "16": the shortest decimal a person wrote."""
    return str(x.numerator) if x.denominator == 1 else format(float(x), "g")


def delivered_size(width: int, height: int, variant: str | None) -> tuple[int, int]:
    """The pixels of a candidate's image: its planned (generated) size, except an exact-size
    format's, which is resized to its own after outpainting."""
    if variant is not None and (f := parse(variant)).exact:
        return f.size
    return int(width), int(height)


def problems(names: list[str] | tuple[str, ...]) -> list[str]:
    """What is wrong with a list of formats, one line per bad or repeated name (two names of one
    format, such as "9:16" and "18:32", are one image: the second is refused)."""
    found, seen = [], {}
    for name in names:
        try:
            f = parse(name)
        except ValueError as e:
            found.append(f"{name!r}: {e}")
            continue
        key = f.size or f.aspect
        if key in seen:
            found.append(f"{name!r} is the same format as {seen[key].name!r}")
        seen.setdefault(key, f)
    return found


def parse_all(names: list[str] | tuple[str, ...]) -> tuple[ChannelFormat, ...]:
    """Every format of a checked list (`problems` is empty), in order."""
    if found := problems(names):
        raise ValueError("; ".join(found))
    return tuple(parse(name) for name in names)


def unwatermarkable(names: list[str] | tuple[str, ...]) -> list[str]:
    """The exact sizes among `names` with too few pixels for the watermark (an aspect only adds
    margins to its source, which is checked as a row); names that do not parse are skipped
    (`problems` reports them)."""
    found = []
    for name in names:
        try:
            f = parse(name)
        except ValueError:
            continue
        if f.exact and not watermarkable(*f.size):
            found.append(f.name)
    return found
