"""A peer that tabgrab did not write: a plain AMQP client (pika 1.3.2) on either end of
tabgrab's request-reply over RabbitMQ, speaking only the AMQP RPC convention (the
`correlation_id` and `reply_to` basic properties, replies through the default exchange) and
sending no CloudEvents headers.

Usage:
  python amqp_peer.py request <amqp-url> <topic> <type> <request-json> <expected-reply-json>
      Sends the request three ways to tabgrab's exchange `tabgrab.<topic>`: with `reply_to`
      an exclusive queue of its own, with `reply_to` RabbitMQ's direct reply-to
      (`amq.rabbitmq.reply-to`), and with no `reply_to` at all (bad input: tabgrab must
      dead-letter it). Checks that each of the first two gets exactly the expected reply
      body with its own correlation id; prints one JSON line per reply.
  python amqp_peer.py respond <amqp-url> <topic> <reply-json>
      Binds a queue of its own to tabgrab's exchange `tabgrab.<topic>`, prints
      {"ready": ...}, and answers the first request it gets: first a stray reply with a
      correlation id nobody sent (tabgrab must refuse and dead-letter it), then the answer
      `<reply-json>` with the request's correlation id, both to the request's `reply_to`
      queue through the default exchange. Prints what the request carried (its data: the
      body, or the `data` of a CloudEvents structured-mode body).

Every wait is bounded (30 s); the process exits non-zero on any mismatch or timeout.
"""

import json
import sys
import time
import uuid

import pika

WAIT_S = 30


def out(**fields):
    print(json.dumps(fields), flush=True)


def connect(url):
    params = pika.URLParameters(url)
    params.socket_timeout = 10
    params.blocked_connection_timeout = 10
    return pika.BlockingConnection(params)


def request(url, topic, ty, request_json, expected_json):
    expected = json.loads(expected_json)
    connection = connect(url)
    channel = connection.channel()
    exchange = f"tabgrab.{topic}"
    own = channel.queue_declare(queue="", exclusive=True).method.queue
    for reply_to in (own, "amq.rabbitmq.reply-to"):
        correlation_id = str(uuid.uuid4())
        got = {}

        def on_message(_ch, _method, properties, body, got=got):
            got.setdefault("reply", (properties, body))

        # Direct reply-to needs its consumer before the publish.
        tag = channel.basic_consume(queue=reply_to, on_message_callback=on_message, auto_ack=True)
        channel.basic_publish(
            exchange=exchange,
            routing_key="_",
            body=request_json.encode(),
            properties=pika.BasicProperties(
                type=ty,
                correlation_id=correlation_id,
                reply_to=reply_to,
                content_type="application/json",
            ),
        )
        deadline = time.monotonic() + WAIT_S
        while "reply" not in got:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"no reply on {reply_to} within {WAIT_S} s")
            connection.process_data_events(time_limit=min(left, 1.0))
        channel.basic_cancel(tag)
        properties, body = got["reply"]
        reply = json.loads(body)
        if properties.correlation_id != correlation_id:
            raise SystemExit(
                f"reply on {reply_to}: correlation id {properties.correlation_id!r}, "
                f"sent {correlation_id!r}"
            )
        if reply != expected:
            raise SystemExit(f"reply on {reply_to}: body {reply!r}, expected {expected!r}")
        out(
            reply_to="direct" if reply_to.startswith("amq.rabbitmq") else "exclusive",
            correlation_id=properties.correlation_id,
            body=reply,
        )
    # Bad input: a request nobody can answer (no reply_to).
    bad_id = str(uuid.uuid4())
    channel.basic_publish(
        exchange=exchange,
        routing_key="_",
        body=request_json.encode(),
        properties=pika.BasicProperties(
            type=ty, correlation_id=bad_id, content_type="application/json"
        ),
    )
    out(sent_without_reply_to=bad_id)
    connection.close()


def respond(url, topic, reply_json):
    connection = connect(url)
    channel = connection.channel()
    exchange = f"tabgrab.{topic}"
    # The same declaration tabgrab makes (durable topic exchange), so either may come first.
    channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
    queue = channel.queue_declare(queue="", exclusive=True).method.queue
    channel.queue_bind(queue=queue, exchange=exchange, routing_key="#")
    out(ready=queue)
    deadline = time.monotonic() + WAIT_S
    while True:
        method, properties, body = channel.basic_get(queue=queue, auto_ack=True)
        if method is not None:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"no request within {WAIT_S} s")
        connection.process_data_events(time_limit=0.05)
    request = json.loads(body)
    if (properties.content_type or "").startswith("application/cloudevents"):
        # CloudEvents structured mode (tabgrab's default): the event's data is the request.
        request = request["data"]
    out(
        type=properties.type,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        content_type=properties.content_type,
        request=request,
    )
    if not properties.reply_to or not properties.correlation_id:
        raise SystemExit("the request lacks reply_to or correlation_id")
    forged = str(uuid.uuid4())
    for correlation_id, answer in ((forged, reply_json), (properties.correlation_id, reply_json)):
        channel.basic_publish(
            exchange="",
            routing_key=properties.reply_to,
            body=answer.encode(),
            properties=pika.BasicProperties(
                correlation_id=correlation_id, content_type="application/json", delivery_mode=2
            ),
        )
    out(forged=forged, answered=properties.correlation_id)
    connection.close()


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "request":
        request(*args)
    elif mode == "respond":
        respond(*args)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
