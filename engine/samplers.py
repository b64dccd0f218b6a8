"""Training-index samplers, registered by the name presets use (``train.sampler``).

Class-aware re-sampling (METHODS.md §1.6), as in the reference (BBN/decoupling heritage): a
*cycling iterator* returns the elements of a list in order and reshuffles the list in place every
time it wraps around, including before its very first element. One cycles over the class ids,
one per class over that class's dataset indices; each draw takes the next class, then the next
index of that class. So every consecutive pass of ``C`` draws holds each class once, tail images
repeat about ``n_max / n_c`` times per epoch, and the iterators' state carries over from epoch to
epoch. An epoch is ``max_c n_c × C`` draws.

The reference shuffles with Python's global ``random`` reseeded to 0 by the dataset constructor.
Here one explicit ``random.Random(seed)`` is shared by all cycling iterators and called in the
same order, so with ``seed = 0`` the draws match the reference sequence, with no global side
effects.
"""
from __future__ import annotations

import random
from typing import Any, Iterator, Sequence

from engine.registry import Registry

SAMPLERS: Registry = Registry("sampler")


class _CycleIter:
    """Cycle over a list, reshuffling it with ``rng`` whenever it wraps (and before the start)."""

    def __init__(self, items: Sequence[int], rng: random.Random) -> None:
        self.items = list(items)
        self.pos = len(self.items) - 1  # so the first draw wraps and shuffles
        self.rng = rng

    def __next__(self) -> int:
        self.pos += 1
        if self.pos == len(self.items):
            self.pos = 0
            self.rng.shuffle(self.items)
        return self.items[self.pos]

    def state(self) -> dict[str, Any]:
        return {"items": list(self.items), "pos": self.pos}

    def load(self, state: dict[str, Any]) -> None:
        self.items = [int(i) for i in state["items"]]
        self.pos = int(state["pos"])


@SAMPLERS.register("class_aware")
class ClassAwareSampler:
    """Class-aware re-sampling, one sample per class visit (METHODS.md §1.6).

    ``labels[i]`` is the class of dataset index ``i``; iterating yields ``len(self)`` dataset
    indices and leaves the cycling state where it stopped (the next epoch continues from there).
    """

    def __init__(self, labels: Sequence[int], num_classes: int, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        per_class: list[list[int]] = [[] for _ in range(num_classes)]
        for i, label in enumerate(labels):
            per_class[int(label)].append(i)
        empty = [c for c, idx in enumerate(per_class) if not idx]
        if empty:
            raise ValueError(f"class-aware sampling needs every class present; empty classes: {empty}")
        self.class_iter = _CycleIter(range(num_classes), self.rng)
        self.index_iters = [_CycleIter(idx, self.rng) for idx in per_class]
        self.num_samples = max(len(idx) for idx in per_class) * num_classes

    def __len__(self) -> int:
        return self.num_samples

    def draw(self) -> int:
        """One draw: next class, then that class's next dataset index."""
        return next(self.index_iters[next(self.class_iter)])

    def __iter__(self) -> Iterator[int]:
        for _ in range(self.num_samples):
            yield self.draw()

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss_next = self.rng.getstate()
        return {
            "rng": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
            "class_iter": self.class_iter.state(),
            "index_iters": [it.state() for it in self.index_iters],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["index_iters"]) != len(self.index_iters):
            raise ValueError(
                f"sampler state has {len(state['index_iters'])} classes, this sampler {len(self.index_iters)}"
            )
        rng = state["rng"]
        self.rng.setstate((int(rng["version"]), tuple(int(v) for v in rng["internal"]), rng["gauss_next"]))
        self.class_iter.load(state["class_iter"])
        for it, st in zip(self.index_iters, state["index_iters"]):
            it.load(st)
