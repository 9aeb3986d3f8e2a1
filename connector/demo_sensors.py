"""The demo's road sensors: an MQTT broker (embedded, pure Python) and a publisher of readings.

``python -m connector.demo_sensors --port 8005`` starts an amqtt broker on
127.0.0.1:8005 and publishes one traffic reading a second to
``tessera/demo/traffic-sensors``; with ``--broker HOST:PORT`` it publishes to
that broker instead (Mosquitto, say) and starts none. The demo runs this as
one of its child processes, so a laptop with nothing but Python has live
data: transit's ``traffic-sensors`` asset is an ``Mqtt`` data address on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import signal
from datetime import UTC, datetime

import aiomqtt

TOPIC = "tessera/demo/traffic-sensors"
SENSORS = ("A1-north", "A1-south", "Ring-east")
PUBLISH_INTERVAL_SECONDS = 1.0


def reading(sequence: int, rng: random.Random) -> dict[str, object]:
    """One observation, shaped like a SensorThings Observation (what the dataset's description promises)."""
    return {
        "@iot.id": sequence,
        "datastream": SENSORS[sequence % len(SENSORS)],
        "phenomenonTime": datetime.now(UTC).isoformat(timespec="seconds"),
        "result": rng.randint(50, 900),
        "unitOfMeasurement": "vehicles/hour",
    }


async def publish_forever(host: str, port: int, topic: str) -> None:
    """Publish a reading every second; reconnect if the broker goes away."""
    rng = random.Random()  # noqa: S311 - demo data, not security
    sequence = 0
    while True:
        try:
            async with aiomqtt.Client(
                host, port, identifier=f"tessera-demo-sensors-{rng.randrange(10**6)}"
            ) as client:
                while True:
                    sequence += 1
                    await client.publish(topic, json.dumps(reading(sequence, rng)), qos=0)
                    await asyncio.sleep(PUBLISH_INTERVAL_SECONDS)
        except aiomqtt.MqttError as exc:
            logging.getLogger("tessera.demo.sensors").warning("broker unreachable (%s); retrying", exc)
            await asyncio.sleep(1.0)


async def run(host: str, port: int, topic: str, embedded: bool) -> None:
    broker = None
    if embedded:
        from amqtt.broker import Broker

        broker = Broker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
            }
        )
        await broker.start()
        print(f"embedded MQTT broker listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    publisher = asyncio.create_task(publish_forever(host, port, topic))
    print(f"publishing a traffic reading every second to {topic}", flush=True)
    await stop.wait()
    publisher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await publisher
    if broker is not None:
        await broker.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=1883, help="port of the embedded broker")
    parser.add_argument("--broker", help="HOST:PORT of a broker to publish to (then none is embedded)")
    parser.add_argument("--topic", default=TOPIC)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.broker:
        host, _, port = args.broker.removeprefix("mqtt://").partition(":")
        asyncio.run(run(host, int(port or 1883), args.topic, embedded=False))
    else:
        asyncio.run(run("127.0.0.1", args.port, args.topic, embedded=True))


if __name__ == "__main__":
    main()
