"""to_dict() and from_dict() on the public models: JSON-ready, round-tripping, strict inputs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fal_edit_async import (
    Completed,
    DownloadedFile,
    EditImageInput,
    EditImageOutput,
    ImageFile,
    InProgress,
    InputError,
    JobUrls,
    LogEntry,
    ProtocolError,
    Queued,
    SubmitReceipt,
    UnknownStatus,
)

from .conftest import make_png

LOG = LogEntry(message="step 1", level="INFO", timestamp=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
VALUES: list[Any] = [
    EditImageOutput(images=(ImageFile(url="https://v3.fal.media/a.png", width=8, height=8),)),
    ImageFile(url="https://v3.fal.media/a.png"),
    SubmitReceipt(request_id="r", response_url="u", status_url="s", cancel_url="c"),
    JobUrls(request_id="r", status_url="s", response_url="u", cancel_url="c"),
    DownloadedFile(path=Path("out/a_0.png"), size=3, sha256=None, content_type="image/png"),
    LOG,
    Queued(position=2, request_id="r"),
    InProgress(logs=(LOG,)),
    Completed(logs=(LOG,), metrics={"inference_time": 1.5}, error=None),
    EditImageInput(prompt="p", image_urls=["https://example.com/a.png"], quality="low"),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_to_dict_is_json_and_from_dict_round_trips(value: Any) -> None:
    """json.dumps takes to_dict(), and from_dict() of it gives the same value back."""
    data = json.loads(json.dumps(value.to_dict()))
    assert value == type(value).from_dict(data)


def test_wire_names_and_tags() -> None:
    """to_dict() speaks fal's wire format: queue_position, the status tag, plain enums."""
    assert {"status": "IN_QUEUE", "queue_position": 2, "request_id": "r"} == Queued(
        position=2, request_id="r"
    ).to_dict()
    assert "2025-01-02T03:04:05Z" == LOG.to_dict()["timestamp"]
    assert "low" == VALUES[-1].to_dict()["quality"]


def test_an_input_with_local_images_becomes_plain_strings(tmp_path: Path) -> None:
    """A Path becomes its text; bytes a data: URI typed by their content."""
    png = make_png()
    data = EditImageInput(prompt="p", image_urls=[tmp_path / "a.png", png]).to_dict()
    assert str(tmp_path / "a.png") == data["image_urls"][0]
    assert data["image_urls"][1].startswith("data:image/png;base64,")
    json.dumps(data)


def test_from_dict_checks_an_input_like_the_client() -> None:
    """Unknown or missing fields and bad values are InputErrors."""
    with pytest.raises(InputError, match="promt"):
        EditImageInput.from_dict({"promt": "p", "image_urls": ["https://x.example/a.png"]})
    with pytest.raises(InputError, match="prompt"):
        EditImageInput.from_dict({"image_urls": ["https://x.example/a.png"]})


def test_from_dict_refuses_another_status_or_a_bad_payload() -> None:
    """A Completed payload is not a Queued; a missing field names its path (a value fal may
    send oddly, like a string position, is read leniently, as from fal)."""
    with pytest.raises(ProtocolError, match="IN_QUEUE"):
        Queued.from_dict(Completed().to_dict())
    with pytest.raises(ProtocolError, match=r"request_id"):
        SubmitReceipt.from_dict({"response_url": "u", "status_url": "s", "cancel_url": "c"})
    with pytest.raises(ProtocolError, match="url"):
        ImageFile.from_dict({})


def test_unknown_status_keeps_its_payload() -> None:
    """A status this client does not know round-trips with its fields."""
    value = UnknownStatus.from_dict({"status": "PAUSED", "why": "maintenance"})
    assert {"status": "PAUSED", "why": "maintenance"} == value.to_dict()
