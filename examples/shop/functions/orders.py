"""The order service.

Event-carried state transfer: customers are not looked up from a customer service.
The compacted ``customers`` topic carries each customer's whole state, and this
function keeps its own replica of it in its key-value state (``customer:<id>``),
fed by a subscription that starts at the beginning of the topic.

Orders come from the event store: a persistent subscription of the ``order``
category hands over each ``order.placed`` appended to a stream ``order-<id>``. The
service announces it on the ``orders`` topic with the customer's name and tier
attached (event notification). An order whose customer the replica does not know yet
fails alone and is retried, by which time the customer event has usually arrived.
"""

from sluice import kv, log, publish


def handle(events):
    failed = {}
    for e in events:
        if e.type == "customer.upserted":
            kv.set("customer:" + e.subject, e.data)
        elif e.type == "order.placed":
            order = e.extensions.get("stream", e.subject)
            customer_id = e.data["customer"]
            customer = kv.get_json("customer:" + customer_id)
            if customer is None:
                failed[e.id] = f"customer {customer_id} is not known (yet)"
                continue
            publish("orders", "order.placed", subject=order, data={
                "order": order,
                "customer": {"id": customer_id, "name": customer["name"],
                             "tier": customer.get("tier", "standard")},
                "items": e.data["items"],
                "total": e.data["total"],
            })
            log(f"{order} placed by {customer['name']}")
    return failed
