"""Small randomly initialised models saved in the published checkpoint formats of the real backends.

No model weights exist offline. The loading and inference code in stages/ is written for the
real checkpoints; the tests run it on these stand-ins, which have the same file format, input
and output contract, and are small and deterministic (fixed seeds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# What insightface's recognition models (buffalo_l's w600k_r50.onnx, antelopev2's glintr100.onnx)
# look like from outside: one float32 input "input.1" of shape [batch, 3, 112, 112] holding an
# aligned RGB face scaled to [-1, 1] by the caller, one float32 output [batch, 512], not normalized.
ARCFACE_INPUT = "input.1"
ARCFACE_SIZE = 112
ARCFACE_DIM = 512
ARCFACE_OPSET = 13  # w600k_r50 is opset 11; 13 is as old as ReduceMean-with-axes-attribute needs
ARCFACE_POOL = 4  # 112 / 4: a 28x28 colour thumbnail of the aligned face


def arcface_onnx(path: Path, seed: int = 0) -> Path:
    """Write an ArcFace-format recognition model with random weights to `path` (about 5 MB).

    The network: 4x4 average pool of the aligned face (a 28x28x3 thumbnail), minus the thumbnail's
    own mean, flattened, times a fixed random Gaussian matrix to 512 dimensions.

    Why this shape and not a small random CNN: the tests need "same person" to come out more similar
    than "different people", as a trained model would. A random Gaussian linear map preserves angles
    (Johnson-Lindenstrauss: the cosine of two outputs is the cosine of the two inputs within about
    1/sqrt(512)), so the embedding's cosine similarity is the correlation of the two face thumbnails:
    high for frames of one face aligned to the template, lower for another person's face in the same
    place. Pooling makes it tolerant of the small alignment jitter between frames and of the mouth
    moving; subtracting the mean takes out global brightness, which every face shares. A deep stack of
    random ReLU layers, by contrast, maps all inputs into a narrow cone (every output looks alike),
    so it could not tell a change of identity from noise.

    No node name starts with "Sub"/"Mul" or "_minus"/"_mul" within the first eight nodes: insightface's
    ArcFaceONNX takes those to mean an mxnet model that normalizes inside, and would then feed raw
    0-255 pixels. Without them it scales input to (pixel - 127.5) / 127.5, like for w600k_r50.
    """
    rng = np.random.default_rng(seed)
    pooled = ARCFACE_SIZE // ARCFACE_POOL
    features = 3 * pooled * pooled
    weight = (rng.standard_normal((ARCFACE_DIM, features)) / np.sqrt(features)).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", [ARCFACE_INPUT], ["pooled"], name="pool",
                         kernel_shape=[ARCFACE_POOL, ARCFACE_POOL], strides=[ARCFACE_POOL, ARCFACE_POOL]),
        helper.make_node("ReduceMean", ["pooled"], ["pooled_mean"], name="thumb_mean", axes=[1, 2, 3], keepdims=1),
        helper.make_node("Sub", ["pooled", "pooled_mean"], ["centred"], name="centre"),
        helper.make_node("Flatten", ["centred"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight"], ["embedding"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "arcface_random",
        inputs=[helper.make_tensor_value_info(ARCFACE_INPUT, TensorProto.FLOAT, ["None", 3, ARCFACE_SIZE, ARCFACE_SIZE])],
        outputs=[helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["None", ARCFACE_DIM])],
        initializer=[numpy_helper.from_array(weight, "fc.weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ARCFACE_OPSET)], producer_name="talkcurate-tests")
    model.ir_version = 7  # what opset 13 needs; onnx's default (its newest) may be newer than onnxruntime reads
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def syncnet_checkpoint(path: Path, seed: int = 0, drop_batch_counters: bool = True) -> Path:
    """Write a randomly initialised SyncNet in the published `syncnet_v2.model` format to `path` (about 55 MB).

    That format is `torch.save` of the network's state dict: a dict of tensors keyed by the names of
    syncnet-python's `S` (`netcnnaud.0.weight`, ..., no `module.` prefix), which its loadParameters copies
    name by name. The class comes from syncnet-python's SyncNetModel.py, loaded from the file (as the
    stage does). The published file predates PyTorch's BatchNorm `num_batches_tracked` counters, so by
    default they are left out, like there.
    """
    import torch

    from stages.sync_models import syncnet_model_class

    torch.manual_seed(seed)
    state = syncnet_model_class()().state_dict()
    if drop_batch_counters:
        state = {name: tensor for name, tensor in state.items() if not name.endswith("num_batches_tracked")}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def whisper_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write a randomly initialised Whisper in openai-whisper's checkpoint format to `path` (about 7 MB).

    The format of OpenAI's published `.pt` files: `torch.save({"dims": ModelDimensions(...).__dict__,
    "model_state_dict": ...})` with float16 tensors, which `whisper.load_model(path)` reads. The
    dimensions are Whisper's where the input fixes them (80 mel bands, 1500 audio positions for a 30 s
    window, the English-only vocabulary of 51864 tokens) and tiny elsewhere: one layer of width 64 on
    each side. The text context is 16 positions instead of 448, because openai-whisper samples at most
    half the context per window: 8 tokens keep a random decoder, which never says end-of-text by
    itself, fast.
    """
    import torch
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(seed)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
                           n_vocab=51864, n_text_ctx=16, n_text_state=64, n_text_head=2, n_text_layer=1)
    state = {name: tensor.half() for name, tensor in Whisper(dims).state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": dims.__dict__, "model_state_dict": state}, path)
    return path
