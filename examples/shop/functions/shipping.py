"""Shipping, the checkout saga's last step: ships an order. Input: ``{"order"}``."""

from sluice import kv, publish


def handle(events):
    for e in events:
        key = "k:" + e.extensions["idempotencykey"]
        if kv.exists(key):
            continue
        kv.set(key, "1")
        order = e.data["order"]
        kv.set("shipped:" + order, "1")
        publish("orders", "order.shipped", subject=order, data={"order": order})
