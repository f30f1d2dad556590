"""Fulfilment: packs orders from the ``fulfilment`` queue.

Queue-based load leveling: orders arrive in bursts, the queue holds them durably, and
the trigger runs at most a few invocations at a time, whatever the burst. The state
counts what was packed: ``packed`` (orders) and ``packed:<sku>`` (units).

Messages are either orders sent to the queue directly (``{"order", "items"}``) or
``order.placed`` events that the ``orders`` topic's subscription forwarded (the event
is the message body).
"""

from sluice import kv


def handle(events):
    packed = kv.get_json("packed", 0)
    units = {}
    for e in events:
        order = e.data
        if isinstance(order, dict) and "specversion" in order:
            order = order["data"]
        for item in order["items"]:
            units[item["sku"]] = units.get(item["sku"], 0) + item["qty"]
        packed += 1
    kv.set("packed", packed)
    for sku, qty in units.items():
        kv.set("packed:" + sku, kv.get_json("packed:" + sku, 0) + qty)
