"""Video writing: H.264 with the recording's audio through PyAV, and OpenCV's writer without PyAV.

Each recording is made here by PyAV: frames of known brightness and a 440 Hz tone as long as the
video, so the outputs can be checked for every frame, the codec, the audio's length and pitch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import rcr_deploy
from rcr_deploy import infer, video, video_av
from rcr_deploy.errors import RcrError
from support import KnownRunner, visible_files

FPS, RATE, TONE_HZ = 10, 16000, 440.0


def recording(path: Path, frames: int, audio: str = "aac", size: tuple[int, int] = (64, 48)) -> Path:
    """`frames` grey frames (frame i has brightness 20 i) at FPS with a tone of the same length."""
    w, h = size
    with av.open(str(path), "w") as out:
        picture = out.add_stream("mpeg4", rate=FPS)
        picture.width, picture.height, picture.pix_fmt = w, h, "yuv420p"
        sound = out.add_stream(audio, rate=RATE, layout="mono")
        for i in range(frames):
            out.mux(picture.encode(av.VideoFrame.from_ndarray(np.full((h, w, 3), 20 * i, np.uint8), format="rgb24")))
        out.mux(picture.encode(None))
        t = np.arange(RATE * frames // FPS) / RATE
        tone = av.AudioFrame.from_ndarray((0.3 * 32767 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16)[None], format="s16", layout="mono")
        tone.sample_rate, tone.pts = RATE, 0
        out.mux(sound.encode(tone))
        out.mux(sound.encode(None))
    return path


def decoded_audio(path: Path) -> tuple[str, np.ndarray, int] | None:
    """(codec, mono samples, rate) of a file's audio track, or None if it has none."""
    with av.open(str(path)) as f:
        if not f.streams.audio:
            return None
        stream = f.streams.audio[0]
        samples = np.concatenate([frame.to_ndarray().reshape(-1) for frame in f.decode(stream)])
        return stream.codec_context.name, samples.astype(np.float64), stream.rate


def video_stream(path: Path) -> tuple[str, str, int, int]:
    with av.open(str(path)) as f:
        s = f.streams.video[0]
        return s.codec_context.name, s.codec_context.pix_fmt, s.width, s.height


@pytest.fixture
def without_pyav(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import av` fails, as where PyAV is not installed; the fallback note is due again."""
    monkeypatch.setitem(sys.modules, "av", None)
    monkeypatch.delitem(sys.modules, "rcr_deploy.video_av")
    monkeypatch.delattr(rcr_deploy, "video_av")
    monkeypatch.setattr(video, "_opencv_noted", False)


@pytest.mark.parametrize("audio, written", [("aac", 12), ("aac", 5), ("pcm_s16le", 12), ("pcm_s16le", 5)])
def test_h264_keeps_every_frame_and_the_recordings_audio_cut_at_the_last_frame(tmp_path, audio, written, capsys):
    """AAC is copied packet by packet; PCM, which browsers do not play in mp4, becomes AAC. An odd
    frame size is padded to even (H.264 in yuv420p needs it); 5 of 12 frames is `--frames 5`."""
    source = recording(tmp_path / f"talk.{'mp4' if audio == 'aac' else 'mkv'}", 12, audio)
    frames = [np.full((47, 63, 3), 20 * i, np.uint8) for i in range(written)]
    writer = video.VideoWriter(tmp_path / "out" / "talk_background.mp4", FPS, (63, 47), audio_from=source)
    for frame in frames:
        writer.write(frame)
    path = writer.commit()
    assert visible_files(tmp_path / "out") == ["talk_background.mp4"] and capsys.readouterr().err == ""
    assert video_stream(path) == ("h264", "yuv420p", 64, 48)
    cap = cv2.VideoCapture(str(path))
    brightness = [cap.read()[1][:47, :63].mean() for _ in range(written)]
    assert not cap.read()[0]  # no frame more than written
    assert np.allclose(brightness, [20 * i for i in range(written)], atol=3)
    codec, samples, rate = decoded_audio(path)
    assert codec == "aac" and rate == RATE
    aac_packet = 1024 / RATE  # AAC decodes in whole packets
    assert written / FPS - 0.01 <= len(samples) / rate <= written / FPS + aac_packet + 0.01
    middle = samples[len(samples) // 4 : 3 * len(samples) // 4]
    assert np.argmax(np.abs(np.fft.rfft(middle))) * rate / len(middle) == pytest.approx(TONE_HZ, abs=5)
    assert np.sqrt(np.mean(middle**2)) > 0.1 * np.abs(middle).max() > 0  # a tone, not silence


def test_infer_video_outputs_carry_the_audio_and_the_mask_does_not(tmp_path):
    source = recording(tmp_path / "call.mp4", 6)
    out = tmp_path / "out"
    infer.infer(str(source), KnownRunner(), out, save="mask,overlay", background="#00B140", max_frames=4, progress=False)
    assert visible_files(out) == ["call_background.mp4", "call_mask.mp4", "call_overlay.mp4"]
    assert decoded_audio(out / "call_mask.mp4") is None
    for name in ("call_background.mp4", "call_overlay.mp4"):
        assert video_stream(out / name)[:2] == ("h264", "yuv420p") and video.count_frames(out / name) == 4
        codec, samples, rate = decoded_audio(out / name)
        assert codec == "aac" and len(samples) / rate == pytest.approx(0.4, abs=1024 / RATE + 0.01)


def test_without_pyav_opencv_writes_mp4v_without_audio_and_says_so_once(tmp_path, without_pyav, capsys):
    source = recording(tmp_path / "talk.mp4", 3)
    frames = [np.full((48, 64, 3), 20 * i, np.uint8) for i in range(3)]
    written = [video.write_video(tmp_path / f"talk_{mode}.mp4", frames, fps=FPS) for mode in ("overlay", "background")]
    writer = video.VideoWriter(tmp_path / "talk_with_audio.mp4", FPS, (64, 48), audio_from=source)
    writer.write(frames[0])
    written.append(writer.commit())
    err = capsys.readouterr().err
    assert err.count("note: PyAV is not installed") == 1 and "pip install av" in err and "cannot write codec" not in err
    for path in written:
        assert video_stream(path)[0] == "mpeg4"  # what OpenCV's mp4v is
        assert decoded_audio(path) is None
    assert [video.count_frames(p) for p in written] == [3, 3, 1]


@pytest.mark.parametrize("pyav", [True, False])
def test_no_codec_at_all_is_one_error_and_no_file(tmp_path, monkeypatch, request, pyav):
    if not pyav:
        request.getfixturevalue("without_pyav")
    monkeypatch.setattr(video, "FALLBACK_CODECS", (("ZZZY", ".mp4"),))
    monkeypatch.setattr(video_av, "FALLBACK_CODECS", (("ZZZY", ".mp4"),))
    with pytest.raises(RcrError, match="cannot write video here with ZZZZ, ZZZY; .*install"):
        video.VideoWriter(tmp_path / "x.mp4", 10, (32, 32), codec="ZZZZ")
    assert visible_files(tmp_path) == []



def test_unreadable_audio_source_is_one_error_and_keeps_the_earlier_file(tmp_path):
    earlier = tmp_path / "out" / "talk_overlay.mp4"
    earlier.parent.mkdir()
    earlier.write_bytes(b"earlier output")
    notes = tmp_path / "talk.mp4"
    notes.write_text("not a recording")
    with pytest.raises(RcrError, match=f"{notes}: PyAV cannot open it"):
        video.VideoWriter(earlier, FPS, (64, 48), audio_from=notes)
    assert visible_files(earlier.parent) == ["talk_overlay.mp4"] and earlier.read_bytes() == b"earlier output"
