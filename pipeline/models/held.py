"""The diffusion models one actor holds: loaded on first use, the least recently used dropped
past `capacity`, so a job that mixes models fits the GPU memory it has."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class HeldModels(Generic[T]):
    """`get(key)` loads with `load(key)` once and keeps at most `capacity` loaded; `loads`
    counts every load (a model dropped and needed again is loaded again)."""

    def __init__(self, load: Callable[[Hashable], T], capacity: int = 1):
        if capacity < 1:
            raise ValueError(f"an actor holds at least one model, got capacity {capacity}")
        self._load, self.capacity = load, capacity
        self._held: OrderedDict[Hashable, T] = OrderedDict()
        self.loads = 0

    def get(self, key: Hashable) -> T:
        if key in self._held:
            self._held.move_to_end(key)
            return self._held[key]
        while len(self._held) >= self.capacity:  # drop before loading: the memory is needed now
            self._held.popitem(last=False)
            free_memory()
        value = self._held[key] = self._load(key)
        self.loads += 1
        return value

    def held(self) -> list[Hashable]:
        return list(self._held)


def free_memory() -> None:
    """Give back what dropped models and failed batches held (the CUDA cache too)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
