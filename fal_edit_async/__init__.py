"""fal_edit_async: an asyncio, queue-aware client for fal's gpt-image-1 edit endpoint.

Import everything from here; the underscore modules are private and may move.
"""

from __future__ import annotations

from ._batch import Batch as Batch
from ._batch._events import (
    BatchEvent as BatchEvent,
    ItemCompleted as ItemCompleted,
    ItemDownloaded as ItemDownloaded,
    ItemFailed as ItemFailed,
    ItemLog as ItemLog,
    ItemQueued as ItemQueued,
    ItemStarted as ItemStarted,
    ItemSubmitted as ItemSubmitted,
)
from ._batch._items import (
    BatchEstimate as BatchEstimate,
    BatchItem as BatchItem,
    BatchSummary as BatchSummary,
    EventCallback as EventCallback,
    ItemResult as ItemResult,
    ItemState as ItemState,
    estimate_batch as estimate_batch,
    item_key as item_key,
)
from ._batch._journal import (
    Journal as Journal,
    JournalEntry as JournalEntry,
    JournalState as JournalState,
)
from ._client import DEFAULT_ENDPOINT as DEFAULT_ENDPOINT, AsyncClient as AsyncClient
from ._config import (
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
from ._endpoint import EndpointId as EndpointId
from ._exceptions import (
    APIError as APIError,
    AuthError as AuthError,
    BudgetExceededError as BudgetExceededError,
    DownloadError as DownloadError,
    FalEditError as FalEditError,
    InputError as InputError,
    JobCancelledError as JobCancelledError,
    JobFailedError as JobFailedError,
    JobTimeoutError as JobTimeoutError,
    NotFoundError as NotFoundError,
    ProtocolError as ProtocolError,
    RateLimitError as RateLimitError,
    ServerError as ServerError,
    TransportError as TransportError,
    ValidationError as ValidationError,
)
from ._job import JobHandle as JobHandle, UpdateCallback as UpdateCallback
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
from ._pricing import CostEstimate as CostEstimate, estimate_cost as estimate_cost
from ._statistics import (
    ClientStatistics as ClientStatistics,
    RetryCounts as RetryCounts,
    RetryKind as RetryKind,
)
from ._transport import (
    AiohttpTransport as AiohttpTransport,
    MockTransport as MockTransport,
    Request as Request,
    Response as Response,
    StreamResponse as StreamResponse,
    Transport as Transport,
)
from ._version import __version__ as __version__

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
    "BudgetExceededError",
    "CancelOutcome",
    "ClientConfig",
    "ClientStatistics",
    "Completed",
    "CostEstimate",
    "Credentials",
    "DEFAULT_ENDPOINT",
    "DEFAULT_LIMITS",
    "DEFAULT_POLLING",
    "DEFAULT_QUEUE_URL",
    "DEFAULT_REST_URL",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUTS",
    "DownloadError",
    "DownloadedFile",
    "EditImageInput",
    "EditImageOutput",
    "EndpointId",
    "EventCallback",
    "FalEditError",
    "ImageFile",
    "ImageSize",
    "ImageSource",
    "InProgress",
    "InputError",
    "InputFidelity",
    "ItemCompleted",
    "ItemDownloaded",
    "ItemFailed",
    "ItemLog",
    "ItemQueued",
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
    "JournalEntry",
    "JournalState",
    "Limits",
    "LogEntry",
    "MockTransport",
    "NotFoundError",
    "OutputFormat",
    "Polling",
    "ProtocolError",
    "Quality",
    "Queued",
    "RateLimitError",
    "Request",
    "Response",
    "RetryCounts",
    "RetryKind",
    "RetryPolicy",
    "ServerError",
    "StreamResponse",
    "SubmitOptions",
    "SubmitReceipt",
    "Timeouts",
    "Transport",
    "TransportError",
    "UnknownStatus",
    "UpdateCallback",
    "ValidationError",
    "__version__",
    "estimate_batch",
    "estimate_cost",
    "input_from_dict",
    "is_remote_url",
    "item_key",
]

# Reprs and tracebacks say fal_edit_async.X, not fal_edit_async._models.X (as httpx does).
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith(__name__ + "._"):
        _obj.__module__ = __name__
del _name, _obj
