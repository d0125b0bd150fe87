"""tools/memory_model.py, the model of a training step's peak memory (eager against ours): its
counter on a hand-made sequence of allocations, its stubs (nothing heavy computed) against the
same step computed, and the whole tool on the paper U-Net at batch 1."""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import memory_model as mm  # noqa: E402


def small(size=92, batch=2):
    import kernel_model as km
    return km.ModelConfig("small", 1, 2, size, "valid", batch, base_channels=64, depth=2)


def test_counter_counts_each_storage_from_its_allocation_to_its_free():
    counter = mm.LiveBytes()
    with mm.counting_mode(counter, lambda: "here"):
        a = torch.ones(1000)                      # 4000 B
        view = a[10:]                             # a view: nothing
        a.mul_(2)                                 # in place: nothing
        b = a * 2                                 # 8000
        assert counter.live == 8000
        del b
        assert counter.live == 4000
        x = torch.ones(500, requires_grad=True)   # 6000
        y = (x * 3).sin()                         # x * 3, kept for sin's backward, and y: 10000
        assert counter.live == 10000
        del y                                     # its graph goes, and x * 3 with it
        assert counter.live == 6000
        del view, a
        assert counter.live == 2000
    assert counter.peak == 10000
    assert sorted(label for _, label in counter.at_peak.values()) == [
        "here mul (500,) float32", "here ones (1000,) float32", "here ones (500,) float32",
        "here sin (500,) float32"]


@pytest.mark.parametrize("stub", [True, False])
def test_a_heavy_op_is_counted_at_its_real_size_computed_or_not(stub):
    counter = mm.LiveBytes()
    cl = torch.channels_last
    x, w = torch.ones(1, 2, 8, 8), torch.ones(3, 2, 3, 3).to(memory_format=cl)
    with mm.counting_mode(counter, lambda: "", stub_heavy=stub):
        y = F.conv2d(x.to(memory_format=cl), w)
    assert counter.peak == y.numel() * 4 + 2 * 8 * 8 * 4   # the channels_last copy of x, and y
    assert y.shape == (1, 3, 6, 6) and y.is_contiguous(memory_format=torch.channels_last)
    assert float(y.abs().sum()) == (0.0 if stub else 18.0 * y.numel())   # stubs are zeros


def test_the_stubs_allocate_what_the_eager_step_allocates():
    """The eager step of a small U-Net with its convolutions and pools computed, and with them
    stubbed: the same peak, made of the same tensors."""
    stubbed = mm.step_peak(small(), "eager")
    computed = mm.step_peak(small(), "eager", stub_heavy=False)
    assert stubbed["peak_bytes"] == computed["peak_bytes"] > 0
    assert stubbed["at_peak"] == computed["at_peak"]
    assert stubbed["peak_where"] == computed["peak_where"]


@pytest.mark.parametrize("provider", ["triton", "cuda"])
def test_ours_keeps_less_than_eager_and_no_pool_indices(provider):
    """A U-Net whose activations outweigh its weights: our step's peak is below eager's, and
    nothing alive then is int64 (eager keeps its max-pools' indices; ours recompute the argmax
    from y)."""
    why = mm._unavailable(provider)
    if why:
        pytest.skip(why)
    cfg = small(188)
    eager = mm.step_peak(cfg, "eager")
    ours = mm.step_peak(cfg, provider)
    assert ours["backends"] == [provider]
    assert ours["peak_bytes"] < eager["peak_bytes"]
    assert any("int64" in g["label"] and "max_pool2d_with_indices" in g["label"]
               for g in eager["at_peak"])
    assert not any("int64" in g["label"] for g in ours["at_peak"] if "target" not in g["label"])


def test_the_valid_encoders_output_is_kept_once():
    """backend="triton", valid U-Net: what each encoder step's fused conv+pool keeps alive at the
    peak is its output y once (the skip its decoder reads and the ring of y around it) and the
    pooled map, not y whole beside a cropped copy of it."""
    why = mm._unavailable("triton")
    if why:
        pytest.skip(why)
    cfg = small(188)
    res = mm.step_peak(cfg, "triton")
    # 188 -> 186 -> y 184, pooled 92 -> 90 -> y 88, pooled 44; bf16
    for level, (c, y) in enumerate([(64, 184), (128, 88)]):
        kept = [g for g in res["at_peak"] if g["label"].startswith(f"fwd down.{level}.2 empty")]
        assert len(kept) == 3, kept                                  # skip, ring, pooled
        assert sum(g["bytes"] for g in kept) == cfg.batch * c * (y * y + (y // 2) ** 2) * 2


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_recomputing_the_up_convs_keeps_none_of_them(backend):
    """UNet(checkpointing="up"): no up-sampled map (nor the cuda backend's concat buffer) kept
    from the forward is alive at the peak, which is lower; with triton by more than the largest
    of them (the concat conv's backward runs its weight gradient, the one reader of the map made
    again, before its input gradient's buffer exists; the cuda backend's one backward op needs
    both at once)."""
    why = mm._unavailable(backend)
    if why:
        pytest.skip(why)
    cfg = small(188)

    def up_maps(res):   # (not the next conv's weight cast, made while the layer is up.N.up)
        return [g for g in res["at_peak"] if g["label"].startswith("fwd up.")
                and ".up " in g["label"] and "_to_copy" not in g["label"]]

    keep = mm.step_peak(cfg, backend)
    again = mm.step_peak(cfg, f"{backend}_up")
    assert up_maps(keep) and not up_maps(again)
    saved = max(g["bytes"] for g in up_maps(keep)) if backend == "triton" else 0
    assert again["peak_bytes"] < keep["peak_bytes"] - saved


@pytest.mark.parametrize("provider", ["triton", "cuda"])
def test_inference_keeps_less_than_eager_and_than_training(provider):
    """The inference step (eval mode, no gradients): ours keeps less than eager (whose skips
    are whole maps until the decoder crops them, and whose pools make int64 indices even
    then) and less than our training step; its peak is in the forward."""
    why = mm._unavailable(provider)
    if why:
        pytest.skip(why)
    cfg = small(188)
    eager = mm.step_peak(cfg, "eager", mode="infer")
    ours = mm.step_peak(cfg, provider, mode="infer")
    train = mm.step_peak(cfg, provider)
    assert ours["mode"] == "infer" and ours["backends"] == [provider]
    assert ours["peak_bytes"] < eager["peak_bytes"]
    assert ours["peak_bytes"] < train["peak_bytes"]
    assert ours["peak_where"].startswith("fwd ") and eager["peak_where"].startswith("fwd ")


def test_the_tool_writes_its_table(tmp_path):
    out = tmp_path / "memory_model.md"
    assert mm.main(["--models", "valid572:1", "--providers", "eager,triton,triton_ckpt",
                    "--out", str(out)]) == 0
    text = out.read_text()
    assert text.splitlines()[0] == "# Memory model: model, not measurement"
    res = json.loads((tmp_path / "memory_model.json").read_text())
    rows = {r["provider"]: r for r in res[0]["rows"]}
    assert res[0]["batch"] == 1 and set(rows) == {"eager", "triton", "triton_ckpt"}
    assert rows["eager"]["ratio_to_eager"] == 1.0
    # checkpointing keeps less than keeping every activation
    assert rows["triton_ckpt"]["peak_bytes"] < rows["triton"]["peak_bytes"]
    for r in rows.values():
        assert f"{r['peak_bytes'] / 2**30:.2f}" in text
    # inference: one row per backend (checkpointing is a training choice), in its own table
    infer = {r["provider"]: r for r in res[0]["infer_rows"]}
    assert set(infer) == {"eager", "triton"} and all(r["mode"] == "infer" for r in infer.values())
    assert "Inference, the benchmarks'" in text
    assert f"| {infer['triton']['ratio_to_eager']:.2f}x | fwd " in text
