"""The settings of issue 8 read from the environment, and the statuses with
the details a client can act on."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from llamagate.domain.errors import Aborted, EngineFailed, NoModelLoaded, NotReady, Overloaded
from llamagate.server.errors import status_for, trailing_details
from llamagate.server.settings import Settings


def test_defaults_without_any_variable():
    slot = Settings.from_env({}).slot
    assert slot.queue_size == 8 and slot.cancel_within_s == 1.0 and slot.host_threads >= 1
    assert slot.restart.enabled and slot.restart.max_restarts == 5 and slot.restart.backoff_s == 0.5
    assert slot.watchdog.silent_after_s == 3.0 and slot.watchdog.interval_s <= 1.0


def test_each_variable_is_read():
    slot = Settings.from_env({
        "LLAMAGATE_QUEUE_SIZE": "0", "LLAMAGATE_RESTART": "never", "LLAMAGATE_RESTART_MAX": "2",
        "LLAMAGATE_RESTART_BACKOFF_MS": "40000", "LLAMAGATE_WATCHDOG_MS": "600", "LLAMAGATE_CANCEL_WITHIN_MS": "0",
    }).slot
    assert slot.queue_size == 0 and not slot.restart.enabled and slot.restart.max_restarts == 2
    assert slot.restart.backoff_s == 40.0 and slot.restart.max_backoff_s == 40.0  # the cap never undercuts it
    assert slot.watchdog.silent_after_s == 0.6 and slot.watchdog.interval_s == pytest.approx(0.2)
    assert slot.cancel_within_s == 0.0


@pytest.mark.parametrize(("name", "value"), [
    ("LLAMAGATE_QUEUE_SIZE", "-1"), ("LLAMAGATE_QUEUE_SIZE", "many"), ("LLAMAGATE_RESTART", "always"),
    ("LLAMAGATE_RESTART_MAX", "1001"), ("LLAMAGATE_WATCHDOG_MS", "5"), ("LLAMAGATE_CANCEL_WITHIN_MS", "1.5"),
])
def test_a_malformed_variable_is_refused_by_name(name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})


def rich(error) -> status_pb2.Status:
    [(key, value)] = trailing_details(error)
    assert key == "grpc-status-details-bin"
    return status_pb2.Status.FromString(value)


@pytest.mark.parametrize(("error", "code"), [
    (Overloaded("the queue is full", retry_after_s=2.5), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotReady("model m is being restarted", retry_after_s=1.0), grpc.StatusCode.UNAVAILABLE),
])
def test_a_retryable_error_carries_retry_info_with_its_code_and_message(error, code):
    status = rich(error)
    retry = error_details_pb2.RetryInfo()
    assert status_for(error) is code and status.code == getattr(code_pb2, code.name)
    assert status.message == str(error)
    assert status.details[0].Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == round(error.retry_after_s * 1000)


@pytest.mark.parametrize("error", [NoModelLoaded("no model"), EngineFailed("died"), Aborted("unloaded")])
def test_an_error_no_wait_can_fix_carries_no_details(error):
    assert trailing_details(error) == ()
