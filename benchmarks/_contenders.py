"""One contender in its own process: set up, warm up, wait for "go", run the timed round.

Usage (``run.py`` does this)::

    python benchmarks/_contenders.py '{"contender": "floor", "jobs": 500, "concurrency": 64,
        "warmup": 16}'

It imports what the contender needs while the emulator starts, then reads one JSON line on
stdin: the emulator's ``queue_url``, ``rest_url``, ``cdn_url`` and ``api_key``. On stdout:
``{"ready": true}`` once set up and warmed up; then, after reading a line on stdin, one JSON
line with the timed round: wall seconds, CPU seconds and peak RSS of this process
(:func:`peak_rss_kb`), and ``done``, the ``time.monotonic()`` at which each request id's
result was in hand. Monotonic time is system-wide on Linux, so ``run.py`` compares it with the
emulator's own timestamps.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import importlib
import io
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import anyio
import attrs
from PIL import Image

ENDPOINT = "fal-ai/gpt-image-1/edit-image"
PROMPT = "make it pixel art"
#: Read size of the bare download loops (the same as fal_edit_async's).
CHUNK = 256 * 1024
#: A contender's name with this suffix runs on uvloop (``pip install uvloop``).
UVLOOP = "+uvloop"
#: Connections beyond the concurrency, so a download or a cancel never waits for a socket.
SPARE_CONNECTIONS = 16


def tiny_png_data_uri() -> str:
    """A 16x16 PNG as a data URI: the input image of every job."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 80, 40)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def request_id_of(file_name: str) -> str:
    """The request id in an emulator output name, ``<request id>_<index>.<ext>``.

    Reading it from the output keeps callbacks out of the measured code paths.
    """
    return file_name.rsplit("_", 1)[0]


@attrs.define
class Round:
    """What one round produced: result times by request id, failures, bytes on disk."""

    done: dict[str, float] = attrs.field(factory=dict)
    failed: int = 0
    errors: list[str] = attrs.field(factory=list)
    bytes: int = 0

    def fail(self, error: BaseException | str | None) -> None:
        self.failed += 1
        if len(self.errors) < 5:
            self.errors.append(repr(error))


class Contender:
    """The same work done one way: ``run(n)`` edits ``n`` images at ``concurrency``."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.concurrency: int = spec["concurrency"]
        self.downloads: int = spec.get("downloads") or 8
        self.image_uri = tiny_png_data_uri()
        self.arguments = {"prompt": PROMPT, "image_urls": [self.image_uri]}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def prepare(self, n: int) -> None:
        """Untimed work before a round (only the download-phase contenders need any)."""

    async def run(self, n: int, dest: Path | None) -> Round:
        raise NotImplementedError

    def statistics(self) -> dict[str, Any]:
        """Client-side counters worth reporting (retries, fallbacks)."""
        return {}


class _Ours(Contender):
    def __init__(self, spec: dict[str, Any]) -> None:
        from fal_edit_async import AsyncClient, EditImageInput, Limits

        super().__init__(spec)
        self.input = EditImageInput(prompt=PROMPT, image_urls=[self.image_uri])
        self.client = AsyncClient(
            api_key=spec["api_key"],
            queue_url=spec["queue_url"],
            rest_url=spec["rest_url"],
            limits=Limits(max_connections=self.concurrency + SPARE_CONNECTIONS),
        )

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.client.aclose()

    def statistics(self) -> dict[str, Any]:
        import attrs

        stats: Any = self.client.statistics()
        if isinstance(stats, dict):  # older copies (PYTHONPATH=...) returned a plain dict
            retries = stats.get("retries") or {}
            return {**{k: v for k, v in stats.items() if k != "retries"}, **retries}
        counts = {k: v for k, v in attrs.asdict(stats, recurse=False).items() if k != "retries"}
        return {**counts, **stats.retries.as_dict()}


class OursEdit(_Ours):
    """``await client.edit(input)`` in N tasks under a CapacityLimiter, one task group."""

    async def run(self, n: int, dest: Path | None) -> Round:
        from fal_edit_async import FalEditError

        result = Round()
        limiter = anyio.CapacityLimiter(self.concurrency)

        async def one() -> None:
            async with limiter:
                try:
                    output = await self.client.edit(self.input)
                except FalEditError as exc:
                    result.fail(exc)
                    return
                now = time.monotonic()
                result.done[request_id_of(output.images[0].file_name or "")] = now

        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one)
        return result


class OursBatch(_Ours):
    """``async with client.edit_many(inputs, concurrency=C) as batch: async for r in batch``."""

    async def run(self, n: int, dest: Path | None) -> Round:
        result = Round()
        inputs = [self.input] * n
        async with self.client.edit_many(
            inputs, concurrency=self.concurrency, download_to=dest, downloads=self.downloads
        ) as batch:
            async for item in batch:
                now = time.monotonic()
                if item.ok and item.request_id is not None:
                    result.done[item.request_id] = now
                    result.bytes += sum(f.size for f in item.files)
                else:
                    result.fail(item.error or item.state)
        return result


class OursBatchNoDownload(OursBatch):
    """``edit_many`` keeping only the URLs (no ``download_to``), even where the case writes
    files: the pipeline without its downloads."""

    async def run(self, n: int, dest: Path | None) -> Round:
        return await super().run(n, None)


class OursManifest(_Ours):
    """``edit_many`` over a JSONL manifest read one line at a time, as ``fal-edit batch``
    feeds it: memory must not grow with the batch (no downloads)."""

    async def prepare(self, n: int) -> None:
        import tempfile

        handle, name = tempfile.mkstemp(suffix=".jsonl")
        with open(handle, "w") as file:  # noqa: ASYNC230 - set-up, before the timed round
            for i in range(n):
                line = {"prompt": f"{PROMPT} #{i}", "image_urls": [self.image_uri]}
                file.write(json.dumps(line) + "\n")
        self.manifest = Path(name)

    async def run(self, n: int, dest: Path | None) -> Round:
        result = Round()

        def lines() -> Any:
            with self.manifest.open() as file:
                for text in file:
                    yield json.loads(text)

        # No per-job latency here: a dict of 100,000 timestamps would be the RSS measured.
        async with self.client.edit_many(lines(), concurrency=self.concurrency) as batch:
            async for item in batch:
                if not item.ok:
                    result.fail(item.error or item.state)
        self.manifest.unlink()
        return result


class OursJournal(_Ours):
    """``edit_many`` with a journal and ``download_to``, as ``fal-edit --journal`` runs it.

    Each item is a distinct prompt, so each is a row of its own; the journal sits next to
    the download folder. Downloads are checksummed, as the library does for a journaled
    batch (the journal re-checks files on a re-run). ``"durable": false`` in the spec patches
    the journal's fsynced writes (``synchronous=FULL``) to ordinary ones, to measure them.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        if spec.get("durable") is False:
            from fal_edit_async._batch._ledger import _sqlite

            run = _sqlite.Journal._run

            async def normal(journal: Any, fn: Any, *, durable: bool = False) -> Any:
                return await run(journal, fn)

            setattr(_sqlite.Journal, "_run", normal)  # noqa: B010 - no typed assignment

    async def prepare(self, n: int) -> None:
        from fal_edit_async import EditImageInput

        self.inputs = [
            EditImageInput(prompt=f"{PROMPT} #{i}", image_urls=[self.image_uri]) for i in range(n)
        ]

    async def run(self, n: int, dest: Path | None) -> Round:
        assert dest is not None
        result = Round()
        async with self.client.edit_many(
            self.inputs[:n],
            concurrency=self.concurrency,
            download_to=dest,
            downloads=self.downloads,
            journal=self.journal_for(dest),
        ) as batch:
            async for item in batch:
                now = time.monotonic()
                if item.ok and item.request_id is not None:
                    result.done[item.request_id] = now
                    result.bytes += sum(f.size for f in item.files)
                else:
                    result.fail(item.error or item.state)
        return result

    def journal_for(self, dest: Path) -> str | Path:
        """A fresh journal per round (warm-up and timed), next to its download folder."""
        return dest.parent / f"{dest.name}.journal"


class OursJournalPostgres(OursJournal):
    """:class:`OursJournal` on a PostgreSQL ledger: a fresh schema per round, made by the
    driver (``spec["journal_dsns"]``, by download folder name), so this process imports
    nothing the SQLite one does not, but psycopg."""

    def journal_for(self, dest: Path) -> str | Path:
        dsn: str = self.spec["journal_dsns"][dest.name]
        return dsn


class FalClient(Contender):
    """The official ``fal_client.AsyncClient.subscribe`` under a semaphore, its defaults kept."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import fal_client
        import fal_client.client

        super().__init__(spec)
        # Point the module at the emulator before the client exists (see Emulator's docs).
        fal_client.client.QUEUE_URL_FORMAT = spec["queue_url"] + "/"
        fal_client.client.REST_URL = spec["rest_url"]
        fal_client.client.CDN_URL = spec["cdn_url"]
        self.client = fal_client.AsyncClient(key=spec["api_key"])

    async def run(self, n: int, dest: Path | None) -> Round:
        result = Round()
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one() -> None:
            async with semaphore:
                try:
                    output = await self.client.subscribe(
                        ENDPOINT, arguments=self.arguments, with_logs=False
                    )
                except Exception as exc:  # whatever fal_client raises counts as a failure
                    result.fail(exc)
                    return
                now = time.monotonic()
                result.done[request_id_of(output["images"][0]["file_name"])] = now

        async with asyncio.TaskGroup() as tg:
            for _ in range(n):
                tg.create_task(one())
        return result


class Floor(Contender):
    """The fewest requests per job with bare aiohttp: submit, SSE status stream, result."""

    async def __aenter__(self) -> Self:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency + 8)
        )
        self.auth = {"Authorization": f"Key {self.spec['api_key']}"}
        self.submit_url = f"{self.spec['queue_url']}/{ENDPOINT}"
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.session.close()

    async def job(self) -> tuple[str, Any]:
        """One job: returns its request id and its parsed output."""
        session, auth = self.session, self.auth
        async with session.post(self.submit_url, json=self.arguments, headers=auth) as resp:
            resp.raise_for_status()
            receipt = await resp.json()
        completed = False
        stream_url = receipt["status_url"] + "/stream"
        async with session.get(stream_url, params={"logs": "0"}, headers=auth) as resp:
            resp.raise_for_status()
            # Read to the end (it comes right after COMPLETED) so the connection is reused.
            async for line in resp.content:
                completed = completed or (line.startswith(b"data:") and b'"COMPLETED"' in line)
        if not completed:
            raise RuntimeError("status stream ended before COMPLETED")
        async with session.get(receipt["response_url"], headers=auth) as resp:
            resp.raise_for_status()
            return receipt["request_id"], await resp.json()

    async def download(self, url: str, path: Path) -> int:
        """GET ``url`` into ``path`` chunk by chunk, with plain blocking writes."""
        size = 0
        async with self.session.get(url) as resp:
            resp.raise_for_status()
            with open(path, "wb") as file:  # noqa: ASYNC230 - the baseline: no thread hops
                async for chunk in resp.content.iter_chunked(CHUNK):
                    file.write(chunk)
                    size += len(chunk)
        return size

    async def run(self, n: int, dest: Path | None) -> Round:
        result = Round()
        jobs = asyncio.Semaphore(self.concurrency)
        downloads = asyncio.Semaphore(self.downloads)

        async def one() -> None:
            try:
                async with jobs:
                    request_id, output = await self.job()
                if dest is not None:
                    for index, image in enumerate(output["images"]):
                        async with downloads:
                            path = dest / f"{request_id}_{index}.png"
                            size = await self.download(image["url"], path)
                            result.bytes += size  # not `+= await`: that reads before awaiting
            except (aiohttp.ClientError, RuntimeError, OSError) as exc:
                result.fail(exc)
                return
            result.done[request_id] = time.monotonic()

        async with asyncio.TaskGroup() as tg:
            for _ in range(n):
                tg.create_task(one())
        return result


class FloorSafeFiles(Floor):
    """The floor writing its downloads as the library does, and nothing more: a locked,
    exclusive temp file, the image's structure checked as the bytes are written, and the
    file published only when whole and never over another's (``link``). What is left of
    the distance from ``ours-batch`` to this row is the pipeline's own cost."""

    async def download(self, url: str, path: Path) -> int:
        from fal_edit_async._files import ImageCheck, TempFile

        size = 0
        temp = TempFile(path.parent, path.stem, fsync=False, checksum=False)
        try:
            async with self.session.get(url) as resp:
                resp.raise_for_status()
                temp.check = ImageCheck("png")
                async for chunk in resp.content.iter_chunked(CHUNK):
                    temp.write([chunk])  # on the loop, as the library writes a fast folder
                    size += len(chunk)
            check = temp.check

            def whole() -> None:
                check.finish()

            temp.commit([], path, whole, replace=False)
        finally:
            if temp.left_behind:
                temp.discard()
        return size


class OursDownload(_Ours):
    """Only the download phase: ``fal_edit_async._downloads.download_image`` over N results,
    as the library downloads by default (no SHA-256)."""

    checksum = False

    async def prepare(self, n: int) -> None:
        async with self.client.edit_many([self.input] * n, concurrency=self.concurrency) as batch:
            self.images = [item.output.images[0] async for item in batch if item.output]

    async def run(self, n: int, dest: Path | None) -> Round:
        from fal_edit_async import DownloadError
        from fal_edit_async._downloads import download_image

        assert dest is not None
        result = Round()
        limiter = anyio.CapacityLimiter(self.downloads)
        core = self.client._core  # the library's own download path, without the batch around it

        async def one(index: int) -> None:
            async with limiter:
                try:
                    file = await download_image(
                        core,
                        self.images[index],
                        dest,
                        f"image{index}",
                        0,
                        checksum=self.checksum,
                    )
                except DownloadError as exc:
                    result.fail(exc)
                    return
                result.bytes += file.size

        async with anyio.create_task_group() as tg:
            for index in range(len(self.images)):
                tg.start_soon(one, index)
        return result


class OursDownloadSha256(OursDownload):
    """:class:`OursDownload` with ``checksum=True`` (as a journaled batch): what SHA-256 costs."""

    checksum = True


class BareDownload(Floor):
    """Only the download phase, bare: aiohttp ``iter_chunked`` into files, no thread hops."""

    async def prepare(self, n: int) -> None:
        outputs = await asyncio.gather(*(self.job() for _ in range(n)))
        self.urls = [output["images"][0]["url"] for _, output in outputs]

    async def run(self, n: int, dest: Path | None) -> Round:
        assert dest is not None
        result = Round()
        semaphore = asyncio.Semaphore(self.downloads)

        async def one(index: int, url: str) -> None:
            async with semaphore:
                try:
                    size = await self.download(url, dest / f"image{index}_0.png")
                except (aiohttp.ClientError, OSError) as exc:
                    result.fail(exc)
                    return
                result.bytes += size

        async with asyncio.TaskGroup() as tg:
            for index, url in enumerate(self.urls):
                tg.create_task(one(index, url))
        return result


CONTENDERS: dict[str, Callable[[dict[str, Any]], Contender]] = {
    "ours-edit": OursEdit,
    "ours-batch": OursBatch,
    "ours-journal": OursJournal,
    "ours-journal-pg": OursJournalPostgres,
    "ours-batch-nodl": OursBatchNoDownload,
    "ours-manifest": OursManifest,
    "fal-client": FalClient,
    "floor": Floor,
    "floor-safe": FloorSafeFiles,
    "ours-download": OursDownload,
    "ours-download-sha256": OursDownloadSha256,
    "bare-download": BareDownload,
}


def emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_kb() -> int:
    """This process's peak resident memory, in KiB. Linux keeps ``ru_maxrss`` across the exec
    that started us, so it is at least the driver's own peak when it forked us (which grows
    with each 100,000-job ``stats`` answer it parsed): ``VmHWM`` is this process's alone."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


async def main_async(spec: dict[str, Any]) -> dict[str, Any]:
    root = Path(spec["download_dir"]) if spec.get("download_dir") else None
    async with CONTENDERS[spec["contender"]](spec) as contender:
        if spec.get("warmup"):
            await contender.prepare(spec["warmup"])
            await contender.run(spec["warmup"], root / "warmup" if root else None)
        await contender.prepare(spec["jobs"])
        emit({"ready": True})
        await asyncio.to_thread(sys.stdin.readline)  # "go": the driver has read the counters
        gc.collect()
        cpu, start = cpu_seconds(), time.monotonic()
        system = resource.getrusage(resource.RUSAGE_SELF).ru_stime
        result = await contender.run(spec["jobs"], root / "timed" if root else None)
        wall, cpu = time.monotonic() - start, cpu_seconds() - cpu
        system = resource.getrusage(resource.RUSAGE_SELF).ru_stime - system
        stats = contender.statistics()
    return {
        "wall": wall,
        "cpu": cpu,
        "cpu_system": system,  # of which in the kernel (fsync, file writes, sockets)
        "maxrss_kb": peak_rss_kb(),
        "done": result.done,
        "failed": result.failed,
        "errors": result.errors,
        "bytes": result.bytes,
        "client_stats": stats,
    }


def preload(contender: str) -> None:
    """Import the client a contender uses (and only that one, so RSS stays its own)."""
    if contender.startswith("ours"):
        importlib.import_module("fal_edit_async")
    elif contender == "fal-client":
        importlib.import_module("fal_client.client")


def main() -> None:
    spec = json.loads(sys.argv[1])
    preload(spec["contender"])
    spec.update(json.loads(sys.stdin.readline()))  # the emulator's URLs and key
    if spec.get("download_dir"):
        for name in ("warmup", "timed"):  # made here: blocking calls stay off the event loop
            (Path(spec["download_dir"]) / name).mkdir(parents=True, exist_ok=True)
    if spec["contender"].endswith(UVLOOP):  # the same contender on uvloop's event loop
        import uvloop

        spec["contender"] = spec["contender"].removesuffix(UVLOOP)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            emit(runner.run(main_async(spec)))
    else:
        emit(asyncio.run(main_async(spec)))


if __name__ == "__main__":
    main()
