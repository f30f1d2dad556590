"""Fulfilment: packs orders from the ``fulfilment`` queue.

Queue-based load leveling: orders arrive in bursts, the queue holds them durably, and
the trigger runs at most a few invocations at a time, whatever the burst. Each packed
order is recorded under its own key, ``packed:<order>`` (its items), so invocations
running side by side never write the same key, and an order delivered twice is
packed once.

Messages are either orders sent to the queue directly (``{"order", "items"}``) or
``order.placed`` events that the ``orders`` topic's subscription forwarded (the event
is the message body).
"""

from sluice import kv, log


def handle(events):
    for e in events:
        order = e.data
        if isinstance(order, dict) and "specversion" in order:
            order = order["data"]
        key = "packed:" + order["order"]
        if kv.exists(key):
            log(f"{order['order']} was packed already")
            continue
        kv.set(key, order["items"])
