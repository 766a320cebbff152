"""The queues a learner's own code names are renamed into the grade's namespace, on every broker.

RabbitMQ has no key prefix: before this, two gradings of a lab with its own queues (`images`, ...) on one
RabbitMQ shared those queues, and one grade's workers ran the other's tasks. Checked here on the routing
lab's reference solution: publishing through the learner's app in two namespaces at once, each message
lands in its own namespace's queue; the learner's names (routes, `queue=`, `-Q`) still work; cleanup
removes the queues. The slow test runs two real gradings at once on one broker.
"""

from __future__ import annotations

import shutil
import time

import pytest
from celery.exceptions import QueueNotFound

from celerylab.engine import runtime
from celerylab.engine.brokers import BrokerUnavailable, open_broker
from celerylab.engine.namespaces import DEFAULT_QUEUE, Namespace
from tests.kit.conftest import ROOT, grade_side_by_side

SOLUTION = ROOT / "solutions" / "routing"


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request):
    try:
        with open_broker(request.param) as found:
            yield found
    except BrokerUnavailable as exc:
        pytest.skip(f"{request.param}: {exc}")


def wait_depth(ns: Namespace, queue: str, n: int, timeout: float = 5.0) -> int:
    """The queue's depth once it reaches ``n`` (a publish is visible at once on Redis, within
    milliseconds on RabbitMQ), or what it was at the deadline."""
    deadline = time.monotonic() + timeout
    while (depth := ns.queue_depth(queue)) != n and time.monotonic() < deadline:
        time.sleep(0.05)
    return depth


def test_two_namespaces_on_one_broker_never_share_a_learner_queue(broker):
    a, b = Namespace(broker, "routing"), Namespace(broker, "routing")
    try:
        mod_a, app_a = runtime.load_tasks(SOLUTION, a.config(), on_queue=a.owns_queue)
        mod_b, app_b = runtime.load_tasks(SOLUTION, b.config(), on_queue=b.owns_queue)
        a.adopt(app_a)
        b.adopt(app_b)
        assert mod_a is not mod_b and app_a is not app_b
        real_a, real_b = app_a.amqp.queues["images"].name, app_b.amqp.queues["images"].name
        assert real_a == f"{a.name}.images" and real_b == f"{b.name}.images"
        assert app_a.amqp.queues[DEFAULT_QUEUE].name == a.queue  # the learner's default is the kit's
        mod_a.resize.delay("p1")  # task_routes: images.* -> images
        mod_a.resize_now("p2")  # apply_async(queue="urgent")
        assert wait_depth(a, real_a, 1) == 1
        assert wait_depth(a, app_a.amqp.queues["urgent"].name, 1) == 1
        assert b.queue_depth(real_b) == 0 and b.queue_depth(app_b.amqp.queues["urgent"].name) == 0
        with pytest.raises(QueueNotFound):  # the learner's own rule still holds under the renaming
            mod_b.resize.apply_async(args=["p3"], queue="imagez")
    finally:
        a.cleanup()
        b.cleanup()
    assert a.queue_depth(real_a) == 0  # deleted (on RabbitMQ a passive declare now fails: 0)


@pytest.mark.slow
@pytest.mark.parametrize("broker_name", ["redis", "rabbitmq"])
def test_two_gradings_of_routing_at_once_do_not_see_each_other(broker_name, tmp_path, home, no_orphans):
    """Same broker, same lab, same queue names, at the same time: each grade gets full marks."""
    for code, report, out in grade_side_by_side("routing", tmp_path, "--broker", broker_name):
        if "BrokerUnavailable" in out or "could not reach" in out:
            pytest.skip(f"{broker_name} is not available here")
        assert code == 0 and report["score"] == report["max_score"], out[-2000:]


def test_queue_objects_in_routes_and_calls_are_renamed_too(broker, tmp_path):
    """``{"queue": Queue("images")}`` in task_routes, ``apply_async(queue=Queue("urgent"))``: Celery sends to
    such an object as it is, so the kit's router renames it like a name."""
    shutil.copyfile(SOLUTION / "variants" / "queue-objects.py", tmp_path / "tasks.py")
    ns = Namespace(broker, "routing")
    try:
        mod, app = runtime.load_tasks(tmp_path, ns.config(), on_queue=ns.owns_queue)
        ns.adopt(app)
        routed = app.amqp.router.route({}, "images.resize")["queue"]
        assert routed.name == f"{ns.name}.images"
        called = app.amqp.router.route({"queue": mod.URGENT}, "images.resize")["queue"]
        assert called.name == f"{ns.name}.urgent"
        assert mod.IMAGES.name == "images"  # the learner's own object is left as it was
    finally:
        ns.cleanup()
