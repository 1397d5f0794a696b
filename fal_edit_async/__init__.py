"""fal_edit_async: an asyncio, queue-aware client for fal's gpt-image-1 edit endpoint.

Import everything from here; the underscore modules are private and may move.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._config import (
    DEFAULT_API_URL as DEFAULT_API_URL,
    DEFAULT_LIMITS as DEFAULT_LIMITS,
    DEFAULT_POLLING as DEFAULT_POLLING,
    DEFAULT_QUEUE_URL as DEFAULT_QUEUE_URL,
    DEFAULT_REST_URL as DEFAULT_REST_URL,
    DEFAULT_RETRY as DEFAULT_RETRY,
    DEFAULT_TIMEOUTS as DEFAULT_TIMEOUTS,
    ClientConfig as ClientConfig,
    Credentials as Credentials,
    Limits as Limits,
    Polling as Polling,
    RetryPolicy as RetryPolicy,
    Timeouts as Timeouts,
)
from ._converter import input_from_dict as input_from_dict
from ._endpoint import DEFAULT_ENDPOINT as DEFAULT_ENDPOINT, EndpointId as EndpointId
from ._exceptions import (
    APIError as APIError,
    AuthError as AuthError,
    BillingError as BillingError,
    BudgetExceededError as BudgetExceededError,
    DownloadError as DownloadError,
    EventLoopError as EventLoopError,
    FalEditError as FalEditError,
    InputError as InputError,
    InternalError as InternalError,
    JobCancelledError as JobCancelledError,
    JobFailedError as JobFailedError,
    JobTimeoutError as JobTimeoutError,
    JournalError as JournalError,
    JournalLockedError as JournalLockedError,
    MissingCredentialsError as MissingCredentialsError,
    NotFoundError as NotFoundError,
    ProtocolError as ProtocolError,
    RateLimitError as RateLimitError,
    ServerError as ServerError,
    TransportError as TransportError,
    UnknownSubmitError as UnknownSubmitError,
    ValidationError as ValidationError,
    WebhookError as WebhookError,
    WebhookKeysError as WebhookKeysError,
    WebhookPayloadError as WebhookPayloadError,
    WebhookRequestIdError as WebhookRequestIdError,
    WebhookSignatureError as WebhookSignatureError,
    WebhookTimestampError as WebhookTimestampError,
    WebhookUnverifiedError as WebhookUnverifiedError,
)
from ._models import (
    Background as Background,
    CancelOutcome as CancelOutcome,
    Completed as Completed,
    DownloadedFile as DownloadedFile,
    EditImageInput as EditImageInput,
    EditImageOutput as EditImageOutput,
    ImageFile as ImageFile,
    ImageSize as ImageSize,
    ImageSource as ImageSource,
    InProgress as InProgress,
    InputFidelity as InputFidelity,
    JobStatus as JobStatus,
    JobUrls as JobUrls,
    LogEntry as LogEntry,
    OutputFormat as OutputFormat,
    Quality as Quality,
    Queued as Queued,
    SubmitOptions as SubmitOptions,
    SubmitReceipt as SubmitReceipt,
    UnknownStatus as UnknownStatus,
    is_remote_url as is_remote_url,
)
from ._name_template import (
    DEFAULT_NAME_TEMPLATE as DEFAULT_NAME_TEMPLATE,
    NameTemplate as NameTemplate,
)
from ._pricing import (
    CostEstimate as CostEstimate,
    estimate_cost as estimate_cost,
)
from ._reconcile_models import (
    Reconciled as Reconciled,
    ReconcilePolicy as ReconcilePolicy,
    ReconcileReport as ReconcileReport,
    Resolution as Resolution,
)
from ._statistics import (
    ClientStatistics as ClientStatistics,
    RetryCounts as RetryCounts,
    RetryKind as RetryKind,
)
from ._version import __version__ as __version__
from ._webhook_models import (
    WebhookEvent as WebhookEvent,
    WebhookTag as WebhookTag,
)

if TYPE_CHECKING:  # loaded on first use (see __getattr__); listed here for type checkers
    from ._batch import Batch as Batch
    from ._batch._events import (
        BatchEvent as BatchEvent,
        ItemCompleted as ItemCompleted,
        ItemDownloaded as ItemDownloaded,
        ItemFailed as ItemFailed,
        ItemInterrupted as ItemInterrupted,
        ItemLog as ItemLog,
        ItemQueued as ItemQueued,
        ItemReattached as ItemReattached,
        ItemStarted as ItemStarted,
        ItemSubmitted as ItemSubmitted,
    )
    from ._batch._items import (
        BatchEstimate as BatchEstimate,
        BatchItem as BatchItem,
        BatchSummary as BatchSummary,
        EditItem as EditItem,
        EventCallback as EventCallback,
        ItemResult as ItemResult,
        ItemState as ItemState,
        estimate_batch as estimate_batch,
        item_key as item_key,
    )
    from ._batch._ledger import (
        Journal as Journal,
        JournalBackend as JournalBackend,
        JournalEntry as JournalEntry,
        JournalState as JournalState,
        JournalSummary as JournalSummary,
        PostgresJournal as PostgresJournal,
        open_journal as open_journal,
    )
    from ._client import AsyncClient as AsyncClient
    from ._job import (
        JobHandle as JobHandle,
        UpdateCallback as UpdateCallback,
    )
    from ._progress import ProgressBar as ProgressBar
    from ._sync_client import (
        Client as Client,
        SyncBatch as SyncBatch,
        SyncJobHandle as SyncJobHandle,
    )
    from ._transport import (
        AiohttpTransport as AiohttpTransport,
        MockTransport as MockTransport,
        Request as Request,
        Response as Response,
        StreamResponse as StreamResponse,
        Transport as Transport,
    )

#: Names whose modules import aiohttp and anyio: they load on first use, so that
#: ``import fal_edit_async`` (and ``fal-edit --help``) stays fast.
_LAZY: dict[str, str] = {
    "AiohttpTransport": "._transport",
    "AsyncClient": "._client",
    "Batch": "._batch",
    "BatchEstimate": "._batch._items",
    "BatchEvent": "._batch._events",
    "BatchItem": "._batch._items",
    "BatchSummary": "._batch._items",
    "Client": "._sync_client",
    "EditItem": "._batch._items",
    "EventCallback": "._batch._items",
    "ItemCompleted": "._batch._events",
    "ItemDownloaded": "._batch._events",
    "ItemFailed": "._batch._events",
    "ItemInterrupted": "._batch._events",
    "ItemLog": "._batch._events",
    "ItemQueued": "._batch._events",
    "ItemReattached": "._batch._events",
    "ItemResult": "._batch._items",
    "ItemStarted": "._batch._events",
    "ItemState": "._batch._items",
    "ItemSubmitted": "._batch._events",
    "JobHandle": "._job",
    "Journal": "._batch._ledger",
    "JournalBackend": "._batch._ledger",
    "JournalEntry": "._batch._ledger",
    "JournalState": "._batch._ledger",
    "JournalSummary": "._batch._ledger",
    "MockTransport": "._transport",
    "ProgressBar": "._progress",
    "Request": "._transport",
    "Response": "._transport",
    "StreamResponse": "._transport",
    "SyncBatch": "._sync_client",
    "SyncJobHandle": "._sync_client",
    "Transport": "._transport",
    "UpdateCallback": "._job",
    "PostgresJournal": "._batch._ledger",
    "estimate_batch": "._batch._items",
    "item_key": "._batch._items",
    "open_journal": "._batch._ledger",
}

__all__ = [
    "APIError",
    "AiohttpTransport",
    "AsyncClient",
    "AuthError",
    "Background",
    "Batch",
    "BatchEstimate",
    "BatchEvent",
    "BatchItem",
    "BatchSummary",
    "BillingError",
    "BudgetExceededError",
    "CancelOutcome",
    "Client",
    "ClientConfig",
    "ClientStatistics",
    "Completed",
    "CostEstimate",
    "Credentials",
    "DEFAULT_API_URL",
    "DEFAULT_ENDPOINT",
    "DEFAULT_LIMITS",
    "DEFAULT_NAME_TEMPLATE",
    "DEFAULT_POLLING",
    "DEFAULT_QUEUE_URL",
    "DEFAULT_REST_URL",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUTS",
    "DownloadError",
    "DownloadedFile",
    "EditImageInput",
    "EditImageOutput",
    "EditItem",
    "EndpointId",
    "EventCallback",
    "EventLoopError",
    "FalEditError",
    "ImageFile",
    "ImageSize",
    "ImageSource",
    "InProgress",
    "InputError",
    "InputFidelity",
    "InternalError",
    "ItemCompleted",
    "ItemDownloaded",
    "ItemFailed",
    "ItemInterrupted",
    "ItemLog",
    "ItemQueued",
    "ItemReattached",
    "ItemResult",
    "ItemStarted",
    "ItemState",
    "ItemSubmitted",
    "JobCancelledError",
    "JobFailedError",
    "JobHandle",
    "JobStatus",
    "JobTimeoutError",
    "JobUrls",
    "Journal",
    "JournalBackend",
    "JournalEntry",
    "JournalError",
    "JournalLockedError",
    "JournalState",
    "JournalSummary",
    "Limits",
    "LogEntry",
    "MissingCredentialsError",
    "MockTransport",
    "NameTemplate",
    "NotFoundError",
    "OutputFormat",
    "Polling",
    "PostgresJournal",
    "ProgressBar",
    "ProtocolError",
    "Quality",
    "Queued",
    "RateLimitError",
    "ReconcilePolicy",
    "ReconcileReport",
    "Reconciled",
    "Request",
    "Resolution",
    "Response",
    "RetryCounts",
    "RetryKind",
    "RetryPolicy",
    "ServerError",
    "StreamResponse",
    "SubmitOptions",
    "SubmitReceipt",
    "SyncBatch",
    "SyncJobHandle",
    "Timeouts",
    "Transport",
    "TransportError",
    "UnknownStatus",
    "UnknownSubmitError",
    "UpdateCallback",
    "ValidationError",
    "WebhookError",
    "WebhookEvent",
    "WebhookKeysError",
    "WebhookPayloadError",
    "WebhookRequestIdError",
    "WebhookSignatureError",
    "WebhookTag",
    "WebhookTimestampError",
    "WebhookUnverifiedError",
    "__version__",
    "estimate_batch",
    "estimate_cost",
    "input_from_dict",
    "is_remote_url",
    "item_key",
    "open_journal",
]


def _report_home(names: list[str]) -> None:
    """Reprs and tracebacks say fal_edit_async.X, not fal_edit_async._models.X (as httpx
    does)."""
    for name in names:
        obj = globals()[name]
        if isinstance(obj, type) and obj.__module__.startswith(__name__ + "._"):
            obj.__module__ = __name__


def __getattr__(name: str) -> Any:
    """Load the lazy names, all at once: a class reports its home however it was reached."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for lazy, module in _LAZY.items():
        globals()[lazy] = getattr(importlib.import_module(module, __name__), lazy)
    _report_home(list(_LAZY))
    return globals()[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


_report_home([name for name in __all__ if name not in _LAZY])
