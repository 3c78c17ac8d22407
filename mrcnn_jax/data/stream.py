"""Where the training input stands: the small state that makes a resumed run
read exactly the examples an uninterrupted run would have read.

No TensorFlow here: the trainer imports this module to follow and
checkpoint the position; ``pipeline.make_pipeline`` takes it to restart.

The training stream is a sequence of examples numbered by a *stream index*
``epoch * epoch_size + offset``: epoch ``e`` is the split in the order of a
shuffle seeded by ``(seed, e)`` alone, so any epoch can be rebuilt without
reading the ones before it, and an example's flip and scale are drawn from
``(seed, stream index)``. Batches are cut from this stream in order with one
canvas. With orientation buckets an example waits in its bucket's window
until the window is full, so a batch is emitted when the example that fills
it is read, and examples read before it may still wait in the other bucket.

After any number of batches the input therefore stands at
:class:`StreamPosition` ``(next, pending)``: ``next`` is the first stream
index not yet read (one past the example that completed the last batch) and
``pending`` the indices read but still waiting in a partly filled window
(fewer than a batch per bucket; always empty with one canvas, where
``next = steps * batch_size``). Restarting the stream at the smallest pending
index and letting through only the pending examples and those from ``next``
on refills every window with the same examples in the same order before
anything new is read, so every later batch is the uninterrupted run's. The
position is a few integers; it is saved in each checkpoint beside the train
state.

Each batch carries the stream indices of its examples (``stream_index``);
:meth:`StreamPosition.after` advances the position by one batch and refuses
a batch that repeats an example or holds one that was never read, which is
how a stream that did not restart exactly would show.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class StreamPosition:
  """``next``: first stream index not yet read; ``pending``: sorted indices
  read and not yet in a batch (a partly filled orientation window)."""

  next: int = 0
  pending: tuple[int, ...] = ()

  def __post_init__(self):
    if self.next < 0 or any(not 0 <= p < self.next for p in self.pending):
      raise ValueError(f"StreamPosition: pending indices must lie in [0, next), got {self}")
    object.__setattr__(self, "pending", tuple(sorted(int(p) for p in self.pending)))

  @property
  def first_to_read(self) -> int:
    """Where a restarted stream begins reading."""
    return self.pending[0] if self.pending else self.next

  def keeps(self, index: int) -> bool:
    """Whether a restarted stream lets stream index ``index`` through."""
    return index >= self.next or index in self.pending

  def after(self, stream_indices) -> StreamPosition:
    """The position once a batch of these stream indices (any shape;
    negative ones are padding and ignored) has been taken."""
    got = np.ravel(np.asarray(stream_indices, np.int64))
    got = got[got >= 0]
    if got.size == 0:
      return self
    if np.unique(got).size != got.size:
      raise ValueError(f"input stream: a batch repeats an example (stream indices "
                       f"{sorted(got.tolist())})")
    top = int(got.max())
    read = set(self.pending) | set(range(self.next, top + 1))
    unread = sorted(set(got.tolist()) - read)
    if top < self.next or unread:
      raise ValueError(
          f"input stream: batch with stream indices {sorted(got.tolist())} does not follow "
          f"position {self.to_json()} (examples {unread or 'none new'} were taken before or "
          "never read): the input did not restart where the checkpoint left it")
    return StreamPosition(top + 1, tuple(sorted(read - set(got.tolist()))))

  def to_json(self) -> dict[str, Any]:
    return {"next": int(self.next), "pending": [int(p) for p in self.pending]}

  @classmethod
  def from_json(cls, value: Mapping[str, Any]) -> StreamPosition:
    try:
      return cls(int(value["next"]), tuple(int(p) for p in value.get("pending", ())))
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"input position {value!r} is not of the form "
                       "{'next': int, 'pending': [int, ...]}") from e
