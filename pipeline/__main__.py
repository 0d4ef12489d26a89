"""`python -m pipeline [overrides]`: one experiment, or a sweep with `-m`.

Everything is imported inside the `try`, so that Ctrl-C at any moment of start-up (imports,
composition) is one line and exit 130, never a traceback.
"""

import sys

EXIT_INTERRUPTED = 130

if __name__ == "__main__":
    try:
        from pipeline.config import register_configs
        from pipeline.preflight import exit_if_invalid

        register_configs()  # the schema, for composing (and checking) the command line first
        exit_if_invalid(sys.argv[1:])  # a config mistake is one line, before anything starts
        from pipeline.cli import main

        main()
    except KeyboardInterrupt:  # before a job started: nothing was logged
        print("error: interrupted during start-up; nothing ran", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
