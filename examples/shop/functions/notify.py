"""Notifications for gold-tier customers' orders.

The subscription's filter does the choosing (``data.customer.tier`` is ``gold``), so
this function sees only those orders and publishes a notification for each.
"""

from sluice import publish


def handle(events):
    for e in events:
        d = e.data
        publish("notifications", "notification.vip", subject=d["order"], data={
            "order": d["order"],
            "customer": d["customer"]["name"],
            "message": f"Thank you, {d['customer']['name']}: your order of "
                       f"{d['total']:.2f} is on its way to the front of the line.",
        })
