"""For the crash test: each input message {"i": n} marks `done:n`, bumps the
`count` key by compare-and-set, and publishes one event with subject n."""
from sluice import kv, publish


def handle(events):
    for e in events:
        n = e.data["i"]
        kv.set(f"done:{n}", "1")
        current = kv.get("count")
        if not kv.compare_and_set("count", current, str(int(current or b"0") + 1)):
            raise RuntimeError("count changed concurrently; run again")
        publish("out", "counted", {"i": n}, subject=str(n))
