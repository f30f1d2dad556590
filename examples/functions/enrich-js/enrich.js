// Order enrichment, in JavaScript: the same function as the Python example.
//
// Input events are orders {order_id, customer, items: [{sku, qty, price}]} or
// tier updates {customer, tier}. An order reads the customer's tier from the
// function's key-value state, is totalled with TAX_RATE, counts the
// customer's orders and publishes `order.enriched` to OUT_TOPIC. An order
// with no items fails on its own and is retried, then dead-lettered.
const decoder = new TextDecoder();

export function handle(events) {
  const out = config.get("OUT_TOPIC", "orders-enriched");
  const tax = Number(config.get("TAX_RATE", "0"));
  const failed = {};
  for (const e of events) {
    const data = e.data;
    if (data.tier !== undefined) {
      kv.set(`tier:${data.customer}`, data.tier);
      continue;
    }
    if (!data.items || data.items.length === 0) {
      failed[e.id] = `order ${data.order_id} has no items`;
      continue;
    }
    const subtotal = data.items.reduce((sum, i) => sum + i.qty * i.price, 0);
    const total = Math.round(subtotal * (1 + tax) * 100) / 100;
    const rawTier = kv.get(`tier:${data.customer}`);
    const tier = rawTier === undefined ? "standard" : decoder.decode(rawTier);
    const key = `orders:${data.customer}`;
    const current = kv.get(key);
    const count = Number(current === undefined ? "0" : decoder.decode(current)) + 1;
    if (!kv.compareAndSet(key, current, String(count))) {
      throw new Error(`${key} changed concurrently`);
    }
    publish(out, "order.enriched", {
      order_id: data.order_id,
      customer: data.customer,
      tier,
      total,
      order_number: count,
    }, { subject: data.order_id });
    log(`order ${data.order_id}: ${total} (${tier})`);
  }
  return failed;
}
