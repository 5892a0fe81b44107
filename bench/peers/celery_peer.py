"""The no-op workload on Celery with Redis as broker and result backend.

Run by bench/peers/run: `python celery_peer.py enqueue N` puts N tasks on the
queue; a `celery -A celery_peer worker` runs them, and each result is stored in
Redis (one key per task, which is how run counts them).
"""

import os
import sys

from celery import Celery

REDIS = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("celery_peer", broker=REDIS, backend=REDIS)
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=64, result_expires=3600)


@app.task(name="noop")
def noop(payload):
    return None


if __name__ == "__main__" and sys.argv[1:2] == ["enqueue"]:
    n = int(sys.argv[2])
    with app.producer_or_acquire() as p:
        for i in range(n):
            noop.apply_async(args=[i], producer=p)
