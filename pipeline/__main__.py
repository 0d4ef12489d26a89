"""`python -m pipeline [overrides]`: one experiment, or a sweep with `-m` (see cli/entry.py)."""

if __name__ == "__main__":
    import sys

    from pipeline.cli.entry import main

    main(sys.argv[1:])
