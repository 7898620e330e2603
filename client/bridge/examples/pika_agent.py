"""A requester agent with nothing but pika and the protocol's JSON.

Asks for two CPU cores through `qm bridge amqp`, waits for the
allocation_response (on RabbitMQ's direct reply-to), sees its grant on
resource_events, then releases. Run with the broker's URL:

    python3 pika_agent.py amqp://guest:guest@127.0.0.1:5672/%2f
"""
import json
import sys
import uuid

import pika

url = sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@127.0.0.1:5672/%2f"
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()

# Events: a queue of our own on the fanout exchange, bound before we ask.
channel.exchange_declare("resource_events", exchange_type="fanout", durable=True)
events = channel.queue_declare("", exclusive=True).method.queue
channel.queue_bind(events, "resource_events")

# Replies come to the direct reply-to pseudo-queue: no queue to declare.
replies = []
channel.basic_consume("amq.rabbitmq.reply-to", lambda ch, method, props, body: replies.append(json.loads(body)), auto_ack=True)


def call(routing_key, message):
    """Publishes one message to resource_management and waits for its reply."""
    replies.clear()
    channel.basic_publish(
        "resource_management",
        routing_key,
        json.dumps(message),
        pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", content_type="application/json"),
    )
    while not replies:
        connection.process_data_events(time_limit=1)
    return replies[0]


request = {
    "request_id": str(uuid.uuid4()),
    "requester_id": "agent_123",
    "resource_requirements": {"cpu_cores": 2},
    "priority": 1,
}
response = call("resource_request.default", request)
print("allocation_response", json.dumps(response), flush=True)

# The grant as every subscriber sees it (dedupe by message_id if you run several bridges).
for method, props, body in channel.consume(events, inactivity_timeout=30):
    if body is None:
        sys.exit("no event about the request within 30 s")
    event = json.loads(body)
    if event.get("request_id") == request["request_id"]:
        print("event", props.headers["x-qm-revision"], json.dumps(event), flush=True)
        break
channel.cancel()

released = call("resource_release.default", {"request_id": request["request_id"]})
print("released", json.dumps(released), flush=True)
connection.close()
