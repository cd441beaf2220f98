"""Progress bars for interactive terminals only: a bar redrawn with carriage returns garbles a CI log (and
the stage lines printed after it), so where stderr is not a terminal the bars are off and the per-stage and
per-epoch lines are the progress."""

from __future__ import annotations

import sys

from tqdm import tqdm


def bar(iterable=None, *, enabled: bool = True, **kw) -> tqdm:
    return tqdm(iterable, disable=not (enabled and sys.stderr.isatty()), leave=False, **kw)
