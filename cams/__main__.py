"""``python -m cams``: see :mod:`cams.cli` (``python -m cams --help``)."""

from cams.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
