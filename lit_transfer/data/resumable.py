"""A training loader that resumes in the middle of an epoch at the batch where it stopped.

Lightning saves and restores the state of loaders that have ``state_dict``/``load_state_dict`` (its ``_Stateful``
protocol) and restores it before it creates the epoch's iterator. Without it, a run resumed from a mid-epoch
checkpoint (``interrupted.ckpt``, saved on SIGTERM) continues the epoch's batch count but starts the data again at
its first batch: the first batches of the epoch train twice and the last ones never.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, Sampler


class ResumeSampler(Sampler):
    """Another sampler's order, whose next iteration can start ``skip`` items in (once)."""

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the wrapped sampler (Lightning calls it at every epoch start)."""
        set_epoch = getattr(self.inner, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)

    @property
    def epoch(self) -> int:
        """The wrapped sampler's epoch."""
        return int(getattr(self.inner, "epoch", 0))

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        skip, self.skip = self.skip, 0
        order = iter(self.inner)
        for _ in range(skip):
            next(order, None)
        return order


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ResumeSampler` whose state is how far the current epoch got.

    ``progress`` returns the number of batches of the current epoch already trained (the training loop's count, not
    the loader's: Lightning fetches a batch ahead, and workers prefetch more).
    """

    def __init__(self, *args: Any, progress: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, ResumeSampler):
            raise TypeError("ResumableLoader needs sampler=ResumeSampler(...)")
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        """The epoch being served and the number of its batches already trained."""
        return {"epoch": self.sampler.epoch, "batches": int(self.progress())}  # type: ignore[attr-defined]

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Start the next iteration after the batches a mid-epoch checkpoint had already trained."""
        batches = int(state.get("batches", 0))
        sampler: ResumeSampler = self.sampler  # type: ignore[assignment]
        if state.get("epoch") == sampler.epoch and 0 < batches < len(self):
            sampler.skip = batches * int(self.batch_size or 1)
