"""FastFitPipeline on tiny synthetic folders: parity with an independent loop, determinism,
absent items, guidance on/off, dtypes, cache lifetime and input validation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import box_mask, independent_tryon, rand_image
from fastfit_engine import FastFitPipeline

pytestmark = pytest.mark.usefixtures("single_thread")

W, H = 48, 64


@pytest.fixture(scope="module")
def pipe(model_dir):
    return FastFitPipeline.from_pretrained(model_dir, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(7)
    person = rand_image(rng, W, H)
    refs = {
        "upper": rand_image(rng, W, H),
        "lower": rand_image(rng, W, H),
        "shoe": rand_image(rng, W // 2, H // 2),
        "bag": rand_image(rng, W // 2, H // 2),
    }
    return person, box_mask(W, H), rand_image(rng, W, H), refs


def test_matches_independent_cache_free_loop(pipe, model_dir, inputs):
    person, mask, pose, refs = inputs
    references = [("upper", refs["upper"]), ("shoe", refs["shoe"]), ("lower", refs["lower"])]
    out = np.asarray(pipe(person, mask, references, pose=pose, num_inference_steps=3, guidance_scale=2.5, seed=3))
    expected = independent_tryon(model_dir, person, mask, references, pose, 3, 2.5, 3)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    diff = np.abs(out.astype(np.float64) - expected)
    assert diff.max() <= 1.0, diff.max()  # rounding of values within float noise of .5
    assert (diff > 0.5 + 1e-3).sum() == 0
    # outside the mask the original person is kept exactly
    keep = np.asarray(mask) < 128
    assert np.array_equal(out[keep], np.asarray(person)[keep])
    assert not np.array_equal(out[~keep], np.asarray(person)[~keep])


def test_without_guidance_matches_independent_loop(pipe, model_dir, inputs):
    person, mask, _, refs = inputs
    references = [("bag", refs["bag"])]
    out = np.asarray(pipe(person, mask, references, num_inference_steps=2, guidance_scale=1.0, seed=5))
    expected = independent_tryon(model_dir, person, mask, references, None, 2, 1.0, 5)
    assert np.abs(out - expected).max() <= 1.0


def test_guidance_on_and_off_differ(pipe, inputs):
    person, mask, pose, refs = inputs
    a = np.asarray(pipe(person, mask, [("upper", refs["upper"])], pose=pose, num_inference_steps=2, guidance_scale=2.5, seed=0))
    b = np.asarray(pipe(person, mask, [("upper", refs["upper"])], pose=pose, num_inference_steps=2, guidance_scale=1.0, seed=0))
    assert not np.array_equal(a, b)


def test_deterministic_and_seed_dependent(pipe, inputs):
    person, mask, pose, refs = inputs
    refs_list = [("upper", refs["upper"]), ("lower", refs["lower"])]
    a = np.asarray(pipe(person, mask, refs_list, pose=pose, num_inference_steps=2, seed=11))
    b = np.asarray(pipe(person, mask, refs_list, pose=pose, num_inference_steps=2, seed=11))
    c = np.asarray(pipe(person, mask, refs_list, pose=pose, num_inference_steps=2, seed=12))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_public_steps_compose_to_the_call(pipe, inputs):
    """__call__ is the public preparation steps in order: run by hand they give the same pixels."""
    person, mask, pose, refs = inputs
    references = [("upper", refs["upper"]), ("shoe", refs["shoe"])]
    expected = np.asarray(pipe(person, mask, references, pose=pose, num_inference_steps=2, guidance_scale=2.5, seed=9))
    latent_hw = (H // 8, W // 8)
    cache = pipe.unet.kv_cache
    with torch.inference_mode():
        labelled = pipe.check_inputs(person, mask, references, pose, 2)
        assert [label for label, _ in labelled] == [0, 3]
        prepared = pipe.prepare_person_inputs(person, mask, pose)
        assert prepared.latent_mask.shape == (1, 1, *latent_hw)
        images = [prepared.masked] + [pipe.preprocess_image(img) for _, img in labelled]
        masked_latent, *ref_latents = pipe.encode_images(images)
        assert [tuple(x.shape) for x in ref_latents] == [(1, 4, *latent_hw), (1, 4, H // 16, W // 16)]
        generator = torch.Generator().manual_seed(9)
        scheduler, timesteps, timesteps_device = pipe.prepare_timesteps(2)
        assert len(timesteps) == 2 and timesteps_device.tolist() == timesteps
        latents = pipe.prepare_latents(latent_hw, generator, scheduler)
        model_input = pipe.prepare_model_input(masked_latent, prepared.latent_mask, rows=2)
        with pipe.prepare_references(labelled, person.size, 2.5):
            assert cache.nbytes() > 0
            for i, t in enumerate(timesteps):
                latents = pipe.denoise_step(model_input, latents, t, timesteps_device[i], scheduler, 2.5, generator)
        assert cache.nbytes() == 0 and cache.request is None
        out = np.asarray(pipe.postprocess(pipe.decode_latents(latents), prepared))
    assert np.array_equal(out, expected)


def test_absent_items_and_labels(pipe, inputs):
    """Only present items are passed; labels as names or ints are the same; each item matters."""
    person, mask, pose, refs = inputs
    kw = dict(pose=pose, num_inference_steps=2, seed=1)
    by_name = np.asarray(pipe(person, mask, [("upper", refs["upper"]), ("bag", refs["bag"])], **kw))
    by_int = np.asarray(pipe(person, mask, [(0, refs["upper"]), (4, refs["bag"])], **kw))
    only_upper = np.asarray(pipe(person, mask, [("upper", refs["upper"])], **kw))
    as_lower = np.asarray(pipe(person, mask, [("lower", refs["upper"]), ("bag", refs["bag"])], **kw))
    assert np.array_equal(by_name, by_int)
    assert not np.array_equal(by_name, only_upper)
    assert not np.array_equal(by_name, as_lower)


def test_pose_changes_result(pipe, inputs):
    person, mask, pose, refs = inputs
    a = np.asarray(pipe(person, mask, [("upper", refs["upper"])], pose=pose, num_inference_steps=1, seed=0))
    b = np.asarray(pipe(person, mask, [("upper", refs["upper"])], pose=None, num_inference_steps=1, seed=0))
    # a pose of another size is resized to the person
    c = np.asarray(pipe(person, mask, [("upper", refs["upper"])], pose=pose.resize((W * 2, H * 2)), num_inference_steps=1, seed=0))
    assert not np.array_equal(a, b)
    assert c.shape == a.shape


def test_bf16_path_close_to_fp32(model_dir, inputs):
    person, mask, pose, refs = inputs
    p16 = FastFitPipeline.from_pretrained(model_dir, device="cpu", dtype=torch.bfloat16)
    assert p16.unet.dtype == torch.bfloat16 and p16.vae.dtype == torch.bfloat16
    p32 = FastFitPipeline.from_pretrained(model_dir, device="cpu", dtype=torch.float32)
    refs_list = [("upper", refs["upper"]), ("shoe", refs["shoe"])]
    a = np.asarray(p16(person, mask, refs_list, pose=pose, num_inference_steps=2, seed=2)).astype(np.float64)
    b = np.asarray(p32(person, mask, refs_list, pose=pose, num_inference_steps=2, seed=2)).astype(np.float64)
    keep = np.asarray(mask) < 128
    assert np.abs(a - b)[keep].max() <= 2  # repaint path: bf16 rounding of the person only
    assert np.abs(a - b)[~keep].mean() < 12  # generated region: same computation up to bf16 noise
    c = np.asarray(p16(person, mask, refs_list, pose=pose, num_inference_steps=2, seed=2)).astype(np.float64)
    assert np.array_equal(a, c)


def test_gpu_options_keep_numerics(model_dir, pipe, inputs):
    """fast_group_norm and channels_last (GPU defaults/options) give the same image on CPU."""
    person, mask, pose, refs = inputs
    refs_list = [("upper", refs["upper"]), ("lower", refs["lower"])]
    fast = FastFitPipeline.from_pretrained(model_dir, device="cpu", dtype=torch.float32, fast_group_norm=True, channels_last=True)
    a = np.asarray(pipe(person, mask, refs_list, pose=pose, num_inference_steps=2, seed=0)).astype(int)
    b = np.asarray(fast(person, mask, refs_list, pose=pose, num_inference_steps=2, seed=0)).astype(int)
    assert np.abs(a - b).max() <= 1
    conv = lambda p: p.unet.conv_in.weight
    assert conv(pipe).is_contiguous() and not conv(pipe).is_contiguous(memory_format=torch.channels_last)  # CPU default
    assert conv(fast).is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="unknown attention_backend"):
        fast.set_attention_backend("fastest")


def test_callback_and_cache_cleared_even_on_error(pipe, inputs):
    person, mask, pose, refs = inputs
    refs_list = [("upper", refs["upper"]), ("lower", refs["lower"])]
    calls = []
    good = np.asarray(pipe(person, mask, refs_list, num_inference_steps=3, seed=4, callback=lambda i, n: calls.append((i, n))))
    assert calls == [(0, 3), (1, 3), (2, 3)]
    cache = pipe.unet.kv_cache
    assert cache.nbytes() == 0 and cache.request is None

    def boom(i, n):
        assert cache.nbytes() > 0  # the cache is live during the loop
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        pipe(person, mask, refs_list, num_inference_steps=3, seed=4, callback=boom)
    assert cache.nbytes() == 0 and cache.request is None and cache.mode == "off"
    again = np.asarray(pipe(person, mask, refs_list, num_inference_steps=3, seed=4))
    assert np.array_equal(good, again)


def test_unconditional_memo_reused_and_exact(model_dir, inputs):
    """The zero-reference K/V are computed once per (label, size); reuse changes no pixel."""
    person, mask, pose, refs = inputs
    refs_list = [("upper", refs["upper"]), ("shoe", refs["shoe"]), ("lower", refs["lower"])]
    memo_pipe = FastFitPipeline.from_pretrained(model_dir, device="cpu", dtype=torch.float32)
    fresh_pipe = FastFitPipeline.from_pretrained(model_dir, device="cpu", dtype=torch.float32)
    fresh_pipe.unconditional_memo_size = 0  # recompute every time
    passes = []
    inner = memo_pipe.unet.forward_reference
    memo_pipe.unet.forward_reference = lambda x, labels, idx, rows=None: passes.append((labels.tolist(), rows)) or inner(x, labels, idx, rows)
    run = lambda p: np.asarray(p(person, mask, refs_list, pose=pose, num_inference_steps=3, seed=2))
    first = run(memo_pipe)
    # three zero-latent passes (batch 1 each, row 0), then one conditional pass per reference into row 1
    assert passes == [([0], [0]), ([3], [0]), ([1], [0]), ([0], [1]), ([3], [1]), ([1], [1])]
    assert len(memo_pipe._unconditional_memo) == 3
    passes.clear()
    second = run(memo_pipe)
    assert passes == [([0], [1]), ([3], [1]), ([1], [1])]
    assert np.array_equal(first, second)
    assert np.array_equal(first, run(fresh_pipe)) and len(fresh_pipe._unconditional_memo) == 0
    expected = independent_tryon(model_dir, person, mask, refs_list, pose, 3, 2.5, 2)
    assert np.abs(second.astype(np.float64) - expected).max() <= 1.0
    # a new size is a new entry; without guidance nothing is memoised; the memo is bounded (LRU)
    passes.clear()
    memo_pipe(person, mask, [("upper", refs["shoe"])], num_inference_steps=1)
    assert passes == [([0], [0]), ([0], [1])] and len(memo_pipe._unconditional_memo) == 4
    memo_pipe(person, mask, [("bag", refs["bag"])], num_inference_steps=1, guidance_scale=1.0)
    assert len(memo_pipe._unconditional_memo) == 4
    memo_pipe.unconditional_memo_size = 2
    memo_pipe(person, mask, [("bag", refs["bag"])], num_inference_steps=1)
    keys = list(memo_pipe._unconditional_memo)
    assert [(k[0], k[1]) for k in keys] == [(0, (H // 16, W // 16)), (4, (H // 16, W // 16))]
    memo_pipe.clear_unconditional_memo()
    assert len(memo_pipe._unconditional_memo) == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(references=[]), "at least one reference"),
        (dict(references=[("hat", None)]), "unknown garment label 'hat'"),
        (dict(references=[(7, None)]), "unknown garment label 7"),
        (dict(num_inference_steps=0), "num_inference_steps must be >= 1"),
        (dict(mask=Image.new("L", (W, H + 8))), "mask size 48x72 != person size 48x64"),
        (dict(person=Image.new("RGB", (W + 4, H)), mask=Image.new("L", (W + 4, H))), "multiple of 8"),
        (dict(references=[("upper", Image.new("RGB", (20, 24)))]), r"reference 0 \(upper\) size 20x24"),
        (dict(pose=np.zeros((H, W, 3))), "pose must be a PIL image"),
        (dict(seed=1.5), r"seed must be an integer >= 0 or None, got 1\.5"),
        (dict(seed=-1), "seed must be an integer >= 0 or None, got -1"),
    ],
)
def test_input_validation(pipe, inputs, kwargs, match):
    person, mask, _, refs = inputs
    args = dict(person=person, mask=mask, references=[("upper", refs["upper"])], num_inference_steps=1)
    args.update(kwargs)
    if args["references"] and args["references"][0][1] is None:
        args["references"] = [(args["references"][0][0], refs["upper"])]
    with pytest.raises(ValueError, match=match):
        pipe(**args)


def test_generate_takes_checked_numbers_as_they_are(pipe, inputs, monkeypatch):
    """The front door parses, checks and defaults steps, seed and guidance once (request/schema.py,
    or __call__ for the Python API); generate() has no defaults of its own, checks nothing again
    and hands the numbers to the scheduler and the generator as given."""
    import inspect

    from fastfit_engine.model import pipeline as pipeline_module

    params = inspect.signature(type(pipe).generate).parameters
    for name in ("num_inference_steps", "guidance_scale", "seed"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY and params[name].default is inspect.Parameter.empty
    person, mask, pose, refs = inputs
    references = [("upper", refs["upper"])]
    expected = np.asarray(pipe(person, mask, references, pose=pose, num_inference_steps=2, guidance_scale=1.5, seed=9))

    def refuse(*args, **kwargs):
        raise AssertionError("checked or drawn again inside generate()")

    monkeypatch.setattr(pipeline_module, "check_inputs", refuse)
    monkeypatch.setattr(pipeline_module, "check_seed", refuse)
    monkeypatch.setattr(pipeline_module, "draw_seed", refuse)
    monkeypatch.setattr(type(pipe), "check_inputs", staticmethod(refuse))
    set_steps, seeds = [], []
    scheduler_cls = type(pipe.scheduler)
    real_set, real_seed = scheduler_cls.set_timesteps, torch.Generator.manual_seed
    monkeypatch.setattr(scheduler_cls, "set_timesteps", lambda self, n, *a, **k: set_steps.append(n) or real_set(self, n, *a, **k))
    with pipe.prepare_references(references, person.size, 1.5) as prepared:
        torch_generator = torch.Generator

        class RecordingGenerator(torch_generator):  # what reaches manual_seed, as given
            def manual_seed(self, seed):
                seeds.append(seed)
                return real_seed(self, seed)

        monkeypatch.setattr(torch, "Generator", RecordingGenerator)
        out = pipe.generate(person, mask, prepared, pose=pose, num_inference_steps=2, guidance_scale=1.5, seed=9)
    assert set_steps == [2] and seeds == [9] and type(seeds[0]) is int
    assert np.array_equal(np.asarray(out), expected)


def test_wrong_folders_and_keys(model_dir, tmp_path):
    import shutil

    with pytest.raises(FileNotFoundError, match="model folder not found"):
        FastFitPipeline.from_pretrained(tmp_path / "nope", device="cpu")
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(FileNotFoundError, match=r"missing vae/"):
        FastFitPipeline.from_pretrained(broken, device="cpu")
    shutil.copytree(model_dir / "vae", broken / "vae")
    (broken / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        FastFitPipeline.from_pretrained(broken, device="cpu")
    shutil.copytree(model_dir / "scheduler", broken / "scheduler", dirs_exist_ok=True)
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights in .*vae"):
        FastFitPipeline.from_pretrained(broken, device="cpu")

    from safetensors.torch import load_file, save_file

    state = load_file(str(model_dir / "vae" / "diffusion_pytorch_model.safetensors"))
    state.pop("decoder.conv_out.bias")
    state["encoder.extra.weight"] = torch.zeros(1)
    save_file(state, str(broken / "vae" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match=r"VAE weights .*missing keys \(1\): decoder.conv_out.bias.*unexpected keys \(1\): encoder.extra.weight"):
        FastFitPipeline.from_pretrained(broken, device="cpu")

    cfg = json.loads((model_dir / "vae" / "config.json").read_text())
    (broken / "vae" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        FastFitPipeline.from_pretrained(broken, device="cpu")
    assert cfg["scaling_factor"] == 0.18215


def test_compiled_paths_static_shapes_and_same_image(model_dir, pipe, inputs):
    """compile_vae traces static graphs; compile_unet one step graph for every layout, whose only
    symbolic size is the reference K/V buffers' token count; neither changes a pixel.

    Uses a recording dynamo backend that runs the traced graph as is, so this checks the
    compiled plumbing (cache mode around the graph, shape handling) without a C++ toolchain.
    """
    import torch._dynamo

    person, mask, pose, refs = inputs
    graphs = []

    def symbolic_dims(value) -> list[int]:
        if isinstance(value, torch.Tensor):
            return [i for i, d in enumerate(value.shape) if isinstance(d, torch.SymInt)]
        return []

    def recording_backend(gm, example_inputs):
        values = [n.meta.get("example_value") for n in gm.graph.nodes if n.op == "placeholder"]
        graphs.append({
            "symbolic": any(isinstance(v, torch.SymInt) or symbolic_dims(v) for v in values),
            "dims": {(v.ndim, tuple(symbolic_dims(v))) for v in values if symbolic_dims(v)},
            "unet": any(isinstance(v, torch.Tensor) and v.ndim == 4 and v.shape[1] == 9 for v in values),
        })
        return gm.forward

    torch._dynamo.reset()
    compiled = FastFitPipeline.from_pretrained(model_dir, device="cpu", dtype=torch.float32)
    compiled.compile_unet(backend=recording_backend)
    compiled.compile_vae(backend=recording_backend)
    layouts = [[("upper", refs["upper"]), ("lower", refs["lower"])], [("upper", refs["upper"]), ("shoe", refs["shoe"])]]
    try:
        outs = [np.asarray(compiled(person, mask, r, pose=pose, num_inference_steps=2, seed=1)) for r in layouts + layouts[:1]]
    finally:
        torch._dynamo.reset()
    steps = [g for g in graphs if g["unet"]]
    assert len(steps) == 1 and steps[0]["dims"] == {(3, (1,))}  # [rows, tokens, channels] buffers
    assert len(graphs) > 1 and not any(g["symbolic"] for g in graphs if not g["unet"])  # VAE: static
    assert np.array_equal(outs[0], outs[2])
    for r, out in zip(layouts, outs):
        assert np.array_equal(out, np.asarray(pipe(person, mask, r, pose=pose, num_inference_steps=2, seed=1)))
