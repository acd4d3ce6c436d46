"""The record of a consolidated state: `_state/current.json`, replaced last when a compaction
consolidates (the commit: an atomic rename, or a whole-object PUT), read first by every reader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pipeline.storage import layout
from pipeline.storage.store import Output


@dataclass(frozen=True)
class Generation:
    """A consolidated state: `parts[prefix]` the latest outcomes of a range (sorted by item id),
    `embeddings[prefix]` their image embeddings; it covers every shard numbered up to `through`.
    `committed` counts every outcome ever committed (a regenerated candidate counts again),
    `outcomes` the latest ones it holds."""

    name: str = ""
    digits: int = 0
    through: int = -1
    outcomes: int = 0
    committed: int = 0
    parts: dict[str, str] = field(default_factory=dict)
    embeddings: dict[str, str] = field(default_factory=dict)

    @classmethod
    def current(cls, out: Output) -> Generation:
        """The generation `_state/current.json` names (none yet: an empty one)."""
        if not out.exists(layout.STATE_CURRENT):
            return cls()
        fields = json.loads(out.get(layout.STATE_CURRENT))
        return cls(**{k: v for k, v in fields.items() if k in cls.__dataclass_fields__})

    def to_json(self) -> bytes:
        return (json.dumps(self.__dict__, indent=1, sort_keys=True) + "\n").encode()
