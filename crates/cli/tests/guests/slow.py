"""A slow function for load-leveling tests: sleeps 10 ms per batch, then
publishes one event per input message to the topic `leveled`."""
import time

from sluice import publish


def handle(events):
    time.sleep(0.01)
    for e in events:
        publish("leveled", "leveled", {"i": e.data["i"]}, subject=str(e.data["i"]))
