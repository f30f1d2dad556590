"""The smallest Python function: succeeds without doing anything (for benchmarks)."""


def handle(events):
    pass
