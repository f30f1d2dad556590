"""The data pipeline's last stage: each order's latest status, published on the
compacted ``order-status`` topic (keyed by order), which the live page follows and
which always holds every order's current state.

The events of one order come from different functions (the order service, each step
of the checkout saga), so they can arrive in another order than they happened: a
status only ever moves forward.
"""

from sluice import kv, publish

# Event type → (status, rank): a status replaces one of a lower rank only.
STATUS = {
    "order.placed": ("placed", 0),
    "order.reserved": ("stock reserved", 1),
    "order.charged": ("paid", 2),
    "order.shipped": ("shipped", 3),
    "order.released": ("cancelled", 4),
}


def handle(events):
    for e in events:
        if e.type not in STATUS:
            continue
        order = e.subject
        state = kv.get_json("order:" + order, {"order": order, "status": None, "rank": -1})
        if e.type == "order.placed":
            state.update(customer=e.data["customer"]["name"], total=e.data["total"],
                         summary=e.data.get("summary", ""))
        status, rank = STATUS[e.type]
        if rank > state["rank"]:
            state.update(status=status, rank=rank)
        kv.set("order:" + order, state)
        publish("order-status", "order.status", subject=order, data=state)
