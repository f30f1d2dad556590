"""Shipping, the checkout saga's last step: ships an order. Input: ``{"order"}``."""

from once import first_time
from sluice import kv, publish


def handle(events):
    for e in events:
        if not first_time(e):
            continue
        order = e.data["order"]
        kv.set("shipped:" + order, "1")
        publish("orders", "order.shipped", subject=order, data={"order": order})
