"""The wire boundary: golden payloads, round trips, tolerance, strictness, ProtocolError paths."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fal_edit_async import (
    CancelOutcome,
    Completed,
    EditImageInput,
    EditImageOutput,
    ImageFile,
    ImageSize,
    InProgress,
    InputError,
    JobStatus,
    LogEntry,
    OutputFormat,
    ProtocolError,
    Quality,
    Queued,
    SubmitReceipt,
    UnknownStatus,
)
from fal_edit_async._converter import (
    converter,
    input_from_dict,
    input_to_wire,
    make_converter,
    parse,
    parse_status,
    to_wire,
)

DATA = Path(__file__).parent / "data"
RID = "764cabcf-b745-4b3e-ae38-1200304cf45b"
APP = "https://queue.fal.run/fal-ai/gpt-image-1/requests/" + RID
LOGGED_AT = datetime(2026, 2, 17, 10, 30, 1, 123000, tzinfo=UTC)

strict = make_converter(strict=True)


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


# --- golden payloads -----------------------------------------------------------------------------

GOLDEN = [
    pytest.param(
        "submit_response.json",
        SubmitReceipt,
        SubmitReceipt(
            request_id=RID,
            response_url=APP,
            status_url=APP + "/status",
            cancel_url=APP + "/cancel",
            queue_position=0,
            status="IN_QUEUE",
        ),
        id="submit",
    ),
    pytest.param(
        "status_in_queue.json", JobStatus, Queued(position=2, request_id=RID), id="in-queue"
    ),
    pytest.param(
        "status_in_progress.json",
        JobStatus,
        InProgress(
            request_id=RID,
            logs=(
                LogEntry(
                    message="Editing image 1 of 1", level="INFO", source="USER", timestamp=LOGGED_AT
                ),
            ),
        ),
        id="in-progress",
    ),
    pytest.param(
        "status_in_progress_no_logs.json",
        JobStatus,
        InProgress(request_id=RID),
        id="in-progress-logs-null",
    ),
    pytest.param(
        "status_completed.json",
        JobStatus,
        Completed(request_id=RID, metrics={"inference_time": 3.42}),
        id="completed",
    ),
    pytest.param(
        "status_completed_error.json",
        JobStatus,
        Completed(request_id=RID, error="Runner disconnected", error_type="runner_disconnected"),
        id="completed-with-error",
    ),
    pytest.param(
        "result.json",
        EditImageOutput,
        EditImageOutput(
            images=(
                ImageFile(
                    url="https://v3.fal.media/files/rabbit/8Xk2pQ7mZ1vT4bN6cR0wY_edited.png",
                    content_type="image/png",
                    file_name="8Xk2pQ7mZ1vT4bN6cR0wY_edited.png",
                    file_size=123456,
                    width=1024,
                    height=1024,
                ),
            )
        ),
        id="result",
    ),
    pytest.param(
        "result_sync_mode.json",
        EditImageOutput,
        EditImageOutput(images=(ImageFile(url=load("result_sync_mode.json")["images"][0]["url"]),)),
        id="result-sync-mode",
    ),
]


def parse_as(payload: Any, cls: Any, conv: Any = None) -> Any:
    return parse_status(payload, conv=conv) if cls is JobStatus else parse(payload, cls, conv=conv)


@pytest.mark.parametrize(("name", "cls", "expected"), GOLDEN)
def test_golden_payload_parses(name: str, cls: Any, expected: Any) -> None:
    """Each documented payload parses into exactly the expected model."""
    assert expected == parse_as(load(name), cls)


@pytest.mark.parametrize(("name", "cls", "expected"), GOLDEN)
def test_golden_payload_survives_a_round_trip(name: str, cls: Any, expected: Any) -> None:
    """Parsing a golden payload, writing it back and parsing again gives the same model."""
    model = parse_as(load(name), cls)

    wire = converter.unstructure(model, unstructure_as=cls)

    assert model == parse_as(json.loads(json.dumps(wire)), cls)


@pytest.mark.parametrize(("name", "cls", "expected"), GOLDEN)
def test_strict_converter_accepts_golden_payloads(name: str, cls: Any, expected: Any) -> None:
    """The strict converter (used against our emulator) accepts every documented payload."""
    assert expected == parse_as(load(name), cls, strict)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("cancel_requested.json", CancelOutcome.REQUESTED, id="requested"),
        pytest.param("cancel_already_completed.json", CancelOutcome.ALREADY_COMPLETED, id="done"),
        pytest.param("cancel_not_found.json", CancelOutcome.NOT_FOUND, id="not-found"),
    ],
)
def test_cancel_bodies_map_to_outcomes(name: str, expected: CancelOutcome) -> None:
    """The ``status`` of each documented cancel body is a CancelOutcome."""
    assert expected == CancelOutcome(load(name)["status"])


# --- statuses ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["IN_PROGRESS", "COMPLETED"])
def test_logs_null_or_missing_means_no_logs(status: str) -> None:
    """``"logs": null`` (logs not requested) and a missing key both give an empty tuple."""
    with_null = parse_status({"status": status, "logs": None})
    without = parse_status({"status": status})

    assert () == with_null.logs == without.logs  # type: ignore[union-attr]


def test_unknown_status_is_kept_not_refused() -> None:
    """A status value this client does not know becomes UnknownStatus with the whole payload."""
    payload = {"status": "PAUSED", "request_id": RID, "why": "maintenance"}

    status = parse_status(payload)

    assert UnknownStatus(status="PAUSED", payload=payload) == status


def test_unknown_status_parses_with_the_strict_converter() -> None:
    """Strict mode still turns a new status into UnknownStatus rather than an error."""
    assert "PAUSED" == parse_status({"status": "PAUSED"}, conv=strict).status  # type: ignore[union-attr]


TOLERATED = [
    pytest.param({**load("submit_response.json"), "gateway_request_id": RID}, SubmitReceipt,
                 id="submit-gateway-request-id"),
    pytest.param({**load("status_in_queue.json"), "eta": 3}, JobStatus, id="in-queue"),
    pytest.param({**load("status_completed.json"), "new": {"x": 1}}, JobStatus, id="completed"),
    pytest.param({"status": "IN_PROGRESS", "logs": [{"message": "m", "trace_id": "t"}]},
                 JobStatus, id="log-entry"),
    pytest.param({"images": [{"url": "u", "seed": 42}], "timings": {}}, EditImageOutput,
                 id="result-and-image"),
]  # fmt: skip


@pytest.mark.parametrize(("payload", "cls"), TOLERATED)
def test_default_converter_ignores_unknown_fields(payload: Any, cls: Any) -> None:
    """New server fields never break the default (tolerant) converter."""
    parse_as(payload, cls)


REJECTED = [
    pytest.param({**load("submit_response.json"), "extra": 1}, SubmitReceipt, "$", id="submit"),
    pytest.param({"images": [{"url": "u", "seed": 42}]}, EditImageOutput, "$.images[0]",
                 id="image"),
    pytest.param({"images": [], "timings": {}}, EditImageOutput, "$", id="result"),
    pytest.param({"message": "m", "trace_id": "t"}, LogEntry, "$", id="log-entry"),
    pytest.param({"status": "IN_PROGRESS", "logs": [{"message": "m", "trace_id": "t"}]},
                 JobStatus, "$.logs[0]", id="log-entry-in-status"),
    pytest.param({"status": "IN_QUEUE", "queue_position": 1, "eta": 3}, JobStatus, "$",
                 id="in-queue"),
]  # fmt: skip


@pytest.mark.parametrize(("payload", "cls", "path"), REJECTED)
def test_strict_converter_rejects_unknown_fields(payload: Any, cls: Any, path: str) -> None:
    """With strict=True an unknown key is a ProtocolError naming where it was found."""
    with pytest.raises(ProtocolError, match="extra fields found") as caught:
        parse_as(payload, cls, strict)

    assert f"@ {path}" in str(caught.value)


# --- malformed payloads --------------------------------------------------------------------------

MALFORMED = [
    pytest.param({"request_id": RID}, JobStatus, "$.status", id="no-status"),
    pytest.param({"status": 3}, JobStatus, "$.status", id="status-not-a-string"),
    pytest.param(["IN_QUEUE"], JobStatus, "$.status", id="status-payload-not-an-object"),
    pytest.param(None, JobStatus, "$.status", id="status-payload-null"),
    pytest.param({}, EditImageOutput, "$.images", id="no-images"),
    pytest.param({"images": "x"}, EditImageOutput, "$.images", id="images-not-a-list"),
    pytest.param({"images": [{}]}, EditImageOutput, "$.images[0].url", id="image-without-url"),
    pytest.param({"images": [{"url": "u"}, {"url": "v", "width": "big"}]}, EditImageOutput,
                 "$.images[1].width", id="width-not-a-number"),
    pytest.param({k: v for k, v in load("submit_response.json").items() if k != "status_url"},
                 SubmitReceipt, "$.status_url", id="submit-without-status-url"),
]  # fmt: skip


@pytest.mark.parametrize(("payload", "cls", "path"), MALFORMED)
def test_malformed_payload_raises_protocol_error_with_path(
    payload: Any, cls: Any, path: str
) -> None:
    """A payload that does not fit the model raises ProtocolError whose text names the path."""
    with pytest.raises(ProtocolError) as caught:
        parse_as(payload, cls)

    assert path in str(caught.value)
    assert any(path in d for d in caught.value.details)
    assert payload == caught.value.payload


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"status": "COMPLETED", "request_id": 5}, id="request-id-int"),
    ],
)
def test_wrong_typed_scalars_are_refused(payload: Any) -> None:
    """A scalar of the wrong JSON type is a ProtocolError, not silently coerced."""
    with pytest.raises(ProtocolError):
        parse_status(payload)


@pytest.mark.parametrize(
    ("error", "text"),
    [
        pytest.param(5, "5", id="int"),
        pytest.param({"message": "crashed"}, '{"message": "crashed"}', id="object"),
        pytest.param(["a"], '["a"]', id="list"),
    ],
)
def test_a_completed_error_of_any_shape_is_read_as_text(error: Any, text: str) -> None:
    """``error`` only informs (the result has the verdict): any shape reads as a failure."""
    status = parse_status({"status": "COMPLETED", "error": error, "error_type": {"x": 1}})
    assert isinstance(status, Completed)
    assert (text, '{"x": 1}') == (status.error, status.error_type)
    assert status.failed


# --- round trips ---------------------------------------------------------------------------------

MODELS = [
    pytest.param(ImageFile(url="https://v3.fal.media/files/a.png"), id="ImageFile-minimal"),
    pytest.param(ImageFile(url="u", content_type="image/webp", file_name="a.webp", file_size=1,
                           width=2, height=3), id="ImageFile-full"),
    pytest.param(EditImageOutput(images=(ImageFile(url="a"), ImageFile(url="b"))),
                 id="EditImageOutput"),
    pytest.param(SubmitReceipt(request_id=RID, response_url=APP, status_url=APP + "/status",
                               cancel_url=APP + "/cancel"), id="SubmitReceipt"),
    pytest.param(LogEntry(message="m"), id="LogEntry-minimal"),
    pytest.param(LogEntry(message="m", level="WARN", source="USER", timestamp=LOGGED_AT),
                 id="LogEntry-full"),
    pytest.param(Queued(position=3, request_id=RID), id="Queued"),
    pytest.param(InProgress(logs=(LogEntry(message="m", timestamp=LOGGED_AT),)), id="InProgress"),
    pytest.param(Completed(metrics={"inference_time": 1.5}, request_id=RID), id="Completed"),
    pytest.param(Completed(error="boom", error_type="runner_disconnected"), id="Completed-failed"),
]  # fmt: skip

STATUSES = [p for p in MODELS if isinstance(p.values[0], Queued | InProgress | Completed)]


@pytest.mark.parametrize("model", MODELS)
def test_model_round_trips_through_the_wire(model: Any) -> None:
    """to_wire gives JSON-ready data that parses back into an equal model."""
    wire = json.loads(json.dumps(to_wire(model)))

    assert model == parse(wire, type(model))


@pytest.mark.parametrize("status", STATUSES)
def test_status_round_trips_through_the_tagged_union(status: JobStatus) -> None:
    """A status unstructured as JobStatus carries its tag and parses back to itself."""
    wire = converter.unstructure(status, unstructure_as=JobStatus)

    assert status == parse_status(wire)


@pytest.mark.parametrize("status", STATUSES)
def test_to_wire_status_is_a_status_payload(status: JobStatus) -> None:
    """to_wire on a status produces a payload that parse_status reads back."""
    assert status == parse_status(to_wire(status))


def test_unknown_status_round_trips() -> None:
    """An UnknownStatus written back to the wire parses into an equal UnknownStatus."""
    status = UnknownStatus(status="PAUSED", payload={"status": "PAUSED", "why": "x"})

    assert status == parse_status(converter.unstructure(status, unstructure_as=JobStatus))


def test_wire_names_and_timestamps() -> None:
    """Queued.position goes out as queue_position and UTC datetimes as ISO 8601 with a Z."""
    assert {"status": "IN_QUEUE", "queue_position": 3, "request_id": None} == to_wire(
        Queued(position=3)
    )
    assert (
        "2026-02-17T10:30:01.123000Z"
        == to_wire(LogEntry(message="m", timestamp=LOGGED_AT))["timestamp"]
    )


def test_make_converter_builds_independent_converters() -> None:
    """Each make_converter call returns a fresh converter, never the shared default."""
    assert make_converter() is not make_converter()
    assert make_converter() is not converter


# --- edit input ----------------------------------------------------------------------------------

URL = "https://example.com/cat.png"


def test_input_to_wire_is_the_documented_body() -> None:
    """input_to_wire gives every field under its wire name, enums as plain strings."""
    inp = EditImageInput(
        prompt="p", image_urls=(URL,), quality=Quality.LOW, image_size="1536x1024", num_images=2
    )

    wire = input_to_wire(inp)

    assert {
        "prompt": "p",
        "image_urls": [URL],
        "image_size": "1536x1024",
        "background": "auto",
        "quality": "low",
        "input_fidelity": "high",
        "num_images": 2,
        "output_format": "png",
        "sync_mode": False,
    } == wire
    assert all(type(v) is str for k, v in wire.items() if k not in ("image_urls", "num_images",
                                                                      "sync_mode"))  # fmt: skip
    assert wire == json.loads(json.dumps(wire))


@pytest.mark.parametrize(
    ("image_urls", "at"),
    [
        pytest.param([Path("cat.png")], "image_urls[0]", id="path"),
        pytest.param([URL, b"\x89PNG"], "image_urls[1]", id="bytes"),
    ],
)
def test_input_to_wire_refuses_local_images(image_urls: list[Any], at: str) -> None:
    """Local files and bytes must be uploaded before an input can be sent."""
    with pytest.raises(InputError) as caught:
        input_to_wire(EditImageInput(prompt="p", image_urls=image_urls))

    assert at == caught.value.field
    assert "upload local files before submit" in str(caught.value)


@pytest.mark.parametrize(
    "inp",
    [
        pytest.param(EditImageInput(prompt="p", image_urls=[URL]), id="defaults"),
        pytest.param(
            EditImageInput(
                prompt="Make it pixel art",
                image_urls=[URL, "data:image/png;base64,AAAA"],
                image_size=ImageSize.PORTRAIT,
                background="transparent",
                quality="high",
                input_fidelity="low",
                num_images=4,
                output_format=OutputFormat.WEBP,
                sync_mode=True,
            ),
            id="every-field-set",
        ),
    ],
)
def test_input_round_trips_through_the_wire(inp: EditImageInput) -> None:
    """input_from_dict(input_to_wire(x)) == x, through JSON."""
    assert inp == input_from_dict(json.loads(json.dumps(input_to_wire(inp))))


@pytest.mark.parametrize(
    ("data", "field", "allowed"),
    [
        pytest.param({"prompt": "p", "image_urls": [URL], "qualty": "low"}, "qualty",
                     "no such field; known: background, image_size, image_urls, input_fidelity, "
                     "num_images, output_format, prompt, quality, sync_mode", id="misspelt-key"),
        pytest.param({"image_urls": [URL]}, "prompt", "a value (the field is required)",
                     id="no-prompt"),
        pytest.param({"prompt": "p"}, "image_urls", "a value (the field is required)",
                     id="no-image-urls"),
        pytest.param(["prompt", "p"], "input", "a JSON object", id="not-an-object"),
        pytest.param({"prompt": "p", "image_urls": [URL], "num_images": "2"}, "num_images",
                     "an integer from 1 to 4", id="invalid-value"),
    ],
)  # fmt: skip
def test_input_from_dict_refuses_bad_data(data: Any, field: str, allowed: str) -> None:
    """input_from_dict raises InputError for unknown keys, missing keys and invalid values."""
    with pytest.raises(InputError) as caught:
        input_from_dict(data)

    assert field == caught.value.field
    assert allowed == caught.value.allowed


# --- sloppy payloads: read leniently, as fal-client reads them -----------------------------------

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)

SLOPPY = [
    pytest.param({"status": "IN_PROGRESS", "logs": [{"message": None, "level": "INFO"}]},
                 InProgress(logs=(LogEntry(message="", level="INFO"),)), id="message-null"),
    pytest.param({"status": "IN_PROGRESS", "logs": [{"level": "INFO"}]},
                 InProgress(logs=(LogEntry(message="", level="INFO"),)), id="message-missing"),
    pytest.param({"status": "IN_PROGRESS", "logs": [{"message": 42}]},
                 InProgress(logs=(LogEntry(message="42"),)), id="message-number"),
    pytest.param({"status": "IN_PROGRESS", "logs": [{"message": "a", "timestamp": T0.timestamp()}]},
                 InProgress(logs=(LogEntry(message="a", timestamp=T0),)), id="timestamp-seconds"),
    pytest.param({"status": "IN_PROGRESS",
                  "logs": [{"message": "a", "timestamp": T0.timestamp() * 1000}]},
                 InProgress(logs=(LogEntry(message="a", timestamp=T0),)), id="timestamp-millis"),
    pytest.param({"status": "IN_PROGRESS", "logs": [{"message": "a", "timestamp": "yesterday"}]},
                 InProgress(logs=(LogEntry(message="a"),)), id="timestamp-not-iso"),
    pytest.param({"status": "IN_PROGRESS", "logs": ["plain line"]},
                 InProgress(logs=(LogEntry(message="plain line"),)), id="log-a-string"),
    pytest.param({"status": "IN_PROGRESS", "logs": "oops"}, InProgress(), id="logs-not-a-list"),
    pytest.param({"status": "COMPLETED", "logs": None, "metrics": None}, Completed(),
                 id="metrics-null"),
    pytest.param({"status": "COMPLETED", "logs": None, "metrics": "fast"}, Completed(),
                 id="metrics-not-an-object"),
    pytest.param({"status": "IN_QUEUE"}, Queued(position=None), id="no-queue-position"),
    pytest.param({"status": "IN_QUEUE", "queue_position": None}, Queued(position=None),
                 id="queue-position-null"),
    pytest.param({"status": "IN_QUEUE", "queue_position": "3"}, Queued(), id="position-string"),
    pytest.param({"status": "IN_QUEUE", "queue_position": 2.7}, Queued(), id="position-float"),
    pytest.param({"status": "IN_QUEUE", "queue_position": 2.0}, Queued(position=2),
                 id="position-whole-float"),
    pytest.param({"status": "IN_QUEUE", "queue_position": True}, Queued(), id="position-bool"),
]  # fmt: skip


@pytest.mark.parametrize(("payload", "expected"), SLOPPY)
def test_sloppy_informational_fields_are_kept_not_refused(payload: Any, expected: Any) -> None:
    """Logs, metrics and the queue position only inform: odd values never abort a paid job."""
    assert expected == parse_status(payload)
    assert expected == parse_status(payload, conv=strict)
