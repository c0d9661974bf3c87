"""Progress bars of the command line (tqdm on stderr).

In a terminal a bar redraws in place; where stderr is a pipe or a log file every redraw would be a new line,
so there it updates at most every ``LOG_INTERVAL`` seconds (and at the end).
"""

from __future__ import annotations

import sys

LOG_INTERVAL = 30.0


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True, **options):
    """A tqdm bar on stderr: ``enabled = False`` draws nothing; off a terminal one line per ``LOG_INTERVAL`` s."""
    from tqdm import tqdm

    terminal = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.1 if terminal else LOG_INTERVAL, **options)
