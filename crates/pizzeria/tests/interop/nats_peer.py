"""A peer that tabgrab did not write: nats-py publishes an OrderAccepted CloudEvent (binary
mode: ce-* headers) to the pizzeria's JetStream subject, then reads the OrderDelivered that
the pizzeria published for it, and prints that event's attributes and data as one JSON line.

Usage: python nats_peer.py <nats-url> <order-id>
"""

import asyncio
import json
import sys
import uuid

import nats


async def main(url: str, order_id: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    event_id = str(uuid.uuid4())
    data = {
        "order_id": order_id,
        "customer": "python peer",
        "pizzas": ["margherita"],
        "amount_cents": 900,
        "card": "**** 4242",
    }
    ack = await js.publish(
        f"tabgrab.pizzeria.{order_id}",
        json.dumps(data).encode(),
        headers={
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": "/python/nats-py",
            "ce-type": "pizzeria.order.accepted.v1",
            "ce-subject": order_id,
            "content-type": "application/json",
            "Nats-Msg-Id": event_id,
        },
    )
    print(json.dumps({"published": event_id, "seq": ack.seq}), flush=True)
    # An ordered (ephemeral) consumer on this order's subject: every event about the order.
    sub = await js.subscribe(f"tabgrab.pizzeria.{order_id}", ordered_consumer=True)
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise SystemExit("no pizzeria.order.delivered.v1 within 60 s")
        msg = await sub.next_msg(timeout=left)
        headers = msg.headers or {}
        if headers.get("ce-type") == "pizzeria.order.delivered.v1":
            print(
                json.dumps({"headers": headers, "data": json.loads(msg.data)}),
                flush=True,
            )
            break
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
