"""The no-op workload on Sentry's Arroyo: read each task, write one result.

Run by bench/peers/run; BROKERS, TASKS, RESULTS come from the environment.
The strategy chain is RunTask -> Produce -> CommitOffsets, so an offset is
committed only after its result is delivered (at-least-once, like Sluice).
"""

import json
import os
import signal

from arroyo.backends.kafka import (
    KafkaConsumer,
    KafkaPayload,
    KafkaProducer,
    build_kafka_configuration,
    build_kafka_consumer_configuration,
)
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies import CommitOffsets, Produce, RunTask
from arroyo.processing.strategies.abstract import ProcessingStrategyFactory
from arroyo.types import Topic

BROKERS = os.environ["BROKERS"]
producer = KafkaProducer(build_kafka_configuration({"bootstrap.servers": BROKERS}))


def run(message):
    task = json.loads(message.payload.value)
    result = {"task_id": task.get("id"), "kind": task.get("kind"), "status": "succeeded", "output": None}
    return KafkaPayload(message.payload.key, json.dumps(result).encode(), [])


class Factory(ProcessingStrategyFactory):
    def create_with_partitions(self, commit, partitions):
        return RunTask(run, Produce(producer, Topic(os.environ["RESULTS"]), CommitOffsets(commit)))


consumer = KafkaConsumer(
    build_kafka_consumer_configuration(
        {"bootstrap.servers": BROKERS},
        auto_offset_reset="earliest",
        group_id=os.environ.get("GROUP", "arroyo-peer"),
    )
)
processor = StreamProcessor(consumer, Topic(os.environ["TASKS"]), Factory())
signal.signal(signal.SIGTERM, lambda *_: processor.signal_shutdown())
processor.run()
