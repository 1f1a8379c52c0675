"""Plain helpers shared by the tests (fixtures live in conftest.py): synthetic person and garment
images, PNG bytes, tiny synthetic model folders and an independent, cache-free reference
computation of the semi-attention UNet and the whole try-on loop."""
from __future__ import annotations

import io
import math
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from fastfit_engine.synthetic import write_fastfit_model
from fastfit_engine.model.unet import FastFitUNet

# Small but valid: multiples of 64, 3:4 like the product size.
TEST_RESOLUTION = (192, 256)

_TINY_CACHE: dict[int, Path] = {}


def make_person(w: int = 300, h: int = 400, seed: int = 0) -> Image.Image:
    """A smooth synthetic 'photo': a light background with a darker upright figure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([200 + 30 * x / w, 190 + 30 * y / h, np.full_like(x, 180)], -1)
    body = ((x - w / 2) / (w * 0.18)) ** 2 + ((y - h * 0.55) / (h * 0.4)) ** 2 < 1
    head = ((x - w / 2) / (w * 0.08)) ** 2 + ((y - h * 0.13) / (h * 0.08)) ** 2 < 1
    img[body] = (60, 70, 140)
    img[head] = (220, 170, 140)
    img += rng.normal(0, 3, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def make_garment(colour=(200, 30, 40), w: int = 120, h: int = 160) -> Image.Image:
    img = Image.new("RGB", (w, h), (255, 255, 255))
    img.paste(Image.new("RGB", (w // 2, h // 2), colour), (w // 4, h // 4))
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (the pixel data is not even there)."""
    data = bytearray(png_bytes(Image.new("L", (1, 1))))
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def tiny_model_dir(root: Path, seed: int = 0) -> Path:
    if seed not in _TINY_CACHE:
        _TINY_CACHE[seed] = write_fastfit_model(root / f"tiny_{seed}", tiny=True, seed=seed)
    return _TINY_CACHE[seed]


def rand_image(rng: np.random.Generator, w: int, h: int, mode: str = "RGB") -> Image.Image:
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def box_mask(w: int, h: int) -> Image.Image:
    m = np.zeros((h, w), np.uint8)
    m[h // 5 : h * 4 // 5, w // 6 : w * 5 // 6] = 255
    m[0, 0] = 127  # below the 0.5 threshold: must stay "keep"
    m[h - 1, w - 1] = 128  # at the threshold: repaint
    return Image.fromarray(m)


class NaiveSemiAttention:
    """Cache-free processor: records each reference's normalized hidden states at this layer, and in
    the denoising pass recomputes their K/V from scratch with separate q/k/v projections and a
    float64 softmax over [references in order, then the person]."""

    def __init__(self) -> None:
        self.mode = "record"
        self.recorded: list[torch.Tensor] = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        x = hidden_states
        q = attn.to_q(x)
        if self.mode == "record":
            self.recorded.append(x.clone())
            keys_src = [x]
        else:
            keys_src = list(self.recorded) + [x]
        k = torch.cat([attn.to_k(s) for s in keys_src], dim=1)
        v = torch.cat([attn.to_v(s) for s in keys_src], dim=1)
        b, n, c = q.shape
        hd = c // attn.heads

        def heads(t):
            return t.double().view(b, -1, attn.heads, hd).transpose(1, 2)

        scores = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(hd)
        out = scores.softmax(-1) @ heads(v)
        out = out.transpose(1, 2).reshape(b, n, c).to(x.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def naive_unet(model_dir: Path, dtype=torch.float32) -> tuple[FastFitUNet, list[NaiveSemiAttention]]:
    unet = FastFitUNet.from_pretrained(model_dir / "unet", device="cpu", dtype=dtype)
    procs = []
    for _, attn, _ in unet.self_attention_layers():
        proc = NaiveSemiAttention()
        attn.set_processor(proc)
        procs.append(proc)
    return unet, procs


def naive_reference_then_denoise(unet, procs, ref_latents, ref_labels, denoise_inputs):
    """Reference passes one at a time (full UNet, self-attention only), then denoising calls.

    ``ref_latents``: list of [B,4,h,w]; ``denoise_inputs``: list of (sample [B,9,H,W], t)."""
    record_references(unet, procs, ref_latents, ref_labels)
    return [unet.forward(x, t, None) for x, t in denoise_inputs]


def record_references(unet, procs, ref_latents, ref_labels) -> None:
    """Full reference passes, one per latent, recording K/V; leaves the processors reading."""
    for p in procs:
        p.mode, p.recorded = "record", []
    for lat, label in zip(ref_latents, ref_labels):
        unet.forward(lat, None, torch.full((lat.shape[0],), label, dtype=torch.int64))
    for p in procs:
        p.mode = "read"


def independent_tryon(model_dir: Path, person, mask, references, pose, steps, guidance, seed) -> np.ndarray:
    """The whole try-on written from the paper's description (arXiv 2508.20586), with the cache-free UNet above (fp32, CPU)."""
    from diffusers import AutoencoderKL, DDPMScheduler

    from fastfit_engine.model.loading import load_vae

    labels_map = {"upper": 0, "lower": 1, "overall": 2, "shoe": 3, "bag": 4}
    vae: AutoencoderKL = load_vae(model_dir / "vae", "cpu", torch.float32)
    sf = vae.config.scaling_factor
    unet, procs = naive_unet(model_dir)
    sched = DDPMScheduler.from_pretrained(str(model_dir / "scheduler"))

    def to_x(img):
        a = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)[None].float()
        return a / 127.5 - 1

    with torch.no_grad():
        px = to_x(person)
        m = (torch.from_numpy(np.array(mask.convert("L"))).float() / 255 >= 0.5).float()[None, None]
        if pose is not None:
            pz = torch.from_numpy(np.array(pose.convert("RGB"))).permute(2, 0, 1)[None].float() / 255
            masked = px * (1 - m) + m * pz
        else:
            masked = px * (1 - m)
        enc = lambda x: vae.encode(x).latent_dist.mode() * sf  # noqa: E731
        masked_lat = enc(masked)
        h, w = masked_lat.shape[-2:]
        lmask = F.interpolate(m, size=(h, w), mode="nearest")
        gen = torch.Generator("cpu").manual_seed(seed)
        latents = torch.randn((1, 4, h, w), generator=gen)
        sched.set_timesteps(steps)
        cfg = guidance > 1
        refs, labels = [], []
        for label, img in references:
            lab = labels_map[label] if isinstance(label, str) else int(label)
            lat = enc(to_x(img))
            refs.append(torch.cat([torch.zeros_like(lat), lat]) if cfg else lat)
            labels.append(lab)
        record_references(unet, procs, refs, labels)
        for t in sched.timesteps:
            inp = torch.cat([latents, lmask, masked_lat], dim=1)
            if cfg:
                inp = torch.cat([inp, inp])
            eps = unet.forward(inp, t, None)
            if cfg:
                u, c = eps.chunk(2)
                eps = u + guidance * (c - u)
            latents = sched.step(eps, t, latents, generator=gen).prev_sample
        img = vae.decode(latents / sf).sample
        img = img * m + (1 - m) * px
        img = (img / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    return img * 255.0  # float, before rounding


def single_thread() -> Iterator[None]:
    """Tiny models run faster on one intra-op thread, and a shared 2-core box with other test
    processes makes OpenMP thread teams stall; restore the setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def runs_after_lock_is_released(
    lock, module: torch.nn.Module, call: Callable[[], object], hold_s: float = 1.0
) -> tuple[object, bool]:
    """``call()`` on a second thread while this thread holds ``lock`` for ``hold_s`` seconds.

    Asserts that ``module``'s forward pass (the parser's network) starts only once the lock is
    released; returns what ``call()`` gave and cuDNN's TF32 switch as the forward pass saw it.
    ``hold_s`` is far longer than the tiny parsers' preparation, so a parser that ignored the
    lock would reach its network inside the hold."""
    order: list[str] = []
    started = threading.Event()
    outcome: dict[str, object] = {}

    def mark(_module, _args):
        order.append("forward")
        outcome["tf32"] = torch.backends.cudnn.allow_tf32
        started.set()

    def work():
        try:
            outcome["value"] = call()
        except BaseException as exc:  # re-raised on the test's thread
            outcome["error"] = exc

    hook = module.register_forward_pre_hook(mark)
    try:
        with lock:
            worker = threading.Thread(target=work)
            worker.start()
            assert not started.wait(hold_s), "the network ran while the lock was held"
            order.append("released")
        worker.join(timeout=120)
    finally:
        hook.remove()
    assert not worker.is_alive(), "the call did not finish after the lock was released"
    if "error" in outcome:
        raise outcome["error"]
    assert order[:2] == ["released", "forward"], order
    return outcome["value"], outcome["tf32"]


class NoDiffusion:
    """The real pipeline's preparation methods, but no denoising run (for the mask preview tests)."""

    def __init__(self, pipeline):
        self._pipeline = pipeline

    def __getattr__(self, name):
        return getattr(self._pipeline, name)

    def __call__(self, *args, **kwargs):
        raise AssertionError("a preview must not run diffusion")


def stop_process(proc, log) -> tuple[int | None, str]:
    """SIGTERM a server process (graceful stop; killed if it takes over 60 s); (exit code, its log)."""
    import signal

    proc.send_signal(signal.SIGTERM)
    code = None
    try:
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.seek(0)
        output = log.read()
        log.close()
    return code, output


def multipart_body(files: dict[str, bytes | Path], fields: dict[str, str]) -> tuple[bytes, str]:
    """A multipart/form-data body for a real HTTP client: (body, Content-Type). Files are bytes or
    paths; text fields come first."""
    import uuid

    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, data in files.items():
        filename = data.name if isinstance(data, Path) else f"{name}.png"
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                  "Content-Type: application/octet-stream\r\n\r\n".encode())
        out.write(data.read_bytes() if isinstance(data, Path) else data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """float64 softmax(q k^T / sqrt(d)) v over (batch, tokens, heads, dim)."""
    q, k, v = (t.double().permute(0, 2, 1, 3) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return (w @ v).permute(0, 2, 1, 3)


def attention_qkv(head_dim: int, dtype=torch.float32, q_tokens=12, kv_tokens=20, heads=2, seed=0):
    """Random (batch 2, tokens, heads, head_dim) q, k, v; q a view into a fused projection output,
    like the attention processor's."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(2, q_tokens, 3 * heads * head_dim, generator=g).to(dtype)
    q = qkv[..., : heads * head_dim].view(2, q_tokens, heads, head_dim)
    k = torch.randn(2, kv_tokens, heads, head_dim, generator=g).to(dtype)
    v = torch.randn(2, kv_tokens, heads, head_dim, generator=g).to(dtype)
    return q, k, v


class OpRecorder(TorchDispatchMode):
    """Records the name of every ATen/custom op dispatched inside the block."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))
