"""Video writing through PyAV: H.264 in mp4 (yuv420p, the form browsers play), carrying the
source recording's audio.

`rcr_deploy.video.VideoWriter` uses this module where PyAV is installed and OpenCV's writer
otherwise; importing it raises ImportError without PyAV. The writer's guarantees (a hidden
partial file, the read-back before the rename) live in `VideoWriter`; this module only encodes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from rcr_deploy.errors import DataError

#: FourCCs of the OpenCV writer -> FFmpeg encoders, so that a `--codec` FourCC keeps its meaning.
FOURCC_ENCODERS = {"avc1": "h264", "x264": "h264", "mp4v": "mpeg4", "mjpg": "mjpeg"}
#: Encoders tried in order after the one asked for: H.264 where the FFmpeg build has one
#: (libx264 or openh264), else MPEG-4 Part 2, which every FFmpeg build can write.
FALLBACK_CODECS = (("h264", ".mp4"), ("mpeg4", ".mp4"))
#: Audio codecs that every browser plays in mp4; they are copied, any other is re-encoded to AAC.
BROWSER_AUDIO = ("aac", "mp3")
FIX = "reinstall PyAV (pip install --force-reinstall av; its wheels bundle FFmpeg with H.264)"


class AvEncoder:
    """Frames (and the source's audio, up to the last frame's end) into one file."""

    def __init__(self, out: av.container.OutputContainer, stream: av.video.stream.VideoStream, fps: Fraction) -> None:
        self._out, self._stream, self._fps = out, stream, fps
        self._size = (stream.height, stream.width)
        self._audio: _Audio | None = None
        self.frames = 0

    @classmethod
    def open(cls, tmp: Path, fps: float, size: tuple[int, int], codec: str, audio_from: Path | None) -> AvEncoder | None:
        """An encoder writing `tmp`, or None where this FFmpeg cannot write `codec` into its container."""
        rate = Fraction(fps).limit_denominator(1001)  # 29.97 -> 30000/1001
        try:
            out = av.open(str(tmp), "w", container_options={"movflags": "+faststart"} if tmp.suffix in (".mp4", ".mov", ".m4v") else {})
        except (av.FFmpegError, ValueError):
            return None
        try:
            found = av.Codec(codec, "w")
            if found.type != "video":
                raise ValueError(f"{codec} is not a video codec")
            # x264's veryfast preset: 8 instead of 23 ms a 640x480 frame on 2 cores, for 16 % more bytes.
            options = {"preset": "veryfast"} if found.name == "libx264" else {}
            stream = out.add_stream(codec, rate=rate, options=options)
            formats = stream.codec_context.codec.video_formats
            stream.pix_fmt = formats[0].name if formats else "yuv420p"  # yuv420p for H.264, yuvj420p for MJPEG
            # 4:2:0 chroma halves both sides, so an odd side gets a copy of its last row or column.
            stream.width, stream.height = (side + side % 2 for side in size)
            stream.codec_context.open()  # fails here, not on the first frame, if the encoder is unusable
        except (av.FFmpegError, ValueError):
            out.close()
            return None
        encoder = cls(out, stream, rate)
        try:
            if audio_from is not None:
                encoder._audio = _Audio.open(audio_from, out)
            out.start_encoding()  # creates the file now; the encoder's first packets come frames later
        except BaseException as e:
            encoder.abandon()
            if encoder._audio is not None and isinstance(e, av.FFmpegError) and not isinstance(e, OSError):
                raise DataError(f"{audio_from}: its audio cannot be encoded as AAC ({e}); convert the audio to AAC") from e
            raise
        return encoder

    def write(self, rgb: np.ndarray) -> None:
        h, w = self._size
        if rgb.shape[:2] != (h, w):
            rgb = np.pad(rgb, ((0, h - rgb.shape[0]), (0, w - rgb.shape[1]), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts, frame.time_base = self.frames, 1 / self._fps
        self._out.mux(self._stream.encode(frame))
        self.frames += 1
        if self._audio is not None:  # interleaved, so that a player streaming the file needs no seeks
            self._audio.copy_until(self.frames / self._fps)

    def close(self) -> None:
        """Flush the encoders and finish the file; raises `OSError` (a full disk) or `av.FFmpegError`."""
        self._out.mux(self._stream.encode(None))
        if self._audio is not None:
            self._audio.copy_until(self.frames / self._fps, last=True)
        self._out.close()

    def abandon(self) -> None:
        if self._audio is not None:
            self._audio.close()
        try:
            self._out.close()
        except (OSError, av.FFmpegError):
            pass  # the partial file is deleted next; its trailer does not matter


class _Audio:
    """The source's first audio stream, written up to a given time. AAC and MP3, which every
    browser plays in mp4, are copied packet by packet, so the copy may outlast the video by less
    than one packet (about 20 ms). Any other codec (PCM, Opus, ...) is decoded into a FIFO and
    re-encoded to AAC, cut at the exact sample. Times count from the source's first video frame,
    which is the output's first frame."""

    def __init__(self, source: Path, src: av.container.InputContainer, out: av.container.OutputContainer) -> None:
        self.source, self._in, self._out = source, src, out
        audio = src.streams.audio[0]
        video = src.streams.video
        self._start = float(video[0].start_time * video[0].time_base) if video and video[0].start_time is not None else 0.0
        self._packets = src.demux(audio)
        self._pending: av.Packet | None = None
        self._encoder: av.audio.stream.AudioStream | None = None
        if audio.codec_context.name in BROWSER_AUDIO:
            self._stream = out.add_stream_from_template(audio)
            return
        layout = "stereo" if audio.channels > 1 else "mono"  # AAC has no layout for some odd channel sets; mix down
        self._stream = self._encoder = out.add_stream("aac", rate=audio.rate, layout=layout)
        self._fifo = av.AudioFifo()
        self._rate = audio.rate
        self._written = 0  # samples encoded, or the output time of the first sample where the audio starts late
        self._skip: int | None = None  # samples before the first video frame, still to drop

    @classmethod
    def open(cls, source: Path, out: av.container.OutputContainer) -> _Audio | None:
        """The audio of `source`, or None if it has none."""
        try:
            src = av.open(str(source))
        except (av.FFmpegError, OSError) as e:
            raise DataError(f"{source}: PyAV cannot open it to copy its audio ({e}); check the file or convert it to mp4") from e
        if not src.streams.audio:
            src.close()
            return None
        return cls(source, src, out)

    def copy_until(self, seconds: float, last: bool = False) -> None:
        """Write the audio up to `seconds` of output time; with `last`, also flush and finish."""
        while True:
            with self._reading():
                packet = self._pending or next(self._packets, None)
            self._pending = None
            if packet is None:
                break
            if packet.dts is None:  # the demuxer's empty packet at the end, which flushes a decoder
                if self._encoder is not None:
                    self._decode(packet)
                continue
            if _seconds(packet) - self._start >= seconds:
                self._pending = packet
                break
            if self._encoder is None:
                offset = round(self._start / packet.time_base)
                packet.pts, packet.dts = _pts(packet) - offset, packet.dts - offset
                packet.stream = self._stream
                self._out.mux(packet)
                continue
            self._decode(packet)
        if self._encoder is not None:
            self._encode_until(seconds)
            if last:
                self._out.mux(self._encoder.encode(None))
        if last:
            self.close()

    def _decode(self, packet: av.Packet) -> None:
        with self._reading():
            frames = packet.decode()
        for frame in frames:
            if self._skip is None:
                lead = round((_seconds(frame) - self._start) * self._rate)
                self._skip, self._written = max(-lead, 0), max(lead, 0)
            frame.pts = None  # the FIFO checks pts for gaps; decoders' rounding would trip it
            self._fifo.write(frame)

    def _encode_until(self, seconds: float) -> None:
        drop = min(self._skip or 0, self._fifo.samples)
        if drop:
            self._fifo.read(drop)
            self._skip -= drop
        due = min(round(seconds * self._rate) - self._written, self._fifo.samples)
        if due > 0 and not self._skip:
            frame = self._fifo.read(due)
            frame.pts, frame.time_base = self._written, Fraction(1, self._rate)
            self._written += due
            self._out.mux(self._encoder.encode(frame))

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        try:
            yield
        except av.FFmpegError as e:
            raise DataError(f"{self.source}: its audio cannot be read ({e}); repair the file or convert it to mp4") from e

    def close(self) -> None:
        self._in.close()


def _pts(item: av.Packet | av.AudioFrame) -> int:
    return item.pts if item.pts is not None else item.dts


def _seconds(item: av.Packet | av.AudioFrame) -> float:
    return float(_pts(item) * item.time_base)
