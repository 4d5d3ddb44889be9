#!/usr/bin/env python3
"""Reference recorder: runs the real Hugging Face transformers Qwen2.5-VL and records every module call.

Three subcommands:

  make-tiny   build the tiny config (docs/design.md §8.3, small vocabulary), randomise every weight
              (norms 1 + 0.1*randn, non-zero biases) and save a Hugging Face checkpoint
              (config.json + model.safetensors).
  record      load any Qwen2.5-VL checkpoint directory, run one forward pass on the given inputs
              (image files or synthetic images, token ids before/after) with eager attention, and write
              every call of every hooked module class and wrapped free function to one HDF5 file in the
              qvl.recording schema (docs/design.md §3), in execution (pre-)order.
  rewrite     write a recording made by an older version of this script again in the current format
              (checksummed datasets, the call count), every tensor and attribute unchanged.

In a bfloat16 recording each call also stores `outputs_fp32`: the output of the float32 copy of the same
module (weights = the bf16 weights upcast) on the same inputs upcast to float32. That is HF's own noise
floor, against which our bf16 error is judged.

Determinism: one intra-op thread, seeded generators, no wall-clock data in tensors. The same versions and
seed give bit-identical tensors (tests/golden/test_recorder_determinism checks this).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import dataclasses
import json
import os
import platform
import sys
import tempfile

import h5py
import numpy as np
import torch

import transformers
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.cache_utils import Cache
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as hf_mod

FORMAT_VERSION = 2  # 2: every dataset checksummed (see write_dataset), root attribute num_calls

# Module classes hooked (docs/design.md §3, with the names of the pinned transformers 5.x).
HOOKED_CLASSES = {
    "Qwen2_5_VLRMSNorm",
    "Qwen2_5_VLMLP",
    "Qwen2MLP",
    "Qwen2_5_VisionPatchEmbed",
    "Qwen2_5_VLVisionRotaryEmbedding",
    "Qwen2_5_VLVisionAttention",
    "Qwen2_5_VLVisionBlock",
    "Qwen2_5_VLPatchMerger",
    "Qwen2_5_VisionTransformerPretrainedModel",
    "Qwen2_5_VLRotaryEmbedding",
    "Qwen2_5_VLAttention",
    "Qwen2_5_VLDecoderLayer",
    "Qwen2_5_VLTextModel",
    "Qwen2_5_VLModel",
    "Qwen2_5_VLForConditionalGeneration",
}
# Plain torch modules hooked by path (their class names are generic).
HOOKED_PATHS = {"lm_head", "model.language_model.embed_tokens"}
# Free functions of the modeling module, wrapped by name (resolved through module globals at call time).
WRAPPED_FUNCTIONS = [
    "get_vision_position_ids",
    "get_vision_attention_seqlens",
    "get_vision_window_index",
    "apply_rotary_pos_emb_vision",
    "apply_rotary_pos_emb",
]

# The tiny config: docs/design.md §8.3, with a 256-token vocabulary and the special ids below it.
TINY_CONFIG = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 4096,
    "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "attention_dropout": 0.0,
    "bos_token_id": 248,
    "eos_token_id": 249,
    "vision_start_token_id": 250,
    "vision_end_token_id": 251,
    "image_token_id": 252,
    "video_token_id": 253,
    "vision_config": {
        "depth": 4,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_heads": 4,
        "hidden_act": "silu",
        "in_channels": 3,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1, 3],
        "out_hidden_size": 64,
        "tokens_per_second": 2,
    },
}
# Presets for make-model: the tiny model, and the tiny text model with a real-size vision tower of two
# blocks (one windowed, one full) at the real dimensions: hidden 1280, 16 heads of 80, intermediate 3420.
PRESETS = {
    "tiny": {},
    # Fields the tiny model fixes, varied: spatial_merge_size 3 (merged tokens of 3x3 patches; window_size 126
    # = 3 merged tokens of 42 pixels) and multi-head attention (4 KV heads: GQA ratio 1 instead of 2).
    "merge3-mha": {"num_key_value_heads": 4, "vision_config": {"spatial_merge_size": 3, "window_size": 126}},
    "vision-real": {"vision_config": {"depth": 2, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                                      "window_size": 112, "fullatt_block_indexes": [1], "out_hidden_size": 64}},
}
DEFAULT_TEXT_BEFORE = [17, 42, 99]
DEFAULT_TEXT_AFTER = [23, 77, 128, 5]


def log(msg: str) -> None:
    print(f"[record] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# --modules: record a selection of calls
# ---------------------------------------------------------------------------------------------------

def expand_braces(pattern: str) -> list[str]:
    """`a.{0,7,31}` -> a.0, a.7, a.31; `a.{0..3}` -> a.0 .. a.3; several groups multiply; no group: itself."""
    start = pattern.find("{")
    if start < 0:
        if "}" in pattern:
            raise SystemExit(f"record: --modules '{pattern}': unbalanced '}}'")
        return [pattern]
    end = pattern.find("}", start)
    if end < 0:
        raise SystemExit(f"record: --modules '{pattern}': unbalanced '{{'")
    body, head, tail = pattern[start + 1:end], pattern[:start], pattern[end + 1:]
    options = []
    for part in body.split(","):
        part = part.strip()
        if ".." in part:
            a, b = part.split("..", 1)
            if not (a.isdigit() and b.isdigit()) or int(a) > int(b):
                raise SystemExit(f"record: --modules '{pattern}': bad range '{part}' (expected like 0..3)")
            options += [str(i) for i in range(int(a), int(b) + 1)]
        elif part:
            options.append(part)
        else:
            raise SystemExit(f"record: --modules '{pattern}': empty choice in '{{{body}}}'")
    return [head + o + rest for o in options for rest in expand_braces(tail)]


class ModuleSelection:
    """Which calls `record --modules` stores: a call whose module path is a selected path or lies below one
    (a selected block brings its norms, attention, MLP and the free functions called inside). Patterns are
    brace-expanded, then matched with fnmatch (`*` within a path). The top-level call is always stored."""

    def __init__(self, patterns: list[str]):
        import fnmatch

        self._fnmatch = fnmatch.fnmatchcase
        self.patterns = [p for pat in patterns for p in expand_braces(pat)]
        self.matched: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def selects(self, path: str) -> bool:
        if not self.patterns or path == "":
            return True
        for p in self.patterns:
            if self._fnmatch(path, p) or self._fnmatch(path, p + ".*"):
                self.matched.add(p)
                return True
        return False

    def check_model(self, model) -> None:
        """Every expanded pattern must name a module of the model (a typo would silently record nothing)."""
        names = [n for n, _ in model.named_modules() if n]
        missing = [p for p in self.patterns if not any(self._fnmatch(n, p) for n in names)]
        if missing:
            raise SystemExit("record: --modules: no module of the model matches " + ", ".join(missing)
                             + " (module paths look like model.visual.blocks.0, model.language_model.layers.3, lm_head)")


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------------------------
# make-tiny
# ---------------------------------------------------------------------------------------------------

def randomize_weights(model: torch.nn.Module, seed: int) -> None:
    """HF init sets norms to 1 and biases to 0, which hides norm and bias bugs: replace every weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            is_norm = any(s in name for s in ("norm", "ln_q")) and leaf == "weight" and p.dim() == 1
            if is_norm:
                new = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            elif leaf == "bias":
                new = 0.1 * torch.randn(p.shape, generator=g)
            elif "embed_tokens" in name:
                new = 0.5 * torch.randn(p.shape, generator=g)
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                new = torch.randn(p.shape, generator=g) / (fan_in**0.5)
            p.copy_(new.to(p.dtype))


def cmd_make_tiny(args: argparse.Namespace) -> None:
    cfg = json.loads(json.dumps(TINY_CONFIG))
    for key, val in PRESETS[args.preset].items():
        cfg[key].update(val) if isinstance(val, dict) else cfg.__setitem__(key, val)
    if args.tie:
        cfg["tie_word_embeddings"] = True
    config = Qwen2_5_VLConfig(**cfg)
    torch.manual_seed(args.seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    randomize_weights(model, args.seed)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(out))
    model.save_pretrained(tmp, safe_serialization=True)
    if os.path.isdir(out):
        for f in os.listdir(out):
            os.remove(os.path.join(out, f))
        os.rmdir(out)
    os.rename(tmp, out)
    n = sum(p.numel() for p in model.parameters())
    log(f"wrote {out} ({n} parameters, seed {args.seed})")


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------

def synthetic_image(height: int, width: int, seed: int):
    """A deterministic RGB image: smooth gradients plus seeded noise, so patches differ."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    base = np.stack([yy, xx, 0.5 * (yy + xx)], axis=-1) * 180.0
    noise = rng.integers(0, 75, size=(height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), mode="RGB")


def load_image(spec: str, index: int):
    """`synthetic:HxW[:seed]` or a path to an image file."""
    from PIL import Image

    if spec.startswith("synthetic:"):
        parts = spec.split(":")
        h, w = (int(v) for v in parts[1].lower().split("x"))
        seed = int(parts[2]) if len(parts) > 2 else index
        return synthetic_image(h, w, seed)
    if not os.path.isfile(spec):
        raise SystemExit(f"record: image file '{spec}' does not exist")
    return Image.open(spec).convert("RGB")


def load_video(spec: str, index: int):
    """`synthetic:TxHxW[:seed]` (T frames of different content) or a directory of frame images (sorted).
    Returns a uint8 array [T, H, W, 3]."""
    from PIL import Image

    if spec.startswith("synthetic:"):
        parts = spec.split(":")
        t, h, w = (int(v) for v in parts[1].lower().split("x"))
        seed = int(parts[2]) if len(parts) > 2 else 100 + index
        return np.stack([np.asarray(synthetic_image(h, w, seed * 1000 + f)) for f in range(t)])
    if not os.path.isdir(spec):
        raise SystemExit(f"record: video '{spec}' is neither synthetic:TxHxW nor a directory of frames")
    files = sorted(f for f in os.listdir(spec) if f.lower().endswith((".png", ".jpg", ".jpeg", ".bmp")))
    if not files:
        raise SystemExit(f"record: video directory '{spec}' holds no .png/.jpg frames")
    return np.stack([np.asarray(Image.open(os.path.join(spec, f)).convert("RGB")) for f in files])


def patch_kwargs(vision_config) -> dict:
    """The processor's patch geometry from the model's vision config (merge 3 needs 42-pixel units, not 28).
    None: the processor's own defaults (patch 14, temporal 2, merge 2, as the tiny model)."""
    if vision_config is None:
        return {}
    return {"patch_size": vision_config.patch_size, "temporal_patch_size": vision_config.temporal_patch_size,
            "merge_size": vision_config.spatial_merge_size}


def video_processor_for(model_dir: str, vision_config=None, min_pixels: int = 3136):
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    if os.path.isfile(os.path.join(model_dir, "video_preprocessor_config.json")):
        return Qwen2VLVideoProcessor.from_pretrained(model_dir)
    # Same pixel bounds as the image processor default below, so small synthetic frames keep their size.
    return Qwen2VLVideoProcessor(size={"shortest_edge": min_pixels, "longest_edge": 12845056},
                                 **patch_kwargs(vision_config))


def image_processor_for(model_dir: str, vision_config=None, min_pixels: int = 3136):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if os.path.isfile(os.path.join(model_dir, "preprocessor_config.json")):
        return Qwen2VLImageProcessorPil.from_pretrained(model_dir)
    # The hub preprocessor values (docs/design.md §8.4): min 56*56, max 16384*28*28 pixels. A smaller
    # min_pixels (--min-pixels) lets a 28x28 image keep its size: one merged token.
    return Qwen2VLImageProcessorPil(size={"shortest_edge": min_pixels, "longest_edge": 12845056},
                                    **patch_kwargs(vision_config))


def parse_ids(text: str) -> list[int]:
    text = text.replace(",", " ").strip()
    return [int(t) for t in text.split()] if text else []


# ---------------------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------------------

def torch_dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


@dataclasses.dataclass
class Call:
    seq: int
    module_path: str
    module_class: str
    call_index: int
    parent: int
    settings: dict
    inputs: dict
    outputs: object = None
    outputs_fp32: object = None
    outputs_fp32_chain: object = None
    has_outputs: bool = False
    stored: bool = True  # False: outside `record --modules`; it ran but is not written


def cache_layers(cache):
    """(keys, values) per layer of a transformers Cache (5.x: cache.layers[i].keys/.values); None for a
    layer not yet written (lazy initialisation)."""
    out = []
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", False) or layer.keys is None:
            out.append((None, None))
        else:
            out.append((layer.keys, layer.values))
    return out


def snapshot(value):
    """Detach and clone every tensor inside a nested value (inputs may be mutated later). A KV cache is
    mutated in place by every attention call, so it is snapshotted by value: a dict of type DynamicCache
    with `keys` and `values`, one entry per layer (None where the layer is still empty)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").clone()
    if isinstance(value, Cache):
        kv = cache_layers(value)
        return {"__type__": type(value).__name__, "keys": [snapshot(k) for k, _ in kv],
                "values": [snapshot(v) for _, v in kv]}
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(snapshot(v) for v in value)
    if isinstance(value, list):
        return [snapshot(v) for v in value]
    if isinstance(value, transformers.utils.ModelOutput):  # a dict subclass that hides None fields
        return {"__type__": type(value).__name__,
                **{f.name: snapshot(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    return value


def upcast(value):
    """Floating tensors to float32 (the shadow call's inputs); everything else unchanged. A KV cache
    becomes a float32 deep copy: the shadow module appends to its own cache, never to the real one."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, Cache):
        shadow = copy.deepcopy(value)
        for layer in shadow.layers:
            if getattr(layer, "is_initialized", False) and layer.keys is not None:
                layer.keys, layer.values = layer.keys.float(), layer.values.float()
                layer.dtype = torch.float32
        return shadow
    if isinstance(value, tuple):
        return tuple(upcast(v) for v in value)
    if isinstance(value, list):
        return [upcast(v) for v in value]
    if isinstance(value, dict):
        return {k: upcast(v) for k, v in value.items()}
    return value


def has_float_tensor(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_floating_point()
    if isinstance(value, (tuple, list)):
        return any(has_float_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(has_float_tensor(v) for v in value.values())
    if isinstance(value, transformers.utils.ModelOutput):
        return any(has_float_tensor(v) for v in value.values())
    return False


class Recorder:
    def __init__(self, model, shadow_model=None, fullatt=(), selection=None, shadow_modules=None):
        self.model = model
        self.shadow_modules = dict(shadow_model.named_modules()) if shadow_model is not None else shadow_modules
        # --modules: calls outside the selection run but are not stored (no snapshot, no shadow call).
        self.selection = selection
        self.calls: list[Call] = []
        self.stack: list[int] = []
        self.counts: dict[str, int] = {}
        self.suspended = 0
        self.fullatt = set(fullatt)
        self.handles = []
        self.originals = {}
        # While recording transformers' generate: every call gets settings["generate_step"], 0 for the
        # prefill (and generate's own get_rope_index before it), k for the k-th decode step.
        self.generating = False
        self.top_level_forwards = 0

    @contextlib.contextmanager
    def suspend(self):
        self.suspended += 1
        try:
            yield
        finally:
            self.suspended -= 1

    def begin(self, path: str, cls: str, inputs: dict, settings: dict) -> Call:
        if self.generating:
            if not self.stack and cls == "Qwen2_5_VLForConditionalGeneration":
                self.top_level_forwards += 1
            settings = {**settings, "generate_step": max(0, self.top_level_forwards - 1)}
        idx = self.counts.get(path, 0)
        self.counts[path] = idx + 1
        stored = self.selection is None or self.selection.selects(path)
        call = Call(seq=len(self.calls), module_path=path, module_class=cls, call_index=idx,
                    parent=self.stack[-1] if self.stack else -1, settings=settings,
                    inputs=snapshot(inputs) if stored else None, stored=stored)
        self.calls.append(call)
        self.stack.append(call.seq)
        return call

    def end(self, call: Call, output, shadow_fn=None) -> None:
        popped = self.stack.pop()
        assert popped == call.seq, "recorder call stack out of order"
        if not getattr(call, "stored", True):
            return
        call.outputs = snapshot(output)
        call.has_outputs = True
        if shadow_fn is not None and has_float_tensor(output):
            with self.suspend(), torch.no_grad():
                call.outputs_fp32 = snapshot(shadow_fn())

    # --- modules -----------------------------------------------------------------------------------
    def settings_for(self, path: str, module, args, kwargs) -> dict:
        cls = type(module).__name__
        s = {"kind": "module"}
        if hasattr(module, "variance_epsilon"):
            s["eps"] = float(module.variance_epsilon)
        if cls in ("Qwen2_5_VLVisionBlock", "Qwen2_5_VLVisionAttention"):
            block = int(path.split("blocks.")[1].split(".")[0])
            cu = kwargs.get("cu_seqlens", args[1] if len(args) > 1 else None)
            s["block_index"] = block
            s["attention"] = "full" if block in self.fullatt else "window"
            if isinstance(cu, torch.Tensor):
                s["num_segments"] = int(cu.numel() - 1)
        if cls == "Qwen2_5_VLAttention":
            s["layer_idx"] = int(module.layer_idx)
        if cls == "Qwen2_5_VLDecoderLayer":
            s["layer_idx"] = int(module.self_attn.layer_idx)
        return s

    @staticmethod
    def state_inputs(module) -> dict:
        """Module state a call reads besides its arguments, recorded as extra inputs so that a replay can
        pass it explicitly: Qwen2_5_VLModel.rope_deltas (set by get_rope_index at the prefill and read back
        by every later call; the model returns it as `rope_deltas`)."""
        cls = type(module).__name__
        if cls == "Qwen2_5_VLModel":
            return {"rope_deltas_state": module.rope_deltas}
        if cls == "Qwen2_5_VLForConditionalGeneration":
            return {"rope_deltas_state": module.model.rope_deltas}
        return {}

    def hook_module(self, path: str, module) -> None:
        cls = type(module).__name__
        pending: list[Call] = []

        def pre(mod, args, kwargs):
            if self.suspended:
                return None
            inputs = {f"arg{i}": a for i, a in enumerate(args)}
            inputs.update(kwargs)
            inputs.update(self.state_inputs(mod))
            call = self.begin(path, cls, inputs, self.settings_for(path, mod, args, kwargs))
            # The shadow's inputs are taken now: the call itself appends to a KV cache in place.
            shadow_inputs = None
            if self.shadow_modules is not None and call.stored and path in self.shadow_modules:
                shadow_inputs = (upcast(args), upcast(kwargs))
            pending.append((call, shadow_inputs))
            return None

        def post(mod, args, kwargs, output):
            if self.suspended:
                return None
            call, shadow_inputs = pending.pop()
            shadow_fn = None
            if shadow_inputs is not None and path in self.shadow_modules:
                shadow = self.shadow_modules[path]
                shadow_fn = lambda: shadow(*shadow_inputs[0], **shadow_inputs[1])  # noqa: E731
            self.end(call, output, shadow_fn)
            return None

        self.handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self.handles.append(module.register_forward_hook(post, with_kwargs=True))

    # --- free functions ------------------------------------------------------------------------------
    def wrap_function(self, owner, name: str, path_of) -> None:
        orig = getattr(owner, name)
        self.originals[(owner, name)] = orig

        def wrapper(*args, **kwargs):
            if self.suspended:
                return orig(*args, **kwargs)
            inputs = {f"arg{i}": a for i, a in enumerate(args)}
            inputs.update({k: v for k, v in kwargs.items() if k != "kwargs"})
            call = self.begin(path_of(name), name, inputs, {"kind": "function"})
            out = orig(*args, **kwargs)
            shadow_fn = None
            if self.shadow_modules is not None and call.stored:
                shadow_fn = lambda: orig(*upcast(args), **upcast(kwargs))  # noqa: E731
            self.end(call, out, shadow_fn)
            return out

        setattr(owner, name, wrapper)

    def current_path(self) -> str:
        return self.calls[self.stack[-1]].module_path if self.stack else ""

    def install(self) -> None:
        for path, module in self.model.named_modules():
            if type(module).__name__ in HOOKED_CLASSES or path in HOOKED_PATHS:
                self.hook_module(path if path else "", module)

        def path_of(name):
            parent = self.current_path()
            return f"{parent}.{name}" if parent else name

        for name in WRAPPED_FUNCTIONS:
            self.wrap_function(hf_mod, name, path_of)
        # get_rope_index is a method of the base model; wrap it on the instance.
        self.wrap_function(self.model.model, "get_rope_index", path_of)

    def uninstall(self) -> None:
        for h in self.handles:
            h.remove()
        for (owner, name), orig in self.originals.items():
            if owner is hf_mod:
                setattr(owner, name, orig)
            else:
                delattr(owner, name)


# ---------------------------------------------------------------------------------------------------
# HDF5 writer (schema: docs/design.md §3)
# ---------------------------------------------------------------------------------------------------

# Integrity (the same rule as instrument/h5io.cpp, so that a damaged file reads as damaged): the file is
# written in the HDF5 1.8 format (libver v108), whose object headers carry a checksum, and every dataset's
# data is checksummed. A dataset with data is chunked with HDF5's Fletcher-32 filter (after shuffle and
# gzip, so the stored bytes are what is checked); a scalar or an empty dataset cannot be chunked, so it is
# stored compact: its value (or its shape alone) sits inside its checksummed object header.
LIBVER = ("v108", "v108")  # readable by HDF5 1.8 and later (qvl builds against Debian's 1.10)
CHUNK_BYTES = 16 << 20  # at most this much per chunk; 1 MiB under gzip
GZIP_CHUNK_BYTES = 1 << 20


def chunk_shape(shape, itemsize: int, limit: int) -> tuple:
    """Chunk dims: whole trailing dims while they fit in `limit` bytes, then as many slices of the next dim
    as fit (at least 1), and 1 for the dims before it. Each chunk is then one contiguous run of the
    row-major data. Same rule as chunk_dims in instrument/h5io.cpp."""
    chunk = [1] * len(shape)
    inner = itemsize
    for j in range(len(shape) - 1, -1, -1):
        if inner * shape[j] <= limit:
            chunk[j] = shape[j]
            inner *= shape[j]
        else:
            chunk[j] = max(1, limit // inner)
            break
    return tuple(chunk)


def write_dataset(parent: h5py.Group, name: str, arr: np.ndarray, gzip: bool = False) -> h5py.Dataset:
    """One checksummed dataset (see LIBVER above): chunked with Fletcher-32, or compact when scalar or
    empty."""
    if arr.ndim > 0 and arr.size > 0:
        limit = GZIP_CHUNK_BYTES if gzip else CHUNK_BYTES
        kw = {"compression": "gzip", "compression_opts": 4, "shuffle": True} if gzip else {}
        return parent.create_dataset(name, data=arr, chunks=chunk_shape(arr.shape, arr.itemsize, limit),
                                     fletcher32=True, **kw)
    # h5py's create_dataset ignores a layout for scalars: the low-level API makes the compact dataset.
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT)
    space = h5py.h5s.create(h5py.h5s.SCALAR) if arr.ndim == 0 else h5py.h5s.create_simple(arr.shape)
    dsid = h5py.h5d.create(parent.id, name.encode(), h5py.h5t.py_create(arr.dtype, logical=True), space,
                           dcpl=dcpl)
    if arr.size:
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(arr))
    return h5py.Dataset(dsid)


def write_value(parent: h5py.Group, name: str, value, seen: dict | None = None) -> None:
    """Writes one nested value. `seen` maps tensor content to an existing dataset: identical tensors
    (pixel_values passed down four levels, shared cos/sin) become HDF5 hard links, not copies."""
    if seen is None:
        seen = {}
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        dtype_name = torch_dtype_name(t.dtype)
        if t.dtype == torch.bfloat16:
            arr = t.view(torch.uint16).numpy()
        elif t.dtype == torch.bool:
            arr = t.to(torch.uint8).numpy()
        else:
            arr = t.numpy()
        key = (dtype_name, arr.shape, hashlib.sha256(arr.tobytes()).hexdigest())
        if key in seen:
            parent[name] = seen[key]  # hard link: same dataset, same attributes
            return
        ds = write_dataset(parent, name, arr, gzip=arr.nbytes >= 1024 and arr.ndim > 0)
        ds.attrs["kind"] = "tensor"
        ds.attrs["dtype"] = dtype_name
        seen[key] = ds
        return
    if value is None:
        g = parent.create_group(name)
        g.attrs["kind"] = "none"
        return
    if isinstance(value, bool):
        ds = write_dataset(parent, name, np.asarray(np.uint8(value)))
        ds.attrs["kind"] = "bool"
        return
    if isinstance(value, int):
        ds = write_dataset(parent, name, np.asarray(np.int64(value)))
        ds.attrs["kind"] = "int"
        return
    if isinstance(value, float):
        ds = write_dataset(parent, name, np.asarray(np.float64(value)))
        ds.attrs["kind"] = "float"
        return
    if isinstance(value, (str, torch.dtype, torch.device)):
        g = parent.create_group(name)
        g.attrs["kind"] = "str"
        g.attrs["value"] = str(value)
        return
    if isinstance(value, (tuple, list)):
        g = parent.create_group(name)
        g.attrs["kind"] = "tuple" if isinstance(value, tuple) else "list"
        g.attrs["length"] = len(value)
        for i, v in enumerate(value):
            write_value(g, str(i), v, seen)
        return
    if isinstance(value, dict):
        g = parent.create_group(name)
        g.attrs["kind"] = "dict"
        keys = [k for k in value.keys() if k != "__type__"]
        g.attrs["keys"] = json.dumps(keys)
        if "__type__" in value:
            g.attrs["type"] = value["__type__"]
        for k in keys:
            write_value(g, k.replace("/", "|"), value[k], seen)
        return
    # Anything else (a Cache object, a config): recorded as an opaque object, never silently dropped.
    g = parent.create_group(name)
    g.attrs["kind"] = "object"
    g.attrs["type"] = type(value).__name__


def write_outputs(g: h5py.Group, group_name: str, outs, seen: dict) -> None:
    """A call's outputs: a tuple becomes out0, out1, ...; anything else is `out`."""
    og = g.create_group(group_name)
    og.attrs["kind"] = "dict"
    items = [(f"out{i}", v) for i, v in enumerate(outs)] if isinstance(outs, tuple) else [("out", outs)]
    og.attrs["keys"] = json.dumps([n for n, _ in items])
    for n, v in items:
        write_value(og, n, v, seen)


@contextlib.contextmanager
def new_recording(path: str, root_attrs: dict, num_calls: int):
    """A recording file in the current format, written to a temporary next to `path` and renamed onto it
    only when complete. Yields the file with its root attributes set."""
    out = os.path.abspath(path)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".h5", dir=os.path.dirname(out))
    os.close(fd)
    try:
        with h5py.File(tmp, "w", track_order=True, libver=LIBVER) as f:
            for k, v in root_attrs.items():
                f.attrs[k] = v
            if "format_version" not in root_attrs:
                f.attrs["format_version"] = FORMAT_VERSION
            # The reader checks the calls against this count (a missing group is an error, not a skip) and
            # that every dataset carries its checksum.
            f.attrs["num_calls"] = np.int64(num_calls)
            f.attrs["checksums"] = "fletcher32"
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; the recording is an ordinary file
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def call_summary(calls: list[Call]) -> str:
    """The root attribute call_summary: calls per module class and the number of generate's recorded forward
    passes, so that a reader can tell what a recording holds without opening its call groups (the C++
    CallSummary writes and checks the same JSON)."""
    classes: dict = {}
    for c in calls:
        classes[c.module_class] = classes.get(c.module_class, 0) + 1
    steps = {c.settings["generate_step"] for c in calls
             if isinstance(c.settings.get("generate_step"), int) and c.settings["generate_step"] >= 0}
    return json.dumps({"classes": classes, "generate_steps": len(steps)}, sort_keys=True)


def write_recording(path: str, calls: list[Call], root_attrs: dict) -> None:
    root_attrs = dict(root_attrs, call_summary=call_summary(calls))
    with new_recording(path, root_attrs, len(calls)) as f:
        cg = f.create_group("calls")
        seen: dict = {}
        for c in calls:
            g = cg.create_group(f"{c.seq:06d}")
            g.attrs["module_path"] = c.module_path
            g.attrs["module_class"] = c.module_class
            g.attrs["call_index"] = np.int64(c.call_index)
            g.attrs["parent"] = np.int64(c.parent)
            g.attrs["settings"] = json.dumps(c.settings, sort_keys=True)
            write_value(g, "inputs", c.inputs, seen)
            if c.has_outputs:
                write_outputs(g, "outputs", c.outputs, seen)
            if c.outputs_fp32 is not None:
                write_outputs(g, "outputs_fp32", c.outputs_fp32, seen)
            if c.outputs_fp32_chain is not None:
                write_outputs(g, "outputs_fp32_chain", c.outputs_fp32_chain, seen)


def copy_members(src: h5py.Group, dst: h5py.Group, seen: dict) -> None:
    """Copies a recording's groups and datasets, every value bit for bit, through the current writer
    (write_dataset: chunks, Fletcher-32, compact scalars; identical tensors hard-linked as write_value does)."""
    for name in src:
        obj = src[name]
        if isinstance(obj, h5py.Group):
            out = dst.create_group(name)
        else:
            arr = np.asarray(obj[()])
            kind = obj.attrs.get("kind", "tensor")
            key = (obj.attrs.get("dtype", str(arr.dtype)), arr.shape, hashlib.sha256(arr.tobytes()).hexdigest())
            if kind == "tensor" and key in seen:
                dst[name] = seen[key]  # hard link: same dataset, same attributes
                continue
            out = write_dataset(dst, name, arr, gzip=kind == "tensor" and arr.nbytes >= 1024 and arr.ndim > 0)
            if kind == "tensor":
                seen[key] = out
        for k, v in obj.attrs.items():
            out.attrs[k] = v
        if isinstance(obj, h5py.Group):
            copy_members(obj, out, seen)


def cmd_rewrite(args: argparse.Namespace) -> None:
    """Writes a recording made by an older recorder again in the current format (format_version 2:
    checksums and the call count), every tensor and attribute kept as it is."""
    with h5py.File(args.src, "r") as f:
        if f.attrs.get("format") != "qvl.recording":
            sys.exit(f"{args.src}: not a qvl.recording file")
        names = list(f["calls"])
        want = [f"{i:06d}" for i in range(len(names))]
        stated = int(f.attrs["num_calls"]) if "num_calls" in f.attrs else len(names)
        if sorted(names) != want or stated != len(names):
            missing = sorted(set(f"{i:06d}" for i in range(max(stated, len(names)))) - set(names))
            sys.exit(f"{args.src}: the call groups are not 000000..{stated - 1:06d} (missing: {missing[:5]}); "
                     "a damaged recording cannot be rewritten")
        root = {k: v for k, v in f.attrs.items() if k not in ("format_version", "num_calls", "checksums")}
        root["rewritten"] = (f"format_version {int(f.attrs.get('format_version', 1))} -> {FORMAT_VERSION} by "
                             f"record_reference.py rewrite (h5py {h5py.__version__}); tensors unchanged")
        with new_recording(args.out, root, len(names)) as out:
            calls = out.create_group("calls")
            for k, v in f["calls"].attrs.items():
                calls.attrs[k] = v
            copy_members(f["calls"], calls, {})
    log(f"wrote {args.out}: {len(names)} calls, format_version {FORMAT_VERSION}")


def chain_generate_steps(shadow, rec: "Recorder", fullatt) -> None:
    """The chained noise floor of a recorded generate (bf16): the float32 model replays every recorded
    step -- the same prompt, then the same tokens, positions, masks and rope_deltas state that generate fed
    the bf16 model (teacher forcing) -- with its own float32 cache. Its outputs become outputs_fp32_chain
    of the generate-phase calls, matched by (module path, call index)."""
    steps = [c for c in rec.calls if "generate_step" in c.settings and c.module_path == ""
             and c.module_class == "Qwen2_5_VLForConditionalGeneration"]
    chain = Recorder(shadow, None, fullatt=fullatt)
    # call indices continue after the forward pass's calls, as in `rec`
    for c in rec.calls:
        if "generate_step" not in c.settings:
            chain.counts[c.module_path] = chain.counts.get(c.module_path, 0) + 1
    chain.install()
    cache = None
    try:
        with torch.no_grad():
            for step in steps:
                kwargs = {k: upcast(v) for k, v in step.inputs.items() if k not in ("rope_deltas_state", "past_key_values")}
                shadow.model.rope_deltas = step.inputs["rope_deltas_state"]
                out = shadow(**kwargs, past_key_values=cache)
                cache = out.past_key_values
    finally:
        chain.uninstall()
    by_key = {(c.module_path, c.call_index): c for c in chain.calls}
    for c in rec.calls:
        m = by_key.get((c.module_path, c.call_index)) if "generate_step" in c.settings else None
        if m is not None and has_float_tensor(m.outputs):
            c.outputs_fp32_chain = m.outputs


def config_json(config) -> str:
    """The full config as JSON, without fields that depend on where the checkpoint sits on disk."""
    d = config.to_dict()
    for k in ("_name_or_path", "transformers_version"):
        d.pop(k, None)
    return json.dumps(d, sort_keys=True)


def stored_calls(calls: list[Call]) -> list[Call]:
    """The calls `record --modules` keeps, renumbered in order; each parent becomes the nearest stored
    ancestor (or -1)."""
    new_seq, out = {}, []
    for c in calls:
        if not c.stored:
            continue
        parent = c.parent
        while parent >= 0 and not calls[parent].stored:
            parent = calls[parent].parent
        new_seq[c.seq] = len(out)
        out.append(dataclasses.replace(c, seq=len(out), parent=new_seq[parent] if parent >= 0 else -1))
    return out


def hub_key(runtime_key: str) -> str:
    if runtime_key.startswith("model.visual."):
        return runtime_key[len("model."):]
    if runtime_key.startswith("model.language_model."):
        return "model." + runtime_key[len("model.language_model."):]
    return runtime_key


def checkpoint_tensors(model_dir: str, keys: list[str]) -> dict:
    """The named tensors (runtime keys) read from the checkpoint's safetensors, either key layout; a tied
    lm_head reads the embedding. Only these tensors are read (memory-mapped)."""
    from safetensors import safe_open

    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            where = json.load(f)["weight_map"]
    else:
        where = {}
        for name in sorted(os.listdir(model_dir)):
            if name.endswith(".safetensors"):
                with safe_open(os.path.join(model_dir, name), "pt") as f:
                    where.update({k: name for k in f.keys()})
    out = {}
    for key in keys:
        cands = [key, hub_key(key)]
        if key == "lm_head.weight":
            cands += ["model.language_model.embed_tokens.weight", "model.embed_tokens.weight"]
        found = next((c for c in cands if c in where), None)
        if found is None:
            raise SystemExit(f"record: tensor '{key}' is not in the checkpoint '{model_dir}'")
        with safe_open(os.path.join(model_dir, where[found]), "pt") as f:
            out[key] = f.get_tensor(found)
    return out


def fp32_copy(module, path: str, model_dir: str, dtype) -> torch.nn.Module:
    """The float32 module on the same weights: the weights as the model holds them (`dtype`), upcast. A
    module offloaded by accelerate (its weights on the meta device) is rebuilt from the checkpoint, cast to
    `dtype` first as from_pretrained(dtype=...) did."""
    offloaded = any(p.device.type == "meta" for p in module.parameters())
    # The parameters go into the copy already upcast (deepcopy's memo), so no second copy in `dtype` is made.
    memo = {id(p): torch.nn.Parameter(p.detach().float(), requires_grad=False)
            for p in module.parameters() if p.device.type != "meta"}
    shadow = copy.deepcopy(module, memo)
    if hasattr(shadow, "_hf_hook") or any(hasattr(m, "_hf_hook") for m in shadow.modules()):
        from accelerate.hooks import remove_hook_from_module

        remove_hook_from_module(shadow, recurse=True)
    if offloaded:
        buffers = dict(module.named_buffers())
        shadow = shadow.to_empty(device="cpu")
        names = [n for n, _ in shadow.named_parameters()]
        state = checkpoint_tensors(model_dir, [f"{path}.{n}" if path else n for n in names])
        with torch.no_grad():
            for n, p in shadow.named_parameters():
                p.copy_(state[f"{path}.{n}" if path else n].to(dtype))
            for n, b in shadow.named_buffers():
                if buffers[n].device.type == "meta":
                    raise SystemExit(f"record: buffer '{path}.{n}' is offloaded; cannot build its float32 copy")
                b.copy_(buffers[n])
    return shadow.float().eval()


class ShadowFactory:
    """Called like the shadow module: builds the module's float32 copy (fp32_copy), runs it, drops it."""

    def __init__(self, module, path, model_dir, dtype):
        self.module, self.path, self.model_dir, self.dtype = module, path, model_dir, dtype

    def __call__(self, *args, **kwargs):
        shadow = fp32_copy(self.module, self.path, self.model_dir, self.dtype)
        try:
            return shadow(*args, **kwargs)
        finally:
            del shadow


def cmd_record(args: argparse.Namespace) -> None:
    if args.record_decode and args.generate <= 0:
        raise SystemExit("record: --record-decode needs --generate N (N > 0)")
    selection = ModuleSelection(args.modules) if args.modules else None
    if selection is not None and args.record_decode:
        raise SystemExit("record: --modules records one forward pass; it does not combine with --record-decode")
    if bool(args.offload) != bool(args.max_memory):
        raise SystemExit("record: --offload DIR and --max-memory SIZE go together")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        raise SystemExit(f"record: '{args.model}' is not a checkpoint directory (no config.json)")
    log(f"loading {args.model} ({args.dtype}, eager attention)")
    overrides = {}
    for item in args.set:
        if "=" not in item:
            raise SystemExit(f"record: --set expects KEY=JSON, got '{item}'")
        k, v = item.split("=", 1)
        overrides[k] = json.loads(v)
    config = Qwen2_5_VLConfig.from_pretrained(args.model)
    for k, v in overrides.items():
        # Attributes of the config objects, then keys of a dict field (text_config.rope_parameters.rope_theta).
        obj, parts = config, k.split(".")
        for p in parts[:-1]:
            if isinstance(obj, dict) and p in obj:
                obj = obj[p]
            elif not isinstance(obj, dict) and hasattr(obj, p):
                obj = getattr(obj, p)
            else:
                raise SystemExit(f"record: --set {k}: the config has no field '{p}'")
        if isinstance(obj, dict):
            if parts[-1] not in obj:
                raise SystemExit(f"record: --set {k}: the config has no such field")
            obj[parts[-1]] = v
            continue
        if not hasattr(obj, parts[-1]):
            raise SystemExit(f"record: --set {k}: the config has no such field")
        setattr(obj, parts[-1], v)
    load_kw = {}
    if args.offload:
        # accelerate's disk offload: modules past --max-memory live in the offload folder (or are read from
        # the checkpoint's safetensors) and are loaded around their forward call.
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise SystemExit("record: --offload needs the accelerate package (pip install accelerate)")
        os.makedirs(args.offload, exist_ok=True)
        load_kw = dict(device_map="auto", max_memory={"cpu": args.max_memory}, offload_folder=args.offload,
                       offload_state_dict=True)
        log(f"offload: at most {args.max_memory} of weights in memory, the rest in {args.offload}")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        args.model, config=config, dtype=dtype, attn_implementation="eager", **load_kw).eval()
    config = model.config
    if selection is not None:
        selection.check_model(model)
    shadow = None
    shadow_modules = None
    if dtype != torch.float32 and selection is None:
        # The float32 module on the same weights: the bf16 weights upcast, so only arithmetic differs.
        shadow = copy.deepcopy(model).float().eval()
    elif dtype != torch.float32:
        # --modules: a float32 copy of each selected module, built when its call ends and dropped after its
        # shadow call, so that at most one module's float32 copy is in memory. The top-level call gets none:
        # that would be the whole model.
        shadow_modules = {}
        for path, module in model.named_modules():
            hooked = type(module).__name__ in HOOKED_CLASSES or path in HOOKED_PATHS
            if path and hooked and selection.selects(path):
                shadow_modules[path] = ShadowFactory(module, path, args.model, dtype)

    # Inputs: images through the real HF image processor; token ids around the vision runs.
    images = [load_image(s, i) for i, s in enumerate(args.image)]
    n_prompt_images = len(images)
    if args.pad_batch and images:
        images = images + images  # the second row of the batch carries the same images
    pixel_values = image_grid_thw = None
    if images:
        proc = image_processor_for(args.model, config.vision_config, args.min_pixels)
        pp = proc(images=images, return_tensors="pt")
        pixel_values, image_grid_thw = pp["pixel_values"], pp["image_grid_thw"]
    videos = [load_video(s, i) for i, s in enumerate(args.video)]
    pixel_values_videos = video_grid_thw = second_per_grid_ts = None
    if videos:
        vproc = video_processor_for(args.model, config.vision_config, args.min_pixels)
        vp = vproc(videos=videos, return_tensors="pt", do_sample_frames=False)
        pixel_values_videos, video_grid_thw = vp["pixel_values_videos"], vp["video_grid_thw"]
        # second_per_grid_ts = temporal_patch_size / fps (docs/design.md §8.4)
        second_per_grid_ts = torch.tensor([vproc.temporal_patch_size / args.fps] * len(videos))
    merge = config.vision_config.spatial_merge_size
    ids = list(parse_ids(args.text_before))
    media = [(config.image_token_id, image_grid_thw[i]) for i in range(n_prompt_images)]
    media += [(config.video_token_id, video_grid_thw[i]) for i in range(len(videos))]
    for i, (tok, grid) in enumerate(media):
        n_tok = int(grid.prod()) // (merge * merge)
        ids += [config.vision_start_token_id] + [tok] * n_tok + [config.vision_end_token_id]
        if i + 1 < len(media):
            ids += parse_ids(args.text_between)
    ids += parse_ids(args.text_after)
    if max(ids) >= config.text_config.vocab_size:
        raise SystemExit(f"record: token id {max(ids)} is not below vocab_size {config.text_config.vocab_size}")
    input_ids = torch.tensor([ids], dtype=torch.long)
    attention_mask = torch.ones_like(input_ids)
    if args.pad_batch:
        # A left-padded batch of 2: row 1 is row 0 without its first PAD tokens, padded on the left.
        k = args.pad_batch
        if k >= len(parse_ids(args.text_before)) + 1:
            raise SystemExit(f"record: --pad-batch {k} must be shorter than --text-before")
        pad_id = config.text_config.pad_token_id if config.text_config.pad_token_id is not None else 0
        row1 = [pad_id] * k + ids[k:]
        input_ids = torch.tensor([ids, row1], dtype=torch.long)
        attention_mask = torch.tensor([[1] * len(ids), [0] * k + [1] * (len(ids) - k)], dtype=torch.long)
    mm_token_type_ids = torch.zeros_like(input_ids, dtype=torch.int32)
    mm_token_type_ids[input_ids == config.image_token_id] = 1
    mm_token_type_ids[input_ids == config.video_token_id] = 2

    fullatt = list(config.vision_config.fullatt_block_indexes)
    rec = Recorder(model, shadow, fullatt=fullatt, selection=selection, shadow_modules=shadow_modules)
    rec.install()
    model.model.rope_deltas = None
    log(f"forward: {len(ids)} tokens, {len(images)} image(s), {len(videos)} video(s)"
        + (f", image grids {image_grid_thw.tolist()}" if images else "")
        + (f", video grids {video_grid_thw.tolist()}" if videos else ""))
    with torch.no_grad():
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        if images:
            kwargs.update(pixel_values=pixel_values, image_grid_thw=image_grid_thw)
        if videos:
            kwargs.update(pixel_values_videos=pixel_values_videos, video_grid_thw=video_grid_thw,
                          second_per_grid_ts=second_per_grid_ts)
        if images or videos:
            kwargs.update(mm_token_type_ids=mm_token_type_ids)
        model(**kwargs)
    rec.uninstall()
    if selection is not None and dtype != torch.float32:
        for c in rec.calls:
            if c.module_path == "" and c.stored:
                c.settings["not_checkable"] = ("a bf16 record --modules recording has no float32 floor for the "
                                               "whole model (its float32 copy is not built); kept for its inputs")

    if shadow is not None:
        # The chained noise floor: the float32 model (the bf16 weights upcast) run end to end on the same
        # inputs. A chained comparison (qvl compare) judges our bf16 chain against this fp32 chain, next to
        # HF's own bf16 chain, since in a chain every call's inputs already carry upstream bf16 drift.
        chain = Recorder(shadow, None, fullatt=fullatt)
        chain.install()
        shadow.model.rope_deltas = None
        with torch.no_grad():
            shadow(**upcast(kwargs))
        chain.uninstall()
        by_key = {(c.module_path, c.call_index): c for c in chain.calls}
        for c in rec.calls:
            m = by_key.get((c.module_path, c.call_index))
            if m is not None and has_float_tensor(m.outputs):
                c.outputs_fp32_chain = m.outputs

    generation = None
    if args.generate > 0:
        # transformers' own greedy generate with a KV cache (no hooks), on the same inputs.
        # With --record-decode the hooks stay on: the prefill and every decode step are recorded call by
        # call (the KV cache by value, generate's own get_rope_index and position ids as they are passed).
        model.model.rope_deltas = None
        gen_kwargs = {k: v for k, v in kwargs.items() if k != "use_cache"}
        n_before = len(rec.calls)
        if args.record_decode:
            rec.generating = True
            rec.install()
        try:
            with torch.no_grad():
                seq = model.generate(**gen_kwargs, max_new_tokens=args.generate, do_sample=False, use_cache=True)
        finally:
            if args.record_decode:
                rec.uninstall()
                rec.generating = False
        if args.record_decode:
            log(f"generate: recorded {len(rec.calls) - n_before} calls over {rec.top_level_forwards} forward passes "
                "(prefill + decode steps)")
        gc = model.generation_config
        eos = gc.eos_token_id if isinstance(gc.eos_token_id, list) else ([gc.eos_token_id] if gc.eos_token_id is not None else [])
        generation = {"new_tokens": seq[:, input_ids.shape[1]:].tolist(), "max_new_tokens": args.generate,
                      "eos_token_id": eos, "pad_token_id": gc.pad_token_id,
                      "recorded_steps": rec.top_level_forwards if args.record_decode else 0}
        log(f"generate: {len(generation['new_tokens'][0])} new tokens: {generation['new_tokens'][0][:16]}...")
        if args.record_decode and shadow is not None:
            chain_generate_steps(shadow, rec, fullatt)

    depth = config.vision_config.depth
    # Window facts per grid: padding (a grid side not a multiple of the window) makes uneven windows.
    window_padding = False
    ws = config.vision_config.window_size // merge // config.vision_config.patch_size
    grids = (image_grid_thw.tolist() if images else []) + (video_grid_thw.tolist() if videos else [])
    for t, h, w in grids:
        window_padding |= (h // merge) % ws != 0 or (w // merge) % ws != 0
    scenario = {
        "name": args.name,
        "input_ids": input_ids.tolist(),
        "attention_mask": attention_mask.tolist(),
        "images": [{"source": s, "grid_thw": image_grid_thw[i].tolist()} for i, s in enumerate(args.image)],
        "videos": [{"source": s, "grid_thw": video_grid_thw[i].tolist(), "fps": args.fps}
                   for i, s in enumerate(args.video)],
        "config_overrides": overrides,
        "generation": generation,
        "vision": {
            "full_blocks": fullatt,
            "window_blocks": [i for i in range(depth) if i not in fullatt],
            "window_padding": bool(window_padding),
        },
    }
    root = {
        "format": "qvl.recording",
        "format_version": FORMAT_VERSION,
        "producer": f"transformers {transformers.__version__}",
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
        "numpy_version": np.__version__,
        "h5py_version": h5py.__version__,
        "platform": platform.platform(),
        "attn_implementation": "eager",
        "dtype": args.dtype,
        "device": "cpu",
        "seed": args.seed,
        "num_threads": 1,
        "config": config_json(config),
        "scenario": json.dumps(scenario),
        "model_dir": os.path.basename(os.path.normpath(args.model)),
    }
    calls = rec.calls
    if selection is not None:
        root["modules"] = json.dumps(args.modules)
        calls = stored_calls(rec.calls)
        log(f"--modules {' '.join(args.modules)}: stored {len(calls)} of {len(rec.calls)} calls")
    if args.offload:
        root["offload"] = json.dumps({"max_memory": args.max_memory})
    write_recording(args.out, calls, root)
    size = os.path.getsize(args.out)
    log(f"wrote {args.out}: {len(calls)} calls, {size / 1e6:.1f} MB; peak RSS {peak_rss_bytes() / 1e9:.2f} GB")


# ---------------------------------------------------------------------------------------------------
# import-module-io: the Qwen2.5-VL conversion framework's recordings (module_io_data) -> qvl.recording
# ---------------------------------------------------------------------------------------------------
# That framework's @instrument decorator writes one folder per module call, named <ModuleName>_<YYYYmmdd_HHMMSS>
# (one-second resolution: a later call of the same module in the same second writes into the same folder):
#   metadata.json  {module, class, timestamp, settings, inputs: {args: [...], kwargs: {...}}, outputs}
#   inputs/arg_<i>.pt, inputs/kwarg_<name>.pt, outputs/output[_<i>].pt, setting_<attr>.pt (torch.save)
# A tensor entry is {type: "tensor", shape, dtype, path}; a list or tuple is a JSON list of entries (files
# <name>_<i>.pt); anything else is its str(). `settings` is config.to_dict() when the module has a config, else
# every public non-callable attribute (tensors, e.g. an RMSNorm's weight, saved as setting_<attr>.pt).

class ImportError_(Exception):
    """A corrupt input: one clear message, and no output file."""


# Framework (transformers 4.49-era) and transformers 5.x names -> qvl's replay class, where its instances live.
# `paths` is a function of the config giving every candidate module path, in execution order within one pass.
def _vision_depth(cfg):
    vc = (cfg or {}).get("vision_config") or {}
    return int(vc["depth"]) if "depth" in vc else None


def _text_layers(cfg):
    if not cfg:
        return None
    t = cfg.get("text_config") or cfg
    n = t.get("num_hidden_layers", cfg.get("num_hidden_layers"))
    return int(n) if n is not None else None


def module_io_class_map():
    v = "model.visual"
    lm = "model.language_model"
    blocks = lambda sub: (lambda c: [f"{v}.blocks.{i}{sub}" for i in range(_vision_depth(c))])  # noqa: E731
    layers = lambda sub: (lambda c: [f"{lm}.layers.{j}{sub}" for j in range(_text_layers(c))])  # noqa: E731

    def norms(c):
        out = []
        if _vision_depth(c) is not None:
            for i in range(_vision_depth(c)):
                out += [f"{v}.blocks.{i}.norm1", f"{v}.blocks.{i}.norm2"]
            out.append(f"{v}.merger.ln_q")
        if _text_layers(c) is not None:
            for j in range(_text_layers(c)):
                out += [f"{lm}.layers.{j}.input_layernorm", f"{lm}.layers.{j}.post_attention_layernorm"]
            out.append(f"{lm}.norm")
        return out

    single = lambda p: (lambda c: [p])  # noqa: E731
    m = {
        "Qwen2RMSNorm": ("Qwen2_5_VLRMSNorm", norms),
        "Qwen2_5_VLRMSNorm": ("Qwen2_5_VLRMSNorm", norms),
        "Qwen2_5_VLMLP": ("Qwen2_5_VLMLP", blocks(".mlp")),
        "Qwen2MLP": ("Qwen2MLP", layers(".mlp")),
        "Qwen2_5_VisionPatchEmbed": ("Qwen2_5_VisionPatchEmbed", single(f"{v}.patch_embed")),
        "Qwen2_5_VLVisionRotaryEmbedding": ("Qwen2_5_VLVisionRotaryEmbedding", single(f"{v}.rotary_pos_emb")),
        # transformers 4.49: forward(seqlen) returns the angle table, rot_pos_emb the angles per patch
        "Qwen2_5_VisionRotaryEmbedding": ("Qwen2_5_VisionRotaryEmbedding", single(f"{v}.rotary_pos_emb")),
        "Qwen2_5_VisionTransformerPretrainedModel_rot_pos_emb": ("rot_pos_emb", single(f"{v}.rot_pos_emb")),
        "Qwen2_5_VLVisionAttention": ("Qwen2_5_VLVisionAttention", blocks(".attn")),
        "Qwen2_5_VLVisionSdpaAttention": ("Qwen2_5_VLVisionAttention", blocks(".attn")),
        "Qwen2_5_VLVisionFlashAttention2": ("Qwen2_5_VLVisionAttention", blocks(".attn")),
        "Qwen2_5_VLVisionBlock": ("Qwen2_5_VLVisionBlock", blocks("")),
        "Qwen2_5_VLPatchMerger": ("Qwen2_5_VLPatchMerger", single(f"{v}.merger")),
        "Qwen2_5_VisionTransformerPretrainedModel": ("Qwen2_5_VisionTransformerPretrainedModel", single(v)),
        "Qwen2_5_VisionTransformerPretrainedModel_get_window_index":
            ("get_vision_window_index", single(f"{v}.get_vision_window_index")),
        "Qwen2_5_VLRotaryEmbedding": ("Qwen2_5_VLRotaryEmbedding", single(f"{lm}.rotary_emb")),
        "Qwen2_5_VLAttention": ("Qwen2_5_VLAttention", layers(".self_attn")),
        "Qwen2_5_VLSdpaAttention": ("Qwen2_5_VLAttention", layers(".self_attn")),
        "Qwen2_5_VLDecoderLayer": ("Qwen2_5_VLDecoderLayer", layers("")),
    }
    return m


# Calls that cannot be mapped whatever the data, with the reason.
MODULE_IO_UNMAPPABLE = {
    "Qwen2_5_VLModel": "a whole-model call: its output is a ModelOutput, which the framework stores as str()",
    "Qwen2_5_VLTextModel": "a whole-model call: its output is a ModelOutput, which the framework stores as str()",
    "Qwen2_5_VLForConditionalGeneration": "a whole-model call: its output is a ModelOutput, stored as str()",
}


def _parse_scalar(s):
    """The framework writes non-tensors as str(value): undo it for the simple cases."""
    if s == "None":
        return None
    if s in ("True", "False"):
        return s == "True"
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


class ModuleIOFolder:
    """One folder: its metadata and the tensors it names, checked against the metadata."""

    def __init__(self, root, name):
        import re
        self.name = name
        self.dir = os.path.join(root, name)
        m = re.match(r"^(.+)_(\d{8})_(\d{6})$", name)
        if not m:
            raise ImportError_(f"{self.dir}: not a module_io_data folder name (expected <Module>_<YYYYmmdd>_<HHMMSS>)")
        self.module, self.stamp = m.group(1), m.group(2) + "_" + m.group(3)
        meta_path = os.path.join(self.dir, "metadata.json")
        if not os.path.isfile(meta_path):
            raise ImportError_(f"{meta_path}: missing (every call folder holds one)")
        try:
            with open(meta_path) as f:
                self.meta = json.load(f)
        except json.JSONDecodeError as e:
            raise ImportError_(f"{meta_path}: bad JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        for k in ("module", "class", "inputs", "outputs"):
            if not isinstance(self.meta, dict) or k not in self.meta:
                raise ImportError_(f"{meta_path}: no '{k}' field (fields: {sorted(self.meta) if isinstance(self.meta, dict) else type(self.meta).__name__})")
        ins = self.meta["inputs"]
        if not isinstance(ins, dict) or not isinstance(ins.get("args"), list) or not isinstance(ins.get("kwargs"), dict):
            raise ImportError_(f"{meta_path}: 'inputs' must be {{args: [...], kwargs: {{...}}}}")
        self.cls = self.meta["class"]
        self.referenced = set()
        self.args = [self._load(a, f"inputs.args[{i}]") for i, a in enumerate(ins["args"])]
        self.kwargs = {k: self._load(a, f"inputs.kwargs.{k}") for k, a in ins["kwargs"].items()}
        self.outputs = self._load(self.meta["outputs"], "outputs")
        settings = self.meta.get("settings", {})
        self.settings = {}
        if isinstance(settings, dict):
            for k, s in settings.items():
                if isinstance(s, str):
                    self.settings[k] = _parse_scalar(s)
                elif isinstance(s, (dict, list)) and not _is_config_like(s):
                    self.settings[k] = self._load(s, f"settings.{k}")
                else:
                    self.settings[k] = s
        # Files the metadata does not name: left by an earlier call that wrote into the same folder.
        self.leftovers = []
        for sub in ("inputs", "outputs", ""):
            d = os.path.join(self.dir, sub)
            if not os.path.isdir(d):
                continue
            for f in sorted(os.listdir(d)):
                p = os.path.normpath(os.path.join(d, f))
                if f.endswith(".pt") and p not in self.referenced:
                    self.leftovers.append(os.path.relpath(p, self.dir))

    def _resolve(self, path, where):
        """metadata paths are relative to the recording run's working directory; find the file in this folder."""
        parts = os.path.normpath(path).split(os.sep)
        if self.name in parts:
            rel = parts[parts.index(self.name) + 1:]
        else:
            rel = parts[-2:] if len(parts) >= 2 and parts[-2] in ("inputs", "outputs") else parts[-1:]
        return os.path.normpath(os.path.join(self.dir, *rel))

    def _load(self, entry, where):
        meta_path = os.path.join(self.dir, "metadata.json")
        if isinstance(entry, list):
            return [self._load(e, f"{where}[{i}]") for i, e in enumerate(entry)]
        if isinstance(entry, dict) and entry.get("type") == "tensor":
            for k in ("shape", "dtype", "path"):
                if k not in entry:
                    raise ImportError_(f"{meta_path}: {where} is a tensor entry without '{k}'")
            p = self._resolve(entry["path"], where)
            if not os.path.isfile(p):
                raise ImportError_(f"{p}: missing (metadata.json {where} names it)")
            try:
                t = torch.load(p, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - any unpickling problem is a corrupt file
                raise ImportError_(f"{p}: cannot be read by torch.load ({type(e).__name__}: {e})") from None
            if not isinstance(t, torch.Tensor):
                raise ImportError_(f"{p}: holds a {type(t).__name__}, but metadata.json {where} says a tensor")
            if list(t.shape) != list(entry["shape"]):
                raise ImportError_(f"{p}: shape {list(t.shape)} disagrees with metadata.json {where} shape {entry['shape']}")
            if str(t.dtype) != entry["dtype"]:
                raise ImportError_(f"{p}: dtype {t.dtype} disagrees with metadata.json {where} dtype {entry['dtype']}")
            self.referenced.add(p)
            return t
        if isinstance(entry, str):
            return _parse_scalar(entry)
        return entry


def _is_config_like(s):
    return isinstance(s, dict) and s.get("type") != "tensor"


def _flatten_nested(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten_nested(v, key))
        elif isinstance(v, torch.Tensor):
            out[key] = v
        else:
            raise ImportError_(f"'{key}' is a {type(v).__name__}, not a tensor or a dict")
    return out


def load_framework_vision_weights(path):
    """The framework's convert.py output: the vision tower's state dict split on '.' into a dict of dicts
    (nested['blocks']['0']['norm1']['weight']). Returns {model.visual.<key>: tensor}."""
    if not os.path.isfile(path):
        raise ImportError_(f"{path}: missing")
    try:
        nested = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ImportError_(f"{path}: cannot be read by torch.load ({type(e).__name__}: {e})") from None
    if not isinstance(nested, dict):
        raise ImportError_(f"{path}: holds a {type(nested).__name__}, expected the nested dict of the vision weights")
    if "visual" in nested and isinstance(nested["visual"], dict):
        nested = nested["visual"]
    elif "model" in nested and isinstance(nested["model"], dict) and "visual" in nested["model"]:
        nested = nested["model"]["visual"]
    try:
        flat = _flatten_nested(nested)
    except ImportError_ as e:
        raise ImportError_(f"{path}: {e}") from None
    return {f"model.visual.{k}": v for k, v in flat.items()}


def load_checkpoint_state(model_dir):
    """Every weight of an HF checkpoint under its runtime module path (model.visual.*, model.language_model.*)."""
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    return {k: v.detach() for k, v in model.state_dict().items()}


def _sub_state(weights, path):
    pre = path + "."
    return {k[len(pre):]: v for k, v in weights.items() if k.startswith(pre)}


def _as_tuple_pe(v):
    return tuple(v) if isinstance(v, list) else v


class ModuleIOImporter:
    def __init__(self, config, weights):
        self.config = config          # config.json dict, or None
        self.weights = weights        # {runtime path: tensor} (vision_weights.pt and/or a checkpoint), may be empty
        self.hf_config = None
        if config:
            try:
                self.hf_config = Qwen2_5_VLConfig(**config)
            except Exception as e:  # noqa: BLE001 - a partial config: identification by running modules is off
                log(f"import: cannot build transformers' config ({type(e).__name__}: {e})")
        if self.hf_config is not None:
            self.hf_config._attn_implementation = "eager"
            self.hf_config.vision_config._attn_implementation = "eager"
            self.hf_config.text_config._attn_implementation = "eager"

    # -- which instance: the parameters recorded in the settings, else by running transformers' module ---------
    def identify(self, folder, qvl_cls, candidates, inputs, outputs):
        if len(candidates) == 1:
            return candidates[0], "the only instance"
        w = folder.settings.get("weight")
        if isinstance(w, torch.Tensor):
            hits = [p for p in candidates if torch.equal(self.weights.get(p + ".weight", torch.empty(0)).to(w.dtype), w)]
            if len(hits) == 1:
                return hits[0], "its recorded weight equals this instance's"
            if not self.weights:
                return None, f"{len(candidates)} instances are possible and no weights were given to tell them apart (--weights/--checkpoint)"
            if len(hits) > 1:
                return None, f"its recorded weight equals {len(hits)} instances' ({', '.join(hits)})"
            return None, ("its recorded weight equals no instance's weight in the weights given"
                          + ("" if any(p + ".weight" in self.weights for p in candidates if "language_model" in p)
                             else " (they hold no text weights: pass --checkpoint)"))
        if not self.weights or self.hf_config is None:
            return None, (f"{len(candidates)} instances are possible; telling them apart runs transformers' module on "
                          "each instance's weights, which needs --config and --weights/--checkpoint")
        best, best_err = None, float("inf")
        ref = _tensors_of(outputs)[0]
        if not any(_sub_state(self.weights, p) for p in candidates):
            return None, (f"the weights given hold none of its {len(candidates)} possible instances "
                          f"({candidates[0]}, ...); vision_weights.pt holds the vision tower only: pass --checkpoint")
        for p in candidates:
            state = _sub_state(self.weights, p)
            if not state:
                continue
            try:
                out = self.run_hf(qvl_cls, p, state, inputs)
            except Exception as e:  # noqa: BLE001 - a candidate that cannot run is not the one
                log(f"import: {folder.name}: {p} did not run ({type(e).__name__}: {e})")
                continue
            o = _tensors_of(out)[0]
            if o.shape != ref.shape:
                continue
            err = float((o.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30))
            if err < best_err:
                best, best_err = p, err
        tol = 1e-4 if ref.dtype == torch.float32 else 5e-2
        if best is None:
            return None, "no instance's weights could run on its inputs"
        if best_err > tol:
            return None, f"no instance reproduces its output (closest: {best}, max_rel {best_err:.2e} > {tol:g})"
        return best, f"transformers' module on this instance's weights reproduces its output (max_rel {best_err:.1e})"

    def run_hf(self, qvl_cls, path, state, inputs):
        vc, tc = self.hf_config.vision_config, self.hf_config.text_config
        layer = int(path.split("layers.")[1].split(".")[0]) if "layers." in path else 0
        build = {
            "Qwen2_5_VLMLP": lambda: hf_mod.Qwen2_5_VLMLP(vc, bias=True),
            "Qwen2_5_VLVisionAttention": lambda: hf_mod.Qwen2_5_VLVisionAttention(vc),
            "Qwen2_5_VLVisionBlock": lambda: hf_mod.Qwen2_5_VLVisionBlock(vc),
            "Qwen2MLP": lambda: hf_mod.Qwen2MLP(tc),
            "Qwen2_5_VLAttention": lambda: hf_mod.Qwen2_5_VLAttention(tc, layer),
            "Qwen2_5_VLDecoderLayer": lambda: hf_mod.Qwen2_5_VLDecoderLayer(tc, layer),
            "Qwen2_5_VLRMSNorm": lambda: hf_mod.Qwen2_5_VLRMSNorm(state["weight"].shape[0]),
        }[qvl_cls]
        mod = build().eval()
        mod.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
        args = [v for k, v in sorted(inputs.items()) if k.startswith("arg")]
        kwargs = {k: v for k, v in inputs.items() if not k.startswith("arg")}
        dtype = next(t for t in args + list(kwargs.values()) if isinstance(t, torch.Tensor) and t.is_floating_point()).dtype
        mod = mod.to(dtype)
        with torch.no_grad():
            return mod(*args, **kwargs)

    # -- one folder -> one qvl call, or the reason it cannot be one -------------------------------------------
    def convert(self, folder, class_map):
        name = folder.module
        if name in MODULE_IO_UNMAPPABLE:
            return None, MODULE_IO_UNMAPPABLE[name]
        key = name if name in class_map else folder.cls
        if key not in class_map:
            return None, f"no qvl replay class for '{name}' (class {folder.cls})"
        qvl_cls, paths_of = class_map[key]
        inputs = {f"arg{i}": v for i, v in enumerate(folder.args)}
        inputs.update(folder.kwargs)
        for k in ("position_embeddings",):
            if k in inputs:
                inputs[k] = _as_tuple_pe(inputs[k])
        if inputs.get("position_embeddings") is None and isinstance(inputs.get("rotary_pos_emb"), torch.Tensor):
            # 4.49-era vision attention/blocks may get the raw table; transformers turns it into (cos, sin) so.
            emb = torch.cat((inputs["rotary_pos_emb"], inputs["rotary_pos_emb"]), dim=-1)
            inputs["position_embeddings"] = (emb.cos(), emb.sin())
        inputs.pop("rotary_pos_emb", None)
        outputs = folder.outputs
        for k in ("past_key_value", "past_key_values"):
            v = inputs.get(k)
            if v is not None and not isinstance(v, torch.Tensor):
                return None, f"its {k} (a KV cache) was stored as str() by the framework; a cached call cannot be replayed"
        if isinstance(outputs, str):
            return None, f"its output was stored as str() by the framework (a {outputs.split('(')[0][:60]}), not as tensors"
        if qvl_cls == "Qwen2_5_VisionTransformerPretrainedModel":
            if not isinstance(outputs, torch.Tensor):
                return None, "the tower's output is not a tensor"
            # The 4.49-era tower returns the merged tokens: transformers 5.x calls them pooler_output.
            outputs = {"__type__": "BaseModelOutputWithPooling", "pooler_output": outputs}
        elif qvl_cls == "get_vision_window_index":
            if not (isinstance(outputs, list) and len(outputs) == 2):
                return None, "get_window_index should return (window_index, cu_window_seqlens)"
            cu = outputs[1]
            cu = cu if isinstance(cu, torch.Tensor) else torch.tensor([int(x) for x in cu], dtype=torch.int32)
            # The caller dedups the list (unique_consecutive) before use, as get_vision_window_index does.
            outputs = (outputs[0], torch.unique_consecutive(cu.to(torch.int32)))
        elif qvl_cls == "Qwen2_5_VLDecoderLayer" and isinstance(outputs, list):
            outputs = outputs[0]  # 4.x decoder layers return (hidden_states, ...)
        elif isinstance(outputs, list):
            outputs = tuple(outputs)
        if outputs is None:
            return None, "it recorded no output"
        if qvl_cls in ("Qwen2_5_VLVisionRotaryEmbedding", "Qwen2_5_VLRotaryEmbedding") and len(folder.args) < 2 \
                and "position_ids" not in folder.kwargs:
            return None, "no position ids among its inputs (4.49-era signature)"
        try:
            candidates = paths_of(self.config) if paths_of is not None else []
        except (TypeError, KeyError):
            candidates = None
        if candidates is None or (not candidates):
            guess = paths_of({"vision_config": {"depth": 1}, "num_hidden_layers": 1})
            if len(guess) == 1 and "blocks.0" not in guess[0] and "layers.0" not in guess[0]:
                candidates = guess
            else:
                return None, "which instance it is depends on the model's depth: pass --config config.json"
        path, how = self.identify(folder, qvl_cls, candidates, inputs, outputs)
        if path is None:
            return None, how
        kind = "function" if qvl_cls in ("get_vision_window_index", "rot_pos_emb") else "module"
        settings = {"kind": kind, "imported_from": folder.name, "identified": how}
        eps = folder.settings.get("variance_epsilon")
        if isinstance(eps, (int, float)):
            settings["eps"] = float(eps)
        if qvl_cls in ("Qwen2_5_VLVisionBlock", "Qwen2_5_VLVisionAttention"):
            b = int(path.split("blocks.")[1].split(".")[0])
            settings["block_index"] = b
            full = (self.config or {}).get("vision_config", {}).get("fullatt_block_indexes")
            if full is not None:
                settings["attention"] = "full" if b in full else "window"
        if qvl_cls in ("Qwen2_5_VLAttention", "Qwen2_5_VLDecoderLayer"):
            settings["layer_idx"] = int(path.split("layers.")[1].split(".")[0])
        return (path, qvl_cls, inputs, outputs, settings), None


def expected_order(config, class_map, module):
    """The module paths a call of `module` passes through, in execution order, for one forward pass (the vision
    tower before the text layers; in a block norm1 before norm2)."""
    entry = class_map.get(module)
    if entry is None or config is None:
        return None
    try:
        return entry[1](config)
    except (TypeError, KeyError):
        return None


def lost_calls(folders_by_module, identified, config, class_map):
    """The framework's collision: calls of one module in the same second share a folder, so each folder keeps the
    last of them. Survivors are matched in time order to the expected sequence of instances (one forward pass
    after another); every expected call skipped before a survivor was overwritten by it."""
    report = []
    for module, folders in sorted(folders_by_module.items()):
        order = expected_order(config, class_map, module)
        if not order or len(order) < 2:
            continue
        pos = -1
        for f in folders:  # time order
            path = identified.get(f.name)
            if path is None or path not in order:
                pos = -1
                continue
            k = order.index(path)
            if k <= pos:  # a new forward pass
                pos = -1
            lost = order[pos + 1:k]
            if lost:
                report.append((f, lost))
            pos = k
    return report


def cmd_import_module_io(args: argparse.Namespace) -> None:
    try:
        _import_module_io(args)
    except ImportError_ as e:
        print(f"import: error: {e}", file=sys.stderr)
        raise SystemExit(2)


def _import_module_io(args):
    root = args.dir
    if not os.path.isdir(root):
        raise ImportError_(f"{root}: not a folder")
    config = None
    if args.config:
        try:
            with open(args.config) as f:
                config = json.load(f)
        except FileNotFoundError:
            raise ImportError_(f"{args.config}: missing") from None
        except json.JSONDecodeError as e:
            raise ImportError_(f"{args.config}: bad JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    weights = {}
    if args.weights:
        weights.update(load_framework_vision_weights(args.weights))
    if args.checkpoint:
        weights.update({k: v for k, v in load_checkpoint_state(args.checkpoint).items() if k not in weights})
    names = sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)))
    if not names:
        raise ImportError_(f"{root}: no call folders")
    folders = [ModuleIOFolder(root, n) for n in names]
    model_config = config
    if model_config is None:
        # Modules that hold a config record it as their settings (the vision tower and attention: the vision config;
        # the text attention: the text config). Enough to know the depth and build transformers' modules.
        vc = next((f.settings for f in folders if "fullatt_block_indexes" in f.settings and "depth" in f.settings), None)
        tc = next((f.settings for f in folders if "num_hidden_layers" in f.settings and "vocab_size" in f.settings), None)
        if vc or tc:
            model_config = {"vision_config": dict(vc or {}), "text_config": dict(tc or {})}
            if tc:
                model_config["num_hidden_layers"] = tc["num_hidden_layers"]
            log("import: no --config; the depth comes from the configs recorded in the modules' settings")
    # Time order (the folder stamp is the call's start, to the second); ties keep the name order.
    folders.sort(key=lambda f: (f.stamp, f.name))
    class_map = module_io_class_map()
    imp = ModuleIOImporter(model_config, weights)
    converted, unmapped, identified = [], [], {}
    for f in folders:
        got, why = imp.convert(f, class_map)
        if got is None:
            unmapped.append((f, why))
            continue
        converted.append((f, got))
        identified[f.name] = got[0]
    by_module = {}
    for f in folders:
        by_module.setdefault(f.module, []).append(f)
    lost = lost_calls(by_module, identified, model_config, class_map)

    for f, why in unmapped:
        print(f"unmapped  {f.name}: {why}")
    for f in folders:
        if f.leftovers:
            print(f"collision {f.name}: holds files of an earlier call of the same second that metadata.json does not "
                  f"name ({', '.join(f.leftovers)}): that call was overwritten")
    for f, paths in lost:
        print(f"collision {f.name}: {len(paths)} earlier call(s) of {f.module} in the same second were overwritten by "
              f"{identified[f.name]}: lost {', '.join(paths)}")
    if not converted:
        raise ImportError_(f"{root}: none of the {len(folders)} calls could be mapped to a qvl replay class")

    calls, counts = [], {}
    for f, (path, cls, inputs, outputs, settings) in converted:
        idx = counts.get(path, 0)
        counts[path] = idx + 1
        c = Call(seq=len(calls), module_path=path, module_class=cls, call_index=idx, parent=-1, settings=settings,
                 inputs=inputs, outputs=outputs, has_outputs=True)
        calls.append(c)
    floats = [t for _, (_, _, _, o, _) in converted for t in _tensors_of(o) if t.is_floating_point()]
    dtype = torch_dtype_name(floats[0].dtype) if floats else "float32"
    scenario = {
        "name": "module_io_data import",
        "source": os.path.abspath(root),
        "folders": len(folders),
        "unmapped": [{"folder": f.name, "reason": why} for f, why in unmapped],
        "lost": [{"folder": f.name, "survivor": identified[f.name], "lost": p} for f, p in lost],
        "leftovers": [{"folder": f.name, "files": f.leftovers} for f in folders if f.leftovers],
    }
    root_attrs = {
        "format": "qvl.recording",
        "format_version": FORMAT_VERSION,
        "producer": "module_io_data import (qvl record_reference.py)",
        "torch_version": str(torch.__version__),
        "attn_implementation": "as recorded by the conversion framework",
        "dtype": dtype,
        "device": "cpu",
        "scenario": json.dumps(scenario),
    }
    if config is not None:
        root_attrs["config"] = json.dumps(config, sort_keys=True)
    write_recording(args.out, calls, root_attrs)
    log(f"import: {len(calls)} of {len(folders)} calls converted ({len(unmapped)} unmapped, "
        f"{sum(len(p) for _, p in lost)} lost to collisions)")
    if args.weights_out:
        # The vision weights for qvl's C++ writer (qvl import turns them into qvl.weights, checked against config.json).
        from safetensors.torch import save_file
        vis = {k: v.contiguous() for k, v in load_framework_vision_weights(args.weights).items()}
        save_file(vis, args.weights_out)


def _tensors_of(v):
    if isinstance(v, torch.Tensor):
        return [v]
    if isinstance(v, (list, tuple)):
        return [t for x in v for t in _tensors_of(x)]
    if isinstance(v, dict):
        return [t for x in v.values() for t in _tensors_of(x)]
    return []


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    mk = sub.add_parser("make-tiny", help="build and save a small randomised checkpoint (the tiny config or a preset)")
    mk.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                    help="tiny: docs/design.md §8.3; vision-real: tiny text, two vision blocks at the real sizes; "
                         "merge3-mha: the tiny model with spatial_merge_size 3, window_size 126 and 4 KV heads")
    mk.add_argument("--out", required=True, help="output checkpoint directory (replaced atomically)")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--tie", action="store_true", help="tie_word_embeddings = true")
    mk.set_defaults(fn=cmd_make_tiny)

    rc = sub.add_parser("record", help="record one forward pass of a checkpoint")
    rc.add_argument("--model", required=True, help="Hugging Face checkpoint directory (config.json + safetensors)")
    rc.add_argument("--out", required=True, help="output .h5 recording (written atomically)")
    rc.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    rc.add_argument("--image", action="append", default=[],
                    help="image file, or synthetic:HxW[:seed]; repeat for several images")
    rc.add_argument("--video", action="append", default=[],
                    help="directory of frame images, or synthetic:TxHxW[:seed]; repeat for several videos "
                         "(placed after the images)")
    rc.add_argument("--min-pixels", type=int, default=3136,
                    help="the processors' smallest image/frame in pixels (default 56*56, the hub value); 784 keeps a "
                         "28x28 image at one merged token. Ignored when the checkpoint has its own preprocessor config")
    rc.add_argument("--fps", type=float, default=2.0, help="video frame rate (second_per_grid_ts = 2 / fps)")
    rc.add_argument("--pad-batch", type=int, default=0, metavar="K",
                    help="make a left-padded batch of 2: row 1 drops the first K tokens and is padded on the left")
    rc.add_argument("--generate", type=int, default=0, metavar="N",
                    help="also run transformers' greedy generate for N new tokens and store the token ids")
    rc.add_argument("--record-decode", action="store_true",
                    help="with --generate: also record every call of generate's prefill and of each decode step "
                         "(settings.generate_step; the KV cache by value). The file grows with N x the cache size")
    rc.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a config field before building the model, e.g. vision_config.window_size=112")
    rc.add_argument("--text-before", default=" ".join(map(str, DEFAULT_TEXT_BEFORE)),
                    help="token ids before the first image (space or comma separated)")
    rc.add_argument("--text-between", default="30 31", help="token ids between consecutive images")
    rc.add_argument("--text-after", default=" ".join(map(str, DEFAULT_TEXT_AFTER)),
                    help="token ids after the last image")
    rc.add_argument("--seed", type=int, default=0)
    rc.add_argument("--modules", action="append", default=[], metavar="PATTERN",
                    help="store only the calls of these modules (and of everything inside them) plus the top-level "
                         "call; the other calls run but are not stored. Braces expand: model.visual.blocks.{0,7,31}, "
                         "model.language_model.layers.{0..3}; fnmatch '*' works within a path. Repeatable")
    rc.add_argument("--offload", metavar="DIR",
                    help="run through accelerate's disk offload (device_map='auto', offload folder DIR), for a "
                         "model larger than memory; with --max-memory")
    rc.add_argument("--max-memory", metavar="SIZE", help="with --offload: the weights kept in memory, e.g. 16GiB")
    rc.add_argument("--name", default="custom", help="scenario name stored in the metadata")
    rc.set_defaults(fn=cmd_record)

    im = sub.add_parser("import-module-io",
                        help="convert the conversion framework's module_io_data folders into a qvl.recording "
                             "(qvl import module_io_data calls this)")
    im.add_argument("dir", help="the module_io_data folder (one <Module>_<YYYYmmdd_HHMMSS> folder per call)")
    im.add_argument("--out", required=True, help="output .h5 recording (written atomically)")
    im.add_argument("--config", help="the model's config.json (module depth, fullatt blocks; stored in the recording)")
    im.add_argument("--weights", help="the framework's vision_weights.pt (nested dict of dicts); tells instances apart")
    im.add_argument("--checkpoint", help="an HF checkpoint directory: every weight, to tell text instances apart too")
    im.add_argument("--weights-out", help="also write --weights flattened (model.visual.*) to this .safetensors file")
    im.set_defaults(fn=cmd_import_module_io)
    rw = sub.add_parser("rewrite", help="write an older recording again in the current format (checksums, call "
                                        "count), every tensor unchanged")
    rw.add_argument("src", help="the recording to read")
    rw.add_argument("out", help="output .h5 recording (written atomically; may not be src)")
    rw.set_defaults(fn=cmd_rewrite)

    args = ap.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
