"""``python -m pyrexisctl``: the same as the ``pyrexisctl`` console script."""

from pyrexisctl.cli import main

if __name__ == "__main__":
    main(prog_name="pyrexisctl")
