"""Progress bars (tqdm, on stderr) for the steps that take more than a few seconds.

They are drawn only where stderr is a terminal (tqdm's ``disable=None``): logs and tests see the jobs'
own lines, not the bars.
"""
from __future__ import annotations

from tqdm import tqdm


def bar(total: int | None, desc: str, unit: str = "img", enabled: bool = True) -> tqdm:
    """A bar of ``total`` ``unit``s (its rate, e.g. images/s, beside it); a no-op unless stderr is a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=1.0, leave=False,
                disable=None if enabled else True)


def images(batches, desc: str, total: int | None = None, enabled: bool = True):
    """Yield each ``(inputs, labels)`` batch of ``batches``, counting its images on a bar of ``total`` images."""
    with bar(total, desc, enabled=enabled) as b:
        for batch in batches:
            yield batch
            b.update(len(batch[1]))

