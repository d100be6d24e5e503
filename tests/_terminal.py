"""What a terminal shows of a program's captured output, line by line.

Progress bars (tqdm, which Lightning uses) redraw themselves with carriage returns and cursor-movement
escapes; when stdout is a pipe those bytes land in the captured text, so a line printed above a bar can be
preceded by ``\\r`` and ``ESC[A`` on the same captured "line". A terminal would show the text after the last
carriage return, with the escapes invisible: that is what the tests read.
"""

from __future__ import annotations

import re

_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def screen_lines(text: str) -> list[str]:
    """The lines of ``text`` as a terminal leaves them: after each line's last ``\\r``, escapes removed.

    >>> screen_lines("Epoch 0: 50%\\r\\x1b[Aepoch 1 | acc 0.9\\ndone")
    ['epoch 1 | acc 0.9', 'done']
    """
    return [_ESCAPE.sub("", line.rsplit("\r", 1)[-1]) for line in text.split("\n")]
