"""``python -m lit_transfer.export``: the same as ``python -m lit_transfer export``."""

from lit_transfer.export.command import main

if __name__ == "__main__":
    main()
