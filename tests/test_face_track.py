"""Linking face detections into tracks: IoU, greedy matching, gap bridging and splitting, merging a
second detector's faces into the first's, and the bound on the frames a track can still reach that
lets detection stop early. Detections are built here, no model runs."""

from __future__ import annotations

import numpy as np
import pytest

from stages.face_models import Detection
from stages.face_track import FaceTracker, ReachableFrames, Track, iou, link, merge_backends

MIN_IOU, MAX_GAP = 0.3, 8


def det(x0: float, y0: float, x1: float, y1: float, score: float = 0.9) -> Detection:
    return Detection(np.array([x0, y0, x1, y1], np.float32), score)


def moving(num_frames: int, x0: float, y0: float, step: float, size: float = 0.2) -> list[Detection]:
    """A square face `size` wide whose left edge moves `step` per frame."""
    return [det(x0 + t * step, y0, x0 + t * step + size, y0 + size) for t in range(num_frames)]


def test_iou_of_simple_boxes():
    a = np.array([0.0, 0.0, 0.2, 0.2])
    assert iou(a, a) == pytest.approx(1.0)
    assert iou(a, np.array([0.1, 0.0, 0.3, 0.2])) == pytest.approx(1 / 3)  # half of each: 0.02 / 0.06
    assert iou(a, np.array([0.05, 0.05, 0.15, 0.15])) == pytest.approx(0.25)  # one inside the other
    assert iou(a, np.array([0.2, 0.0, 0.4, 0.2])) == 0.0  # touching edges
    assert iou(a, np.array([0.5, 0.5, 0.7, 0.7])) == 0.0
    assert iou(np.array([0.1, 0.1, 0.1, 0.1]), np.array([0.1, 0.1, 0.1, 0.1])) == 0.0  # no area, no division by zero
    b = np.array([0.03, 0.07, 0.31, 0.22])
    assert iou(a, b) == pytest.approx(iou(b, a))


def test_one_steady_face_is_one_track():
    faces = moving(20, 0.3, 0.3, 0.005)
    (track,) = link([[f] for f in faces], MIN_IOU, MAX_GAP)
    assert track.frames == list(range(20))
    assert all(np.array_equal(a, f.box) for a, f in zip(track.boxes, faces))
    dense = track.dense_boxes(20, MAX_GAP)
    assert dense.shape == (20, 4) and not np.isnan(dense).any()


def test_no_detections_no_tracks():
    assert link([[] for _ in range(10)], MIN_IOU, MAX_GAP) == []
    assert link([], MIN_IOU, MAX_GAP) == []


@pytest.mark.parametrize("gap", [1, 3, MAX_GAP])
def test_gaps_up_to_max_gap_are_bridged_by_interpolation(gap):
    start, end = det(0.30, 0.30, 0.50, 0.50), det(0.34, 0.32, 0.54, 0.52)  # IoU about 0.7: the same face
    detections = [[start]] * 5 + [[]] * gap + [[end]] * 5
    num_frames = len(detections)
    (track,) = link(detections, MIN_IOU, MAX_GAP)
    assert track.frames == [*range(5), *range(5 + gap, num_frames)]
    dense = track.dense_boxes(num_frames, MAX_GAP)
    assert not np.isnan(dense).any()
    for f in range(5, 5 + gap):  # straight from the last box before the gap to the first after it
        w = (f - 4) / (gap + 1)
        np.testing.assert_allclose(dense[f], (1 - w) * start.box + w * end.box, atol=1e-6)
    np.testing.assert_array_equal(dense[:5], np.tile(start.box, (5, 1)))
    np.testing.assert_array_equal(dense[5 + gap :], np.tile(end.box, (5, 1)))


def test_a_longer_gap_splits_the_track():
    face = det(0.3, 0.3, 0.5, 0.5)
    detections = [[face]] * 5 + [[]] * (MAX_GAP + 1) + [[face]] * 5
    num_frames = len(detections)
    first, second = sorted(link(detections, MIN_IOU, MAX_GAP), key=lambda t: t.frames[0])
    assert first.frames == list(range(5))
    assert second.frames == list(range(5 + MAX_GAP + 1, num_frames))
    for track in (first, second):
        present = ~np.isnan(track.dense_boxes(num_frames, MAX_GAP)[:, 0])
        assert np.flatnonzero(present).tolist() == track.frames  # the gap is not filled in


def test_dense_boxes_leave_frames_outside_the_track_empty():
    track = Track([3, 6], [np.array([0.1, 0.1, 0.3, 0.3], np.float32), np.array([0.4, 0.1, 0.6, 0.3], np.float32)])
    dense = track.dense_boxes(10, MAX_GAP)
    assert np.isnan(dense[[0, 1, 2, 7, 8, 9]]).all()
    np.testing.assert_allclose(dense[4], [0.2, 0.1, 0.4, 0.3], atol=1e-6)
    np.testing.assert_allclose(dense[5], [0.3, 0.1, 0.5, 0.3], atol=1e-6)
    assert np.isnan(track.dense_boxes(10, max_gap=1)[4:6]).all()  # a 2-frame gap with max_gap 1 stays open


def test_two_simultaneous_faces_make_two_tracks():
    left, right = moving(15, 0.1, 0.3, 0.004), moving(15, 0.6, 0.3, -0.004)
    tracks = link([[a, b] for a, b in zip(left, right)], MIN_IOU, MAX_GAP)
    assert len(tracks) == 2
    for track, faces in zip(sorted(tracks, key=lambda t: t.boxes[0][0]), (left, right)):
        assert track.frames == list(range(15))
        assert all(np.array_equal(a, f.box) for a, f in zip(track.boxes, faces))


def test_faces_listed_in_changing_order_keep_their_tracks():
    left, right = moving(10, 0.1, 0.3, 0.0), moving(10, 0.6, 0.3, 0.0)
    detections = [[a, b] if t % 2 else [b, a] for t, (a, b) in enumerate(zip(left, right))]
    tracks = link(detections, MIN_IOU, MAX_GAP)
    assert len(tracks) == 2
    for track in tracks:
        assert len({tuple(box) for box in track.boxes}) == 1  # never a box of the other face


def test_crossing_faces_with_low_overlap_do_not_merge():
    """Two faces pass each other horizontally, one a little lower: when they line up, a box of one
    overlaps the other's with IoU 0.2 < MIN_IOU, so neither track takes the other face."""
    upper = moving(30, 0.0, 0.10, 0.02, size=0.3)
    lower = moving(30, 0.6, 0.30, -0.02, size=0.3)
    assert max(iou(a.box, b.box) for a, b in zip(upper[1:], lower)) < MIN_IOU  # the premise
    tracks = link([[a, b] for a, b in zip(upper, lower)], MIN_IOU, MAX_GAP)
    assert len(tracks) == 2
    for track in tracks:
        assert track.frames == list(range(30))
        assert len({round(float(box[1]), 4) for box in track.boxes}) == 1  # its own height throughout


def test_a_jump_with_no_overlap_starts_a_new_track():
    """No gap in time, but the face on frame 5 overlaps none before it: another face, another track."""
    detections = [[det(0.1, 0.1, 0.3, 0.3)]] * 5 + [[det(0.6, 0.6, 0.8, 0.8)]] * 5
    tracks = sorted(link(detections, MIN_IOU, MAX_GAP), key=lambda t: t.frames[0])
    assert [t.frames for t in tracks] == [list(range(5)), list(range(5, 10))]


def test_the_better_overlap_continues_a_track():
    """Two candidates for one track: the one with the higher IoU takes it, the other starts its own."""
    first = det(0.30, 0.30, 0.50, 0.50)
    near, far = det(0.31, 0.30, 0.51, 0.50), det(0.38, 0.30, 0.58, 0.50)
    assert iou(first.box, far.box) >= MIN_IOU  # both could continue it
    tracks = sorted(link([[first], [far, near]], MIN_IOU, MAX_GAP), key=lambda t: t.frames[0])
    assert [t.frames for t in tracks] == [[0, 1], [1]]
    assert np.array_equal(tracks[0].boxes[1], near.box) and np.array_equal(tracks[1].boxes[0], far.box)


def test_merge_backends_drops_secondary_duplicates():
    primary = [det(0.10, 0.10, 0.30, 0.30, 0.95), det(0.60, 0.10, 0.80, 0.30, 0.9)]
    duplicate = det(0.11, 0.12, 0.31, 0.31, 0.8)  # the first face again
    slight = det(0.25, 0.25, 0.45, 0.45, 0.7)  # overlaps the first face a little (IoU below 0.3)
    new = det(0.40, 0.60, 0.50, 0.70, 0.6)  # a small face the primary missed
    assert iou(duplicate.box, primary[0].box) >= 0.3 > iou(slight.box, primary[0].box) > 0

    def same(a: list[Detection], b: list[Detection]) -> bool:
        return len(a) == len(b) and all(x is y for x, y in zip(a, b))

    assert same(merge_backends(primary, [duplicate, slight, new]), [*primary, slight, new])
    assert same(merge_backends([], [duplicate, new]), [duplicate, new])
    assert same(merge_backends(primary, []), primary)
    assert same(merge_backends(primary, [slight], same_face_iou=0.02), primary)  # a looser notion of "same face"


def reach_after_each_detection(found: dict[int, bool], picks: list[int], num_frames: int) -> list[int]:
    reach = ReachableFrames(num_frames, MAX_GAP)
    counts = []
    for n, frame in enumerate(picks):
        reach.add(frame, found[frame], picks[n + 1] if n + 1 < len(picks) else None)
        counts.append(reach.count)
    return counts


def test_reachable_frames_of_a_hand_made_schedule():
    """20 frames, detection on every 2nd (and the last): faces on 0-4, none on 6-14, one on 16, none
    after. Frames 0-4 are covered; 5-13 could be bridged to a face on 14 until the detection on 12
    finds none, as 14 is more than MAX_GAP + 1 frames after the face on 4 (then 14-15 on 14); 16 is
    covered, 17-19 out of reach once the last frame shows no face."""
    picks = FaceTracker(detect_every=2).detection_frames(20)
    found = {f: f <= 4 or f == 16 for f in picks}
    counts = reach_after_each_detection(found, picks, 20)
    assert dict(zip(picks, counts)) == {0: 20, 2: 20, 4: 20, 6: 20, 8: 20, 10: 20, 12: 11, 14: 9, 16: 9, 18: 9, 19: 6}
    assert counts[-1] == 6 == (~np.isnan(Track([0, 2, 4, 16], [np.zeros(4)] * 4).dense_boxes(20, MAX_GAP)[:, 0])).sum()


@pytest.mark.parametrize("seed", range(6))
def test_no_track_covers_more_frames_than_are_reachable(seed):
    """Random faces in two places on random frames: after every detection frame, the count is at
    least the frames each track of the full pass covers (the bound early stopping relies on), and
    after the last it is exactly the frames covered when every face is bridged to its neighbours."""
    rng = np.random.default_rng(seed)
    num_frames = int(rng.integers(20, 90))
    detect_every = int(rng.integers(1, 4))
    picks = FaceTracker(detect_every=detect_every).detection_frames(num_frames)
    places = [det(0.1, 0.1, 0.3, 0.3), det(0.6, 0.6, 0.8, 0.8)]
    visible = rng.random((num_frames, 2)) < rng.uniform(0.2, 0.95)
    visible[rng.integers(0, num_frames, 2)] = False  # a long gap now and then
    detections = [[places[i] for i in range(2) if visible[f, i]] if f in picks else [] for f in range(num_frames)]
    counts = reach_after_each_detection({f: bool(detections[f]) for f in picks}, picks, num_frames)
    covered = [(~np.isnan(t.dense_boxes(num_frames, MAX_GAP)[:, 0])).sum() for t in link(detections, MIN_IOU, MAX_GAP)]
    assert all(count >= max(covered, default=0) for count in counts)
    assert all(a >= b for a, b in zip(counts, counts[1:]))  # it only falls
    union = [f for f in picks if detections[f]]
    bridged = Track(union, [np.zeros(4)] * len(union)).dense_boxes(num_frames, MAX_GAP) if union else None
    assert counts[-1] == (0 if bridged is None else (~np.isnan(bridged[:, 0])).sum())
