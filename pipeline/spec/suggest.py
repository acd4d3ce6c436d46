"""How an error message quotes a value and says what was meant: a value shortened, the nearest
known name ("did you mean …?"), else the known names.

Every message about the job spec, the manifest, the styles table and a reviewer's decisions
names the value and what is allowed in these words.
"""

from __future__ import annotations

import difflib


def nearest(name: str, known: list[str]) -> str | None:
    """The known name `name` is most likely a misspelling of, or None."""
    close = difflib.get_close_matches(name, known, n=1)
    return close[0] if close else None


def suggest(name: str, known: list[str], show=repr, limit: int = 12) -> str:
    """'did you mean X?' for the nearest known name, else the known names (at most `limit`), so
    an error says what is allowed, not only what is wrong."""
    close = nearest(name, known)
    if close is not None:
        return f"did you mean {show(close)}?"
    shown = ", ".join(show(k) for k in known[:limit])
    return f"known: {shown}" + (f", ... ({len(known)} in all)" if len(known) > limit else "")
