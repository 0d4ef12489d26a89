"""The life of a command: the entry point, pre-import checks, start-up, option parsing, process
set-up and exit codes. Imports nothing here: `pipeline/__init__.py` imports `cli.startup` before
anything else, and that must stay cheap."""
