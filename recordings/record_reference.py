#!/usr/bin/env python3
"""Reference recorder: runs the real Hugging Face transformers Qwen2.5-VL and records every module call.

Two subcommands:

  make-tiny   build the tiny config (docs/design.md §8.3, small vocabulary), randomise every weight
              (norms 1 + 0.1*randn, non-zero biases) and save a Hugging Face checkpoint
              (config.json + model.safetensors).
  record      load any Qwen2.5-VL checkpoint directory, run one forward pass on the given inputs
              (image files or synthetic images, token ids before/after) with eager attention, and write
              every call of every hooked module class and wrapped free function to one HDF5 file in the
              qvl.recording schema (docs/design.md §3), in execution (pre-)order.

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

FORMAT_VERSION = 1

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
    "vision-real": {"vision_config": {"depth": 2, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                                      "window_size": 112, "fullatt_block_indexes": [1], "out_hidden_size": 64}},
}
DEFAULT_TEXT_BEFORE = [17, 42, 99]
DEFAULT_TEXT_AFTER = [23, 77, 128, 5]


def log(msg: str) -> None:
    print(f"[record] {msg}", file=sys.stderr, flush=True)


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


def video_processor_for(model_dir: str):
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    if os.path.isfile(os.path.join(model_dir, "video_preprocessor_config.json")):
        return Qwen2VLVideoProcessor.from_pretrained(model_dir)
    # Same pixel bounds as the image processor default below, so small synthetic frames keep their size.
    return Qwen2VLVideoProcessor(size={"shortest_edge": 3136, "longest_edge": 12845056})


def image_processor_for(model_dir: str):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if os.path.isfile(os.path.join(model_dir, "preprocessor_config.json")):
        return Qwen2VLImageProcessorPil.from_pretrained(model_dir)
    # The hub preprocessor values (docs/design.md §8.4): min 56*56, max 16384*28*28 pixels.
    return Qwen2VLImageProcessorPil(size={"shortest_edge": 3136, "longest_edge": 12845056})


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
    def __init__(self, model, shadow_model=None, fullatt=()):
        self.model = model
        self.shadow_modules = dict(shadow_model.named_modules()) if shadow_model is not None else None
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
        call = Call(seq=len(self.calls), module_path=path, module_class=cls, call_index=idx,
                    parent=self.stack[-1] if self.stack else -1, settings=settings,
                    inputs=snapshot(inputs))
        self.calls.append(call)
        self.stack.append(call.seq)
        return call

    def end(self, call: Call, output, shadow_fn=None) -> None:
        popped = self.stack.pop()
        assert popped == call.seq, "recorder call stack out of order"
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
            shadow_inputs = (upcast(args), upcast(kwargs)) if self.shadow_modules is not None else None
            pending.append((call, shadow_inputs))
            return None

        def post(mod, args, kwargs, output):
            if self.suspended:
                return None
            call, shadow_inputs = pending.pop()
            shadow_fn = None
            if shadow_inputs is not None:
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
            if self.shadow_modules is not None:
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
        kw = {}
        if arr.nbytes >= 1024 and arr.ndim > 0:
            kw = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
        ds = parent.create_dataset(name, data=arr, **kw)
        ds.attrs["kind"] = "tensor"
        ds.attrs["dtype"] = dtype_name
        seen[key] = ds
        return
    if value is None:
        g = parent.create_group(name)
        g.attrs["kind"] = "none"
        return
    if isinstance(value, bool):
        ds = parent.create_dataset(name, data=np.uint8(value))
        ds.attrs["kind"] = "bool"
        return
    if isinstance(value, int):
        ds = parent.create_dataset(name, data=np.int64(value))
        ds.attrs["kind"] = "int"
        return
    if isinstance(value, float):
        ds = parent.create_dataset(name, data=np.float64(value))
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


def write_recording(path: str, calls: list[Call], root_attrs: dict) -> None:
    out = os.path.abspath(path)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".h5", dir=os.path.dirname(out))
    os.close(fd)
    try:
        with h5py.File(tmp, "w", track_order=True) as f:
            for k, v in root_attrs.items():
                f.attrs[k] = v
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
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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


def cmd_record(args: argparse.Namespace) -> None:
    if args.record_decode and args.generate <= 0:
        raise SystemExit("record: --record-decode needs --generate N (N > 0)")
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
        obj, parts = config, k.split(".")
        for p in parts[:-1]:
            obj = getattr(obj, p)
        if not hasattr(obj, parts[-1]):
            raise SystemExit(f"record: --set {k}: the config has no such field")
        setattr(obj, parts[-1], v)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        args.model, config=config, dtype=dtype, attn_implementation="eager").eval()
    config = model.config
    shadow = None
    if dtype != torch.float32:
        # The float32 module on the same weights: the bf16 weights upcast, so only arithmetic differs.
        shadow = copy.deepcopy(model).float().eval()

    # Inputs: images through the real HF image processor; token ids around the vision runs.
    images = [load_image(s, i) for i, s in enumerate(args.image)]
    n_prompt_images = len(images)
    if args.pad_batch and images:
        images = images + images  # the second row of the batch carries the same images
    pixel_values = image_grid_thw = None
    if images:
        proc = image_processor_for(args.model)
        pp = proc(images=images, return_tensors="pt")
        pixel_values, image_grid_thw = pp["pixel_values"], pp["image_grid_thw"]
    videos = [load_video(s, i) for i, s in enumerate(args.video)]
    pixel_values_videos = video_grid_thw = second_per_grid_ts = None
    if videos:
        vproc = video_processor_for(args.model)
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
    rec = Recorder(model, shadow, fullatt=fullatt)
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
    write_recording(args.out, rec.calls, root)
    log(f"wrote {args.out}: {len(rec.calls)} calls")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    mk = sub.add_parser("make-tiny", help="build and save a small randomised checkpoint (the tiny config or a preset)")
    mk.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                    help="tiny: reference §3.3; vision-real: tiny text, two vision blocks at the real sizes")
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
    rc.add_argument("--name", default="custom", help="scenario name stored in the metadata")
    rc.set_defaults(fn=cmd_record)

    args = ap.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
