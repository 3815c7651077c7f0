"""The server-side recorder: a receive-only peer that writes files.

It joins a room like any participant (role ``recorder``) through an
in-process connection, writes one file per remote peer connection, and hands
each finished file to a RecordingSink supplied by the application.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from signaling.client import SignalingChannel
from signaling.identity import ROLE_RECORDER, Admission, PeerIdentity
from signaling.mediafile import MediaFileWriter, WrittenFile
from signaling.peer import PeerFailure, PeerOptions, RoomPeer

if TYPE_CHECKING:
    from signaling.service import SignalingService

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, kw_only=True)
class Recording:
    """A finished recording of one peer's media in a room."""

    room: str
    peer_id: str
    filename: str
    content_type: str
    started_at: datetime
    ended_at: datetime
    video_frames: int
    audio_frames: int

    @property
    def duration_seconds(self) -> float:
        return (self.ended_at - self.started_at).total_seconds()


class RecordingSink(Protocol):
    """Where finished recordings go (GridFS in the application)."""

    async def store(self, recording: Recording, path: Path) -> None:
        """Take the file at ``path``; the recorder deletes it afterwards."""
        ...


class DirectorySink:
    """Moves finished recordings into a directory (tests, small setups)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.stored: list[tuple[Recording, Path]] = []
        self.changed = asyncio.Event()

    async def store(self, recording: Recording, path: Path) -> None:
        target = self.directory / recording.filename
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.move, path, target)
        self.stored.append((recording, target))
        self.changed.set()


class RoomRecorder:
    """Records every peer of one room while the room is recorded."""

    def __init__(
        self,
        service: SignalingService,
        room: str,
        sink: RecordingSink,
        *,
        suffix: str = ".mp4",
    ) -> None:
        self._service = service
        self._room = room
        self._sink = sink
        self._suffix = suffix
        self._workdir = Path(tempfile.mkdtemp(prefix="huiyun-recording-"))
        self._writers: dict[str, MediaFileWriter] = {}
        self._finishing: set[asyncio.Task[None]] = set()
        self._peer = RoomPeer(
            self._connect,
            PeerOptions(room=room, receive_only=True),
            frame_sink=self._on_frame,
            on_link_closed=self._on_link_closed,
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        logger.info("room=%s recorder starting", self._room)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Leave the room and hand every finished file to the sink."""
        await self._peer.stop()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        for remote_id in tuple(self._writers):
            self._on_link_closed(remote_id)
        await asyncio.gather(*self._finishing, return_exceptions=True)
        await asyncio.to_thread(shutil.rmtree, self._workdir, True)
        logger.info("room=%s recorder stopped", self._room)

    async def _connect(self) -> SignalingChannel:
        return self._service.connect_local(
            identity=PeerIdentity(
                user_id=f"recorder:{self._room}", display_name="recorder"
            ),
            admission=Admission(role=ROLE_RECORDER),
        )

    async def _run(self) -> None:
        try:
            await self._peer.run()
        except PeerFailure as exc:
            logger.warning("room=%s recorder refused: %s", self._room, exc)

    def _on_frame(self, remote_id: str, kind: str, frame: Any) -> None:
        writer = self._writers.get(remote_id)
        if writer is None:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            name = _UNSAFE.sub("_", f"{self._room}-{remote_id}-{stamp}{self._suffix}")
            writer = MediaFileWriter(self._workdir / name)
            self._writers[remote_id] = writer
        writer.feed(kind, frame)

    def _on_link_closed(self, remote_id: str) -> None:
        writer = self._writers.pop(remote_id, None)
        if writer is None:
            return
        task = asyncio.create_task(self._finish(remote_id, writer))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish(self, remote_id: str, writer: MediaFileWriter) -> None:
        try:
            written = await writer.finish()
            if written.started_at is not None and written.ended_at is not None:
                await self._sink.store(self._describe(remote_id, written), writer.path)
                logger.info("room=%s peer=%s recording stored", self._room, remote_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("room=%s peer=%s recording lost", self._room, remote_id)
        finally:
            await asyncio.to_thread(writer.path.unlink, True)

    def _describe(self, remote_id: str, written: WrittenFile) -> Recording:
        assert written.started_at is not None and written.ended_at is not None
        return Recording(
            room=self._room,
            peer_id=remote_id,
            filename=written.path.name,
            content_type=written.content_type,
            started_at=datetime.fromtimestamp(written.started_at, UTC),
            ended_at=datetime.fromtimestamp(written.ended_at, UTC),
            video_frames=written.video_frames,
            audio_frames=written.audio_frames,
        )
