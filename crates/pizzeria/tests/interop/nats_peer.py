"""A peer that tabgrab did not write: nats-py and the Python CloudEvents SDK (`cloudevents`)
publish an OrderAccepted CloudEvent to the pizzeria's JetStream subject, then read the
OrderDelivered that the pizzeria published for it, and print that event's attributes and data
as one JSON line.

Usage: python nats_peer.py <nats-url> <order-id> <structured|binary> [<creds-file> <ca-file>]

With a creds file and a CA, the peer connects over TLS (trusting that CA) and authenticates
with the `.creds` file (a user JWT and its nkey seed), as a client of a secured NATS does.

The last argument is the content mode the peer publishes in (the SDK's `to_structured` or
`to_binary`); it reads the pizzeria's event in whichever mode it comes, through the SDK's
`from_http`, which tells the modes apart by the `content-type` header as the CloudEvents NATS
binding does.
"""

import asyncio
import json
import ssl
import sys
import uuid

import nats
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http


async def main(url: str, order_id: str, mode: str, creds: str = "", ca: str = "") -> None:
    if creds:
        context = ssl.create_default_context(cafile=ca)
        nc = await nats.connect(url, tls=context, user_credentials=creds)
    else:
        nc = await nats.connect(url)
    js = nc.jetstream()
    event_id = str(uuid.uuid4())
    event = CloudEvent(
        {
            "id": event_id,
            "source": "/python/nats-py",
            "type": "pizzeria.order.accepted.v1",
            "subject": order_id,
            "datacontenttype": "application/json",
        },
        {
            "order_id": order_id,
            "customer": "python peer",
            "pizzas": ["margherita"],
            "amount_cents": 900,
            "card": "**** 4242",
        },
    )
    if mode == "structured":
        headers, body = to_structured(event)
    elif mode == "binary":
        headers, body = to_binary(event)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    headers["Nats-Msg-Id"] = event_id
    ack = await js.publish(f"tabgrab.pizzeria.{order_id}", body, headers=headers)
    print(json.dumps({"published": event_id, "seq": ack.seq, "mode": mode}), flush=True)
    # An ordered (ephemeral) consumer on this order's subject: every event about the order.
    sub = await js.subscribe(f"tabgrab.pizzeria.{order_id}", ordered_consumer=True)
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise SystemExit("no pizzeria.order.delivered.v1 within 60 s")
        msg = await sub.next_msg(timeout=left)
        received = from_http(dict(msg.headers or {}), msg.data)
        if received["type"] == "pizzeria.order.delivered.v1":
            data = received.data
            if isinstance(data, (bytes, str)):
                data = json.loads(data)
            print(
                json.dumps(
                    {
                        "attributes": dict(received.get_attributes()),
                        "data": data,
                        "content_type": (msg.headers or {}).get("content-type"),
                    }
                ),
                flush=True,
            )
            break
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
