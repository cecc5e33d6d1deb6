"""The library's command-line tools (no Ray, Optuna or MLflow): ``python -m m2mdc COMMAND``.

    teacher    train or load the cached teacher            (also: python -m m2mdc.teacher)
    compress   run one plan end to end                     (also: python -m m2mdc.compress)
    allocate   spend a GMACs budget over blocks and widths (also: python -m m2mdc.allocate)
    demo       the offline digits demo                     (also: python -m m2mdc.demo)

The search and analysis tools are search/frontier.py and analysis/*.py.
"""
COMMANDS = ("teacher", "compress", "allocate", "demo")
