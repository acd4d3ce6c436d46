"""The filters' index of a report (`index.js`): every row's style and number of candidates, and
every candidate's (status, reason) pair, as codes into two short lists. The page counts its
filters over every row from it without loading the rows.

It is as long as the run (a code a candidate), so its three lists of codes go to temp files as
they fill, `FLUSH` codes at a time, and the script is put together from them in a staged file
(`Output.staged`): never whole in memory. The script is the same bytes as
`__report.index(<json_for_script of the object>);`.
"""

from __future__ import annotations

import shutil
from array import array
from pathlib import Path

from pipeline.storage.store import Output

FLUSH = 65_536  # codes a list holds in memory before they go to its temp file
LISTS = ("style", "size", "code")  # per row: its style, its candidates; per candidate: its pair


class Index:
    """Codes added row by row (`add`), written as one script by `write`."""

    def __init__(self, folder: Path):
        self.styles: dict[str, int] = {}  # code of each style, in order of first sight
        self.pairs: dict[tuple[str, str], int] = {}  # code of each (status, reason code)
        self.paths = {name: folder / f"index-{name}.txt" for name in LISTS}
        self.files = {name: open(path, "w", encoding="ascii") for name, path in self.paths.items()}  # noqa: SIM115
        self.pending = {name: array("q") for name in LISTS}
        self.started = dict.fromkeys(LISTS, False)

    def add(self, style: str, pairs: list[tuple[str, str]]) -> None:
        """One row: its style and each of its candidates' (status, reason code)."""
        self.pending["style"].append(self.styles.setdefault(style, len(self.styles)))
        self.pending["size"].append(len(pairs))
        codes, known = self.pending["code"], self.pairs
        for p in pairs:
            codes.append(known.setdefault(p, len(known)))
        if len(codes) >= FLUSH:
            self._flush()

    def _flush(self) -> None:
        for name, codes in self.pending.items():
            if codes:
                self.files[name].write(("," if self.started[name] else "") + ",".join(map(str, codes)))
                self.started[name] = True
                self.pending[name] = array("q")

    def close(self) -> None:
        self._flush()
        for f in self.files.values():
            f.close()

    def write(self, output: Output, rel: str, head: str) -> None:
        """Write the script to `rel`: `head` (the JSON of the styles and pairs, without its
        closing brace), then each list of codes from its temp file."""
        self.close()
        with output.staged(rel) as path, open(path, "w", encoding="utf-8") as f:
            f.write(f"__report.index({head}")
            for name in LISTS:
                f.write(f',"{name}":[')
                with open(self.paths[name], encoding="ascii") as part:
                    shutil.copyfileobj(part, f)
                f.write("]")
            f.write("});\n")
