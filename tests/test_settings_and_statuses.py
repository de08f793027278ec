"""The settings of issue 8 read from the environment, and the statuses with
the details a client can act on."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from llamagate.domain import errors
from llamagate.domain.errors import (
    Aborted,
    ContextExceeded,
    EngineFailed,
    InvalidArgument,
    NoModelLoaded,
    NotReady,
    Overloaded,
)
from llamagate.server.errors import ERROR_DOMAIN, status_for, trailing_details
from llamagate.server.settings import Settings, ToolSettings


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
    ("LLAMAGATE_TOOLS", "python,rm"), ("LLAMAGATE_TOOLS", "web_search"), ("LLAMAGATE_FETCH_PRIVATE", "yes"),
])
def test_a_malformed_variable_is_refused_by_name(name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})


def test_code_tools_are_off_unless_named_and_a_searxng_url_enables_search():
    assert Settings.from_env({}).tools == ToolSettings(frozenset({"fetch_url"}), "", False)
    searching = Settings.from_env({"LLAMAGATE_SEARXNG_URL": "http://search:8080"}).tools
    assert searching.enabled == {"fetch_url", "web_search"} and searching.searxng_url == "http://search:8080"
    named = Settings.from_env({"LLAMAGATE_TOOLS": " python , terminal", "LLAMAGATE_FETCH_PRIVATE": "1"}).tools
    assert named.enabled == {"python", "terminal"} and named.allow_private_fetch
    assert Settings.from_env({"LLAMAGATE_TOOLS": ""}).tools.enabled == frozenset()


def rich(error) -> status_pb2.Status:
    [(key, value)] = trailing_details(error)
    assert key == "grpc-status-details-bin"
    return status_pb2.Status.FromString(value)


def details_of(status: status_pb2.Status) -> dict[str, object]:
    """Each detail unpacked, by its type's name."""
    found: dict[str, object] = {}
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.DESCRIPTOR.name] = message
    assert len(found) == len(status.details)  # nothing of another type, no type twice
    return found


@pytest.mark.parametrize(("error", "code"), [
    (Overloaded("the queue is full", retry_after_s=2.5), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotReady("model m is being restarted", retry_after_s=1.0), grpc.StatusCode.UNAVAILABLE),
])
def test_a_retryable_error_carries_retry_info_with_its_code_and_message(error, code):
    status = rich(error)
    assert status_for(error) is code and status.code == getattr(code_pb2, code.name)
    assert status.message == str(error)
    retry = details_of(status)["RetryInfo"]
    assert retry.retry_delay.ToMilliseconds() == round(error.retry_after_s * 1000)


@pytest.mark.parametrize("error", [NoModelLoaded("no model"), EngineFailed("died"), Aborted("unloaded")])
def test_an_error_no_wait_can_fix_carries_only_its_reason(error):
    details = details_of(rich(error))
    assert details.keys() == {"ErrorInfo"}
    assert (details["ErrorInfo"].reason, details["ErrorInfo"].domain) == (error.reason, ERROR_DOMAIN)


def test_a_bad_field_is_a_bad_request_field_violation_beside_the_reason():
    error = InvalidArgument("must be between 0.0 and 1.0, got 1.5", field="sampling.top_p")
    status = rich(error)
    details = details_of(status)
    assert status.code == code_pb2.INVALID_ARGUMENT and status.message == str(error)
    [violation] = details["BadRequest"].field_violations
    assert (violation.field, violation.description) == ("sampling.top_p", "must be between 0.0 and 1.0, got 1.5")
    assert details["ErrorInfo"].reason == "INVALID_ARGUMENT"
    # Without a field there is nothing to point at: no BadRequest.
    assert details_of(rich(InvalidArgument("something is wrong"))).keys() == {"ErrorInfo"}


def test_context_exceeded_carries_its_numbers_as_error_info_metadata():
    info = details_of(rich(ContextExceeded("too long", prompt_tokens=431, context_length=256)))["ErrorInfo"]
    assert (info.reason, dict(info.metadata)) == ("CONTEXT_EXCEEDED", {"prompt_tokens": "431", "context_length": "256"})
    unknown = details_of(rich(ContextExceeded("too long")))["ErrorInfo"]
    assert dict(unknown.metadata) == {}  # numbers llama-server did not send are left out, not zero


def test_a_negative_wait_is_sent_as_no_wait():
    retry = details_of(rich(Overloaded("full", retry_after_s=-1.0)))["RetryInfo"]
    assert retry.retry_delay.ToMilliseconds() == 0


def _error_classes(cls: type[errors.LlamagateError] = errors.LlamagateError) -> list[type[errors.LlamagateError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _error_classes(sub))]


def test_every_reason_sent_is_one_the_proto_documents():
    proto = (Path(__file__).parents[1] / "proto/llamagate/v1/llamagate.proto").read_text()
    documented = set(re.findall(r"[A-Z][A-Z_]+", proto.split("with a stable `reason`:")[1].split(";")[0]))
    internal_only = {errors.TemplateError}  # caught inside capability detection, never sent
    sent = {c.reason for c in _error_classes() if c not in internal_only}
    assert sent <= documented, sent - documented
