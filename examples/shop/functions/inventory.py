"""Inventory, the checkout saga's first step: reserves stock for an order and, as the
step's compensation, releases it. Input: ``{"op": "reserve"|"release", "order",
"items": [{"sku", "qty"}]}``.

A call whose idempotency key was seen before does nothing again (``once.py``). Stock is
kept per SKU, starting at 1,000. Each change of an order's
state is announced on the ``orders`` topic.
"""

from once import first_time
from sluice import kv, publish

STOCK = 1000


def handle(events):
    for e in events:
        if not first_time(e):
            continue
        d = e.data
        order = d["order"]
        if d["op"] == "reserve":
            taken = {}
            for item in d.get("items", []):
                stock = kv.get_json("stock:" + item["sku"], STOCK)
                if stock < item["qty"]:
                    raise RuntimeError(f"{item['sku']}: {stock} left, {item['qty']} wanted")
                kv.set("stock:" + item["sku"], stock - item["qty"])
                taken[item["sku"]] = taken.get(item["sku"], 0) + item["qty"]
            kv.set("reserved:" + order, taken)
            publish("orders", "order.reserved", subject=order, data={"order": order})
        else:
            taken = kv.get_json("reserved:" + order, {})
            for sku, qty in taken.items():
                kv.set("stock:" + sku, kv.get_json("stock:" + sku, STOCK) + qty)
            kv.delete("reserved:" + order)
            publish("orders", "order.released", subject=order, data={"order": order})
