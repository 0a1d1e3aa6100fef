"""``python -m lit_transfer`` runs the command line interface."""

from lit_transfer.cli import main

if __name__ == "__main__":
    main()
