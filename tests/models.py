"""Small randomly initialised models saved in the published checkpoint formats of the real backends.

No model weights exist offline. The loading and inference code in stages/ is written for the
real checkpoints; the tests run it on these stand-ins, which have the same file format, input
and output contract, and are small and deterministic (fixed seeds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
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
        helper.make_node(
            "AveragePool",
            [ARCFACE_INPUT],
            ["pooled"],
            name="pool",
            kernel_shape=[ARCFACE_POOL, ARCFACE_POOL],
            strides=[ARCFACE_POOL, ARCFACE_POOL],
        ),
        helper.make_node("ReduceMean", ["pooled"], ["pooled_mean"], name="thumb_mean", axes=[1, 2, 3], keepdims=1),
        helper.make_node("Sub", ["pooled", "pooled_mean"], ["centred"], name="centre"),
        helper.make_node("Flatten", ["centred"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight"], ["embedding"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "arcface_random",
        inputs=[
            helper.make_tensor_value_info(ARCFACE_INPUT, TensorProto.FLOAT, ["None", 3, ARCFACE_SIZE, ARCFACE_SIZE])
        ],
        outputs=[helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["None", ARCFACE_DIM])],
        initializer=[numpy_helper.from_array(weight, "fc.weight")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ARCFACE_OPSET)], producer_name="talkcurate-tests"
    )
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

    from stages.sync_models import syncnet_model_class

    torch.manual_seed(seed)
    state = syncnet_model_class()().state_dict()
    if drop_batch_counters:
        state = {name: tensor for name, tensor in state.items() if not name.endswith("num_batches_tracked")}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


class TinyInception(torch.nn.Module):
    """What NVlabs' `inception-2015-12-05.pt` looks like from outside: `forward(img, return_features)`
    on uint8 RGB (N, 3, H, W) images of any size, resized inside to 299 x 299 (bilinear) and scaled
    to [-1, 1], giving 2048 pool features or 1008 logits. Inside: an 8 x 8 average-pool thumbnail
    times a fixed random matrix, then ReLU."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.pool_weight = torch.nn.Parameter(torch.randn(2048, 3 * 8 * 8, generator=generator) / 14)
        self.logits = torch.nn.Linear(2048, 1008)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.interpolate(img.to(torch.float32), size=[299, 299], mode="bilinear", align_corners=False)
        x = F.adaptive_avg_pool2d((x - 128) / 128, [8, 8]).flatten(1)
        features = torch.relu(x @ self.pool_weight.t())
        if return_features:
            return features
        return self.logits(features)


class TinyI3D(torch.nn.Module):
    """What StyleGAN-V's `i3d_torchscript.pt` looks like from outside: `forward(x, rescale, resize,
    return_features)` on (N, 3, T, H, W) clips; `rescale` takes 0-255 values to [-1, 1], `resize`
    resizes every frame to 224 x 224 (trilinear, T kept), as the original FVD code's preprocessing;
    400 logits (`return_features`) or their softmax. Inside: a (2, 4, 4) average-pool thumbnail of
    the clip times a fixed random matrix."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(400, 3 * 2 * 4 * 4, generator=generator))

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        x = x.to(torch.float32)
        if rescale:
            x = x * (2.0 / 255.0) - 1.0
        if resize:
            x = F.interpolate(x, size=[x.shape[2], 224, 224], mode="trilinear", align_corners=False)
        logits = F.adaptive_avg_pool3d(x, [2, 4, 4]).flatten(1) @ self.weight.t()
        if return_features:
            return logits
        return torch.softmax(logits, dim=1)


def torchscript_file(module: torch.nn.Module, path: Path) -> Path:
    """Save `module` scripted, as a TorchScript archive (`torch.jit.save`): the published format of
    `inception-2015-12-05.pt` and `i3d_torchscript.pt`, which `torch.jit.load` reads without the class."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(module.eval()), str(path))
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

    openai-whisper leaves the decoder's positional embedding uninitialised (`torch.empty`: whatever the
    memory held, NaN at times), since real weights always replace it; here it gets small Gaussian
    values, so the file depends on the seed alone.
    """
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(seed)
    dims = ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=64,
        n_audio_head=2,
        n_audio_layer=1,
        n_vocab=51864,
        n_text_ctx=16,
        n_text_state=64,
        n_text_head=2,
        n_text_layer=1,
    )
    model = Whisper(dims)
    torch.nn.init.normal_(model.decoder.positional_embedding, std=0.02)
    state = {name: tensor.half() for name, tensor in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": dims.__dict__, "model_state_dict": state}, path)
    return path


# Qwen's special tokens, in the order of their ids in the published tokenizer (151643 onwards);
# here they are the first ids of a small vocabulary.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def qwen_vl_folder(path: Path, model_type: str = "qwen2_5_vl", seed: int = 0) -> Path:
    """Write a randomly initialised Qwen2.5-VL (or, with `model_type="qwen2_vl"`, Qwen2-VL) in the
    Hugging Face layout to the folder `path` (about 1 MB): config.json, generation_config.json and
    model.safetensors, tokenizer.json and tokenizer_config.json, preprocessor_config.json, as
    `AutoModelForImageTextToText`, `AutoTokenizer` and `AutoImageProcessor` read them from a published folder.

    The architecture is the published one (a vision transformer on 14 px patches merged 2x2 into the
    language model's tokens, 3D rotary positions split into temporal, height and width sections;
    Qwen2.5-VL's vision blocks attend in windows) at tiny widths and two layers each. No Qwen
    tokenizer exists offline, so the tokenizer is a byte-level BPE like Qwen's, trained here on the
    captioning prompt (a vocabulary of about 350 tokens), with Qwen's special tokens; the model's token
    ids point at them. The image processor is Qwen2-VL's (both models use it) with its published defaults.
    """
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as token_models
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from stages.caption_models import DEFAULT_PROMPT

    bpe = Tokenizer(token_models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(
        [DEFAULT_PROMPT, "A close-up of one person speaking, facing the camera; blue background."], trainer
    )
    ids = {token: bpe.token_to_id(token) for token in QWEN_SPECIAL_TOKENS}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    text = dict(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 3, 3],
        },  # 16-dim heads: 8 frequencies
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    tokens = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    patches = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    if model_type == "qwen2_5_vl":
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            fullatt_block_indexes=[1],
            window_size=56,
        )
        model_class, config = (
            Qwen2_5_VLForConditionalGeneration,
            Qwen2_5_VLConfig(text_config=text, vision_config=vision | patches, **tokens),
        )
    elif model_type == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)
        model_class, config = (
            Qwen2VLForConditionalGeneration,
            Qwen2VLConfig(text_config=text, vision_config=vision | patches, **tokens),
        )
    else:
        raise ValueError(f"unknown Qwen VL model type {model_type!r}")
    torch.manual_seed(seed)
    path = Path(path)
    model_class(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    Qwen2VLImageProcessorPil().save_pretrained(path)
    return path
