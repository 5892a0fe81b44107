"""The no-op workload on Quix Streams: read each task, write one result.

Run by bench/peers/run; BROKERS, TASKS, RESULTS come from the environment.
At-least-once (Quix Streams' default guarantee): offsets are committed after the
results are produced.
"""

import os

from quixstreams import Application
from quixstreams.models.topics.admin import TopicAdmin
from quixstreams.models.topics.topic import TopicConfig


def inspect_topics(self, topic_names, timeout=30):
    # Quix Streams reads topic settings with DescribeConfigs, which waits for a
    # controller; the embedded broker names none. The topics exist (run creates
    # them with PARTITIONS partitions), so answer for the broker.
    partitions = int(os.environ.get("PARTITIONS", "4"))
    return {t: TopicConfig(num_partitions=partitions, replication_factor=1) for t in topic_names}


TopicAdmin.inspect_topics = inspect_topics

app = Application(
    broker_address=os.environ["BROKERS"],
    consumer_group=os.environ.get("GROUP", "quix-peer"),
    auto_offset_reset="earliest",
    # The embedded broker has no CreateTopics API; run pre-creates the topics.
    auto_create_topics=False,
    processing_guarantee="at-least-once",
)
tasks = app.topic(os.environ["TASKS"], value_deserializer="json")
results = app.topic(os.environ["RESULTS"], value_serializer="json")


def run(task):
    return {"task_id": task.get("id"), "kind": task.get("kind"), "status": "succeeded", "output": None}


app.dataframe(tasks).apply(run).to_topic(results)
app.run()
