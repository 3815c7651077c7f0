"""Writing received audio and video to a file, encoding in a worker thread.

Frames are handed over from the event loop without blocking it; a thread
encodes (H.264 and AAC in MP4, or VP8 and Opus in WebM/Matroska) and muxes.
Timestamps are rebuilt from arrival times and the frames' own clocks, so the
file lasts as long as the media that arrived.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

logger = logging.getLogger(__name__)

VIDEO_TIME_BASE = Fraction(1, 90000)
AUDIO_RATE = 48000
# how long to wait for the other kind of media before writing the header
_SETUP_SECONDS = 1.0
_QUEUE_FRAMES = 600
_CODECS = {
    ".mp4": ("libx264", "aac", "video/mp4"),
    ".mkv": ("libvpx", "libopus", "video/x-matroska"),
    ".webm": ("libvpx", "libopus", "video/webm"),
}


@dataclass(frozen=True, kw_only=True)
class WrittenFile:
    """What the writer produced."""

    path: Path
    content_type: str
    started_at: float | None  # unix time of the first frame written
    ended_at: float | None  # unix time of the last frame written
    video_frames: int
    audio_frames: int
    dropped_frames: int


def content_type_for(path: Path) -> str:
    return _codecs_for(path)[2]


def _codecs_for(path: Path) -> tuple[str, str, str]:
    try:
        return _CODECS[path.suffix.lower()]
    except KeyError:
        raise ValueError(
            f"recording file {path.name!r} must end in .mp4, .mkv or .webm"
        ) from None


class MediaFileWriter:
    """Feed frames from the event loop; ``finish()`` closes the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._codecs = _codecs_for(path)
        self._queue: queue.Queue[tuple[str, Any, float] | None] = queue.Queue(
            _QUEUE_FRAMES
        )
        self._dropped = 0
        self._done: asyncio.Future[WrittenFile] = (
            asyncio.get_running_loop().create_future()
        )
        self._thread = threading.Thread(
            target=self._work, name=f"record-{path.name}", daemon=True
        )
        self._thread.start()

    def feed(self, kind: str, frame: Any) -> None:
        """Hand one decoded frame to the encoder; dropped if it lags."""
        try:
            self._queue.put_nowait((kind, frame, time.time()))
        except queue.Full:
            self._dropped += 1

    async def finish(self) -> WrittenFile:
        """Flush the encoders, close the file and return what was written."""
        await asyncio.to_thread(self._queue.put, None)
        return await self._done

    def _work(self) -> None:
        loop = self._done.get_loop()
        try:
            encoder = _Encoder(self.path, self._codecs).run(self._queue)
        except Exception as exc:
            logger.exception("recording failed file=%s", self.path.name)
            loop.call_soon_threadsafe(_settle, self._done, None, exc)
            return
        result = WrittenFile(
            path=self.path,
            content_type=self._codecs[2],
            started_at=encoder.started_at,
            ended_at=encoder.ended_at,
            video_frames=encoder.video_frames,
            audio_frames=encoder.audio_frames,
            dropped_frames=self._dropped,
        )
        loop.call_soon_threadsafe(_settle, self._done, result, None)


def _settle(
    future: asyncio.Future[WrittenFile],
    result: WrittenFile | None,
    error: BaseException | None,
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)


class _Track:
    """One output stream and the clock mapping for its input frames."""

    def __init__(self, stream: Any, offset_seconds: float, first_pts: Any) -> None:
        self.stream = stream
        self.offset = offset_seconds
        self.first_pts = first_pts
        self.last_pts = -1

    def place(self, frame: Any, time_base: Fraction) -> int:
        """Output pts of a frame: its own clock, shifted to the file start."""
        if frame.pts is None or frame.time_base is None or self.first_pts is None:
            seconds = self.offset
        else:
            seconds = self.offset + float(
                (frame.pts - self.first_pts) * frame.time_base
            )
        pts = max(round(seconds / time_base), self.last_pts + 1)
        self.last_pts = pts
        return pts


class _Encoder:
    """Runs in the worker thread: buffers the first frames, then encodes."""

    def __init__(self, path: Path, codecs: tuple[str, str, str]) -> None:
        self._path = path
        self._video_codec, self._audio_codec, _ = codecs
        self._pending: list[tuple[str, Any, float]] = []
        self._container: Any = None
        self._tracks: dict[str, _Track] = {}
        self._size: tuple[int, int] = (0, 0)
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.video_frames = 0
        self.audio_frames = 0

    def run(self, frames: queue.Queue[tuple[str, Any, float] | None]) -> _Encoder:
        try:
            while (item := frames.get()) is not None:
                self._take(item)
            if self._container is None and self._pending:
                self._open()
        finally:
            self._close()
        return self

    def _take(self, item: tuple[str, Any, float]) -> None:
        if self._container is not None:
            self._write(item)
            return
        self._pending.append(item)
        kinds = {kind for kind, _, _ in self._pending}
        waited = item[2] - self._pending[0][2]
        if kinds == {"audio", "video"} or waited >= _SETUP_SECONDS:
            self._open()

    def _open(self) -> None:
        self._container = av.open(str(self._path), mode="w")
        firsts: dict[str, tuple[Any, float]] = {}
        for kind, frame, arrived in self._pending:
            firsts.setdefault(kind, (frame, arrived))
        start = min(arrived for _, arrived in firsts.values())
        self.started_at = start
        for kind, (frame, arrived) in firsts.items():
            stream = self._add_stream(kind, frame)
            self._tracks[kind] = _Track(stream, arrived - start, frame.pts)
        pending, self._pending = self._pending, []
        for item in pending:
            self._write(item)

    def _add_stream(self, kind: str, frame: Any) -> Any:
        if kind == "video":
            self._size = (
                frame.width - frame.width % 2,
                frame.height - frame.height % 2,
            )
            stream = self._container.add_stream(self._video_codec, rate=30)
            stream.width, stream.height = self._size
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = VIDEO_TIME_BASE
            if self._video_codec == "libx264":
                stream.codec_context.options = {"preset": "veryfast"}
            return stream
        stream = self._container.add_stream(self._audio_codec, rate=AUDIO_RATE)
        stream.codec_context.time_base = Fraction(1, AUDIO_RATE)
        return stream

    def _write(self, item: tuple[str, Any, float]) -> None:
        kind, frame, arrived = item
        track = self._tracks.get(kind)
        if track is None:
            return  # this kind began after the file header was written
        if kind == "video":
            frame = self._fit(frame)
            frame.pts = track.place(frame, VIDEO_TIME_BASE)
            frame.time_base = VIDEO_TIME_BASE
            self.video_frames += 1
        else:
            frame.pts = track.place(frame, Fraction(1, AUDIO_RATE))
            frame.time_base = Fraction(1, AUDIO_RATE)
            self.audio_frames += 1
        self._container.mux(track.stream.encode(frame))
        self.ended_at = arrived

    def _fit(self, frame: Any) -> Any:
        width, height = self._size
        if (
            frame.width == width
            and frame.height == height
            and frame.format.name == "yuv420p"
        ):
            return frame
        fitted = frame.reformat(width=width, height=height, format="yuv420p")
        fitted.pts, fitted.time_base = frame.pts, frame.time_base
        return fitted

    def _close(self) -> None:
        if self._container is None:
            return
        for track in self._tracks.values():
            self._container.mux(track.stream.encode(None))
        self._container.close()
