"""Endpoint ids parsed as fal-client parses them (protocol reference §1.2)."""

from __future__ import annotations

import pytest

from fal_edit_async import EndpointId, InputError
from fal_edit_async._endpoint import NAMESPACES

ALLOWED = "an endpoint id like 'fal-ai/gpt-image-1/edit-image'"


@pytest.mark.parametrize(
    ("endpoint_id", "expected", "app_root"),
    [
        pytest.param(
            "fal-ai/gpt-image-1/edit-image",
            EndpointId(owner="fal-ai", alias="gpt-image-1", path="edit-image"),
            "fal-ai/gpt-image-1",
            id="owner-alias-path",
        ),
        pytest.param(
            "fal-ai/gpt-image-1",
            EndpointId(owner="fal-ai", alias="gpt-image-1"),
            "fal-ai/gpt-image-1",
            id="owner-alias",
        ),
        pytest.param(
            "fal-ai/flux/dev/image-to-image",
            EndpointId(owner="fal-ai", alias="flux", path="dev/image-to-image"),
            "fal-ai/flux",
            id="multi-segment-path",
        ),
        pytest.param(
            "workflows/me/wf/sub",
            EndpointId(namespace="workflows", owner="me", alias="wf", path="sub"),
            "workflows/me/wf",
            id="workflows-namespace",
        ),
        pytest.param(
            "workflows/me/wf",
            EndpointId(namespace="workflows", owner="me", alias="wf"),
            "workflows/me/wf",
            id="workflows-without-path",
        ),
        pytest.param(
            "comfy/me/app",
            EndpointId(namespace="comfy", owner="me", alias="app"),
            "comfy/me/app",
            id="comfy-namespace",
        ),
        pytest.param(
            "123-my-app",
            EndpointId(owner="123", alias="my-app"),
            "123/my-app",
            id="legacy-numeric-id",
        ),
        pytest.param(
            "me/app.v2_final~1/x",
            EndpointId(owner="me", alias="app.v2_final~1", path="x"),
            "me/app.v2_final~1",
            id="unreserved-characters",
        ),
    ],
)
def test_valid_endpoint_ids_parse(endpoint_id: str, expected: EndpointId, app_root: str) -> None:
    """Valid ids split into namespace, owner, alias and path; status URLs use the app root."""
    parsed = EndpointId.parse(endpoint_id)

    assert expected == parsed
    assert app_root == parsed.app_root


@pytest.mark.parametrize(
    "endpoint_id",
    ["fal-ai/gpt-image-1/edit-image", "fal-ai/gpt-image-1", "workflows/me/wf/sub", "comfy/me/app"],
)
def test_submit_path_keeps_the_sub_path(endpoint_id: str) -> None:
    """Submit goes to the full id, so submit_path and str() give the id back unchanged."""
    parsed = EndpointId.parse(endpoint_id)

    assert endpoint_id == parsed.submit_path == str(parsed)


def test_legacy_id_submits_to_its_two_segment_form() -> None:
    """A legacy ``123-my-app`` id is submitted as ``123/my-app``, as fal-client does."""
    assert "123/my-app" == EndpointId.parse("123-my-app").submit_path


def test_only_workflows_and_comfy_are_namespaces() -> None:
    """The namespace list matches fal-client's APP_NAMESPACES."""
    assert frozenset({"workflows", "comfy"}) == NAMESPACES


@pytest.mark.parametrize(
    ("endpoint_id", "allowed"),
    [
        pytest.param("", ALLOWED, id="empty"),
        pytest.param("gpt-image-1", ALLOWED, id="single-segment-not-legacy"),
        pytest.param("123", ALLOWED, id="digits-only"),
        pytest.param("123-", ALLOWED, id="legacy-without-alias"),
        pytest.param("123-my_app", ALLOWED, id="legacy-with-underscore"),
        pytest.param("fal-ai//edit-image", ALLOWED, id="empty-segment"),
        pytest.param("fal ai/gpt-image-1", ALLOWED, id="space"),
        pytest.param("fal-ai/gpt-image-1\n", ALLOWED, id="trailing-newline"),
        pytest.param("123-app\n", ALLOWED, id="legacy-trailing-newline"),
        pytest.param("fal-ai/gpt-image-1?x=1", ALLOWED, id="query-string"),
        pytest.param("https://queue.fal.run/fal-ai/gpt-image-1", ALLOWED, id="full-url"),
        pytest.param("workflows/me", "workflows/<owner>/<alias>[/path]", id="workflows-too-short"),
        pytest.param("comfy/me", "comfy/<owner>/<alias>[/path]", id="comfy-too-short"),
        pytest.param(None, ALLOWED, id="none"),
        pytest.param(123, ALLOWED, id="int"),
    ],
)
def test_invalid_endpoint_ids_raise_input_error(endpoint_id: object, allowed: str) -> None:
    """An invalid id raises InputError naming the endpoint, the id and the expected shape."""
    with pytest.raises(InputError) as caught:
        EndpointId.parse(endpoint_id)  # type: ignore[arg-type]

    assert "endpoint" == caught.value.field
    assert endpoint_id == caught.value.value
    assert allowed == caught.value.allowed
    assert f"endpoint: invalid value {endpoint_id!r}; expected {allowed}" == str(caught.value)


def test_endpoint_ids_are_hashable_values() -> None:
    """Two parses of the same id are equal and hash alike, so ids can key a dict."""
    assert {EndpointId.parse("comfy/me/app"): 1} == {EndpointId.parse("comfy/me/app"): 1}
