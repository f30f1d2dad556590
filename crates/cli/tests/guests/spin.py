"""Never returns: for the timeout test."""


def handle(events):
    while True:
        pass
