"""Generated media for test calls: a moving test pattern and a tone."""

from __future__ import annotations

import asyncio
import fractions
import math
import struct
import time

import av
from aiortc import MediaStreamTrack, VideoStreamTrack
from aiortc.mediastreams import MediaStreamError

AUDIO_RATE = 48000
AUDIO_PTIME = 0.020  # seconds of audio per frame, as WebRTC sends it
_BAR_WIDTH = 32


class PatternVideoTrack(VideoStreamTrack):
    """A grey ramp with a white bar sweeping across it, 30 frames a second."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        super().__init__()
        if width % 2 or height % 2 or width < 2 * _BAR_WIDTH:
            raise ValueError(
                f"test pattern size must be even and wide: {width}x{height}"
            )
        self._width = width
        self._height = height
        self._ramp = bytes(16 + (200 * x) // width for x in range(width))
        self._chroma = bytes([128]) * ((width // 2) * (height // 2))
        self._count = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame(self._width, self._height, "yuv420p")
        frame.planes[0].update(self._luma())
        frame.planes[1].update(self._chroma)
        frame.planes[2].update(self._chroma)
        frame.pts = pts
        frame.time_base = time_base
        self._count += 1
        return frame

    def _luma(self) -> bytes:
        x = (self._count * 4) % (self._width - _BAR_WIDTH)
        row = self._ramp[:x] + b"\xeb" * _BAR_WIDTH + self._ramp[x + _BAR_WIDTH :]
        return row * self._height


class ToneAudioTrack(MediaStreamTrack):
    """A quiet 440 Hz tone, mono 48 kHz, in 20 ms frames paced in real time."""

    kind = "audio"

    def __init__(self, frequency: float = 440.0) -> None:
        super().__init__()
        self._samples = int(AUDIO_RATE * AUDIO_PTIME)
        # one second holds a whole number of periods for integer frequencies,
        # so frames are cut from one precomputed second
        self._second = _tone_second(int(frequency))
        self._sent = 0
        self._start: float | None = None
        self._time_base = fractions.Fraction(1, AUDIO_RATE)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._pace()
        frame = av.AudioFrame(format="s16", layout="mono", samples=self._samples)
        start = 2 * (self._sent % AUDIO_RATE)
        frame.planes[0].update(self._second[start : start + 2 * self._samples])
        frame.pts = self._sent
        frame.sample_rate = AUDIO_RATE
        frame.time_base = self._time_base
        self._sent += self._samples
        return frame

    async def _pace(self) -> None:
        if self._start is None:
            self._start = time.monotonic()
            return
        due = self._start + self._sent / AUDIO_RATE
        await asyncio.sleep(max(0.0, due - time.monotonic()))


def _tone_second(frequency: int) -> bytes:
    step = 2 * math.pi * frequency / AUDIO_RATE
    values = [int(3000 * math.sin(step * i)) for i in range(AUDIO_RATE)]
    return struct.pack(f"<{AUDIO_RATE}h", *values)
