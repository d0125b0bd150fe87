"""tools/kernel_model.py, the static performance model of the compiled kernels: its SASS reader on
a hand-written listing, and the whole tool on one real kernel (recorded from a training step of
the paper U-Net, compiled for sm_90, read twice: the mainloop is found and its counts are stable).
The tool compiles real kernels, so it runs in a subprocess without TRITON_INTERPRET. Its CUDA
extension part on the built unet_fast._C: the CUTLASS units' loops and the per-layer table."""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import pytest
from conftest import extension_archs

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

SASS = """
        .text.k:
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   IMAD R1, R0, 0x2, RZ ;
.L_x_0:
        /*0020*/                   LDGSTS.E.BYPASS.128 [R2], desc[UR4][R4.64] ;
        /*0030*/              @!P0 IADD3 R5, R5, 0x40, RZ ;
        /*0040*/                   WARPGROUP.ARRIVE ;
        /*0050*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8].tnspA, R24 ;
        /*0060*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR12].tnspA, R24, gsb0 ;
        /*0070*/                   LDG.E.U16 R7, desc[UR4][R8.64] ;
        /*0080*/               @P1 BRA `(.L_x_0) ;
        /*0090*/                   STG.E.128 desc[UR4][R10.64], R12 ;
        /*00a0*/                   EXIT ;
.L_x_1:
        /*00b0*/                   BRA `(.L_x_1);
"""


def test_sass_reader_finds_the_mainloop_and_counts_it():
    import kernel_model as km
    a = km.analyze_sass(SASS)
    ml = a["mainloop"]
    assert a["total"] == 12 and a["loops"] == 2           # the trailing self-branch is a loop too
    assert ml["instructions"] == 7 and a["outside"] == 5  # 0x20..0x80
    assert ml["classes"]["tensor"] == 2 and ml["classes"]["async copy"] == 1
    assert ml["mma"] == [("wgmma", 64 * 128 * 16, "BF16")] * 2
    assert ml["load_bytes_per_thread"] == 16 + 2 and ml["sync_global_loads"] == 1
    assert ml["l1_bypass"]


def test_sass_reader_resolves_branch_targets_by_address():
    """cuobjdump -sass (the extension's listing) prints `BRA 0x20`, not a label."""
    import kernel_model as km
    by_addr = SASS.replace(".L_x_0:\n", "").replace(".L_x_1:\n", "")
    by_addr = by_addr.replace("`(.L_x_0)", "0x20").replace("`(.L_x_1)", "0xb0")
    assert km.analyze_sass(by_addr) == km.analyze_sass(SASS)


def test_co_resident_tiles_overlap_one_epilogue_with_another_mainloop(monkeypatch):
    """A tile alone on its SM runs mainloop, epilogue and pipeline fill one after the other; with
    two CTAs an SM, one's epilogue and fill run during the other's mainloop, so a tile costs half
    its serial time, but never less than its demand on the SM's busiest resource."""
    import kernel_model as km
    m = km.H200
    iters, tensor_fma = 10, 64 * 64 * 64      # one warpgroup's 64x64x64 per iteration: 128 cycles
    monkeypatch.setattr(km, "work", lambda launch, i: dict(
        flops=2 * tensor_fma * iters * m.sms, iters=iters, tile_bytes=0, dram=0, pass_="fwd",
        mma=True))
    launch = km.Launch("igemm.igemm_fwd_kernel", "fwd", "x", {}, {},
                       [({"BLOCK_M": 64}, 4, 3, (m.sms, 1, 1), None)])

    def tile_cycles(smem, loop_instructions, outside):
        binary = dict(regs=64, smem=smem, spill=0, analysis=dict(
            mainloop=dict(mma=[("wgmma", tensor_fma, "BF16")], instructions=loop_instructions,
                          classes={}, sync_global_loads=0, l1_bypass=True),
            outside=outside, total=loop_instructions + outside))
        row = km.predict(launch, 0, binary, m)
        return row["occupancy"], round((row["kernel_s"]) * m.clock)

    # alone (shared memory for one CTA): 10 x 128 tensor cycles + 1000 outside + the fill
    assert tile_cycles(200_000, 50, 1000) == (1, 10 * 128 + 1000 + m.fill_latency_clk)
    # two an SM: half of that
    assert tile_cycles(100_000, 50, 1000) == (2, (10 * 128 + 1000 + m.fill_latency_clk) // 2)
    # ... but a tile still issues its mainloop and epilogue: 10 x 120 + 2000 issue cycles
    assert tile_cycles(100_000, 120, 2000) == (2, 10 * 120 + 2000)


def test_l1_gathered_tiles_ask_the_l2_for_less(monkeypatch):
    """An A_L1 tile whose SASS caches its gather in the L1 (LDGSTS without .BYPASS) loads the
    share utils.l1_reuse gives of its A tile from the L2; not where its copies bypass the L1, nor
    where its shared memory (over 48 KiB: Triton asks for the largest carve-out) leaves too
    little L1."""
    import kernel_model as km
    from unet_fast.backends.triton_backend import utils
    m = km.H200
    a_bytes, b_bytes = 128 * 32 * 2, 32 * 64 * 2
    geo = dict(kind="window", bm=128, bk=32, elt=2, ow=568, ks=3, pool=False, bytes=a_bytes)
    monkeypatch.setattr(km, "work", lambda launch, i: dict(
        flops=1, iters=18, tile_bytes=a_bytes + b_bytes, dram=0, pass_="fwd", mma=True, l1=geo))
    launch = km.Launch("igemm.igemm_fwd_kernel", "fwd", "x", {}, {},
                       [({"BLOCK_M": 128, "A_L1": True}, 4, 3, (m.sms, 1, 1), None)])

    def l2_cycles(smem, bypass):
        binary = dict(regs=128, smem=smem, spill=0, analysis=dict(
            mainloop=dict(mma=[("wgmma", 128 * 64 * 32, "BF16")], instructions=100,
                          classes={}, sync_global_loads=0, l1_bypass=bypass),
            outside=500, total=600))
        return km.predict(launch, 0, binary, m)["l2_cycles_per_iter"]

    full = round((a_bytes + b_bytes) / m.l2_bytes_per_clk_sm, 1)
    occ = km._occupancy(m, 4, 128, 36 * 1024)
    share = utils.l1_reuse(128, 32, 2, 568, 3, False, utils.l1_left(36 * 1024, occ) // occ)
    assert share < 0.4
    assert l2_cycles(36 * 1024, False) == round(
        (a_bytes * share + b_bytes) / m.l2_bytes_per_clk_sm, 1)
    assert l2_cycles(36 * 1024, True) == full
    assert l2_cycles(64 * 1024, False) == full
    # a 2-D patch (TILE_W): its whole window, about half the row tile's share
    geo["tile_w"] = 16
    patch = utils.l1_reuse(128, 32, 2, 568, 3, False, utils.l1_left(36 * 1024, occ) // occ, 16)
    assert patch < share / 2 + 0.01
    assert l2_cycles(36 * 1024, False) == round(
        (a_bytes * patch + b_bytes) / m.l2_bytes_per_clk_sm, 1)


def test_model_of_one_kernel_is_stable():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "kernel_model.py"), "--check"],
                         capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert "error" not in out, out
    ml = out["mainloop"]
    assert ml is not None and ml == out["mainloop_again"]  # found, and the same count twice
    assert any(kind == "wgmma" for kind, _, _ in ml["mma"]), ml["mma"]
    assert 0 < ml["instructions"] and ml["sync_global_loads"] == 0  # both operands async copies
    assert out["spill"] == 0
    assert out["kernel"].endswith("igemm_wgrad_kernel") and out["phase"] == "bwd"
    assert out["tensor_cycles_per_iter"] > 0 and out["issue_cycles_per_iter"] > 0
    # launches are attributed to the model's layers, forward and backward
    layers = {tuple(x) for x in out["layers"]}
    assert ("down.0.0", "fwd") in layers and ("down.0.0", "bwd") in layers
    assert ("up.3.conv.2+head", "fwd") in layers and ("up.3.up", "bwd") in layers  # (fused)
    # ... whose backward kernels are each layer's own: the head's 1x1, the conv's 3x3
    assert ("head", "bwd") in layers and ("up.3.conv.2", "bwd") in layers
    assert ("up.3.conv.2+head", "bwd") not in layers


# ---------------------------------------------------------------- the CUDA extension (unet_fast._C)
@pytest.fixture(scope="module")
def extension():
    """The extension's part of the model, read once (cuobjdump over the library takes seconds)."""
    import kernel_model as km
    ext = km.read_extension()
    if ext["status"].startswith("built without"):
        if os.environ.get("UNET_FAST_REQUIRE_CUTLASS"):
            pytest.fail("UNET_FAST_REQUIRE_CUTLASS=1 but the extension has no CUTLASS units")
        pytest.skip("the extension was built without the CUTLASS sm_90a units")
    if ext["status"] != "read":
        pytest.skip(f"the CUDA extension cannot be read: {ext['status']}")
    ext["rows"] = [r for cfg in km.MODELS.values() for r in km.extension_rows(ext, cfg)]
    return km, ext


def test_extension_cutlass_mainloops(extension):
    _, ext = extension
    # per element type (bf16, fp16): fprop and dgrad in two tiles each, 128x128 and 256x64 (a
    # 64-channel N); wgrad in three: 128x64, 128x128 (c a multiple of 128), 64x64 (k = 64); the
    # up-conv's dgrad in one, its forward in two (128x128, 256x64 for k = 64)
    for elem in ("bf16", "f16"):
        assert sorted(u["pass_"] for u in ext["units"] if u["elem"] == elem) == [
            "dgrad", "dgrad", "fprop", "fprop", "up_dgrad", "up_fprop", "up_fprop", "wgrad",
            "wgrad", "wgrad"], [u["name"] for u in ext["units"]]
    units = {u["name"]: u for u in ext["units"]}
    assert len(units) == 20 and len({u["config"] for u in ext["units"]}) == 20, units.keys()
    for name, u in units.items():
        assert u["consumer_instructions_per_iter"] and u["hgmma_per_iter"] > 0, (name, u)
        assert u["consumer_classes"]["tensor"] == u["hgmma_per_iter"], (name, u)
        assert u["producer_classes"]["async copy"] >= 2, (name, u)  # A and B tiles by TMA
        assert "tensor" not in u["producer_classes"], (name, u)
        assert u["tile_fma_matches"], (name, u)  # one K step's HGMMAs cover the config's tile
        assert 0 < u["issue_cycles"] <= u["tensor_cycles"], (name, u)


def test_extension_covers_every_unit_convolution(extension):
    """Every 3x3 convolution of both networks in all three passes, but the first layer (1 or 3
    input channels), which the units refuse and the hand-written kernels run; and every
    transposed convolution, its input and weight gradients (the latter on a 3x3 wgrad unit, with
    the up-conv's GEMM: M = c, N = 4k, K = n*h*w)."""
    km, ext = extension
    from unet_fast.reference import conv3x3_problems, up_problems
    for cfg in km.MODELS.values():
        probs = conv3x3_problems(cfg.in_channels, cfg.padding, cfg.size)
        ups = up_problems(cfg.in_channels, cfg.padding, cfg.size)
        rows = [r for r in ext["rows"] if r["model"] == cfg.name]
        got = {(r["layer"], r["pass_"]) for r in rows}
        assert len(ups) == 4 and got == {(probs[0].name, "all")} | {
            (p.name, conv_pass) for p in probs[1:] for conv_pass in ("fprop", "dgrad", "wgrad")} | {
            (p.name, up_pass) for p in ups for up_pass in ("up_fprop", "up_dgrad", "up_wgrad")}
        for p in ups:
            (r,) = [r for r in rows if r["layer"] == p.name and r["pass_"] == "up_wgrad"]
            assert r["gemm"] == [p.c_in, 4 * p.c_out, cfg.batch * p.h * p.w], r
            assert "conv3x3 wgrad split-K" in r["name"], r
        assert "refused" in rows[0]["config"] and "multiples of 64" in rows[0]["config"]
        for r in rows[1:]:
            assert 0 < r["predicted_fraction_of_peak"] <= 1, r
            assert r["bound"] in ("tensor", "issue", "L2", "DRAM"), r
    json.dumps(km._extension_json(ext))  # what --extension prints and the report's JSON holds


def test_cuda_step_prices_every_launch_of_the_step(extension):
    """The explicit backend="cuda" step, recorded on meta tensors: every CUTLASS unit row of the
    network is one of its launches, once (the recording reached every convolution the units
    take, and no other); the hand-written kernels run exactly the first layer (forward and weight
    gradient: the input needs none; the gradient arrives masked by down.0.2's dgrad, so the
    Premasked kernel, which reads no y; one input channel: conv3x3_thin.cuh's CUDA-core kernels)
    and the 1x1 head (its three passes, on the CUDA-core kernels of pointwise_thin.cuh: 2
    classes, 64 channels); each encoder
    level pools once and un-pools once; every launch has a positive time."""
    km, ext = extension
    for cfg in km.MODELS.values():
        st = km.cuda_step(cfg, ext)
        rows = st["rows"]
        units = [r for r in ext["rows"] if r["model"] == cfg.name and "flops" in r]
        got = sorted((r["layer"].split("+")[0], r["pass_"]) for r in rows
                     if r["kernel"].startswith("cutlass"))
        assert got == sorted((r["layer"], r["pass_"]) for r in units), cfg.name
        assert abs(st["by_kind"]["CUTLASS units"] - sum(r["time_s"] for r in units)) < 1e-12
        hand = sorted((r["layer"], r["pass_"], r["kernel"]) for r in rows
                      if r["kernel"].startswith("hand-written"))
        head = "up.3.conv.2+head"
        thin = "hand-written pointwise_thin_{}<__nv_bfloat16, 2>"
        # (one input channel: conv3x3_thin.cuh's kernels; three: the tile engine's)
        first = (["hand-written conv3x3_thin_fprop<__nv_bfloat16, false>",
                  "hand-written conv3x3_thin_wgrad<__nv_bfloat16, false, false>"]
                 if cfg.in_channels == 1 else
                 ["hand-written Conv3x3Fprop", "hand-written Conv3x3WgradPremasked"])
        assert hand == [("down.0.0", "fwd", first[0]),
                        ("down.0.0", "wgrad", first[1]),
                        (head, "dgrad", thin.format("dgrad")),
                        (head, "fwd", thin.format("fprop")),
                        (head, "wgrad", thin.format("wgrad"))], hand
        pools = [r["layer"] for r in rows if r["pass_"] == "pool"]
        unpools = [r["layer"] for r in rows if r["pass_"] == "pool bwd"]
        assert pools == [f"down.{i}.2" for i in range(4)] and sorted(unpools) == pools
        assert all(r["time_s"] > 0 for r in rows)
        assert st["predicted_s"] == pytest.approx(sum(r["time_s"] for r in rows))
        assert st["predicted_s"] > st["by_kind"]["CUTLASS units"]


def test_thin_kernels_counted_and_taken_where_the_extension_takes_them(extension):
    """thin.cuh's CUDA-core kernels: every kernel's grid-stride loop is found (every dtype, the
    head's 2 and 8 classes, the first layer's weight gradient with and without y, every arch built);
    only the head's forward has barriers in it, with its run sums between them (the first
    warps' code). The model prices a 1x1 conv on them exactly where pointwise_thin_launch takes it
    (C_in a power-of-two multiple of 8, at most 8 classes, the forward's R at most 32), and a 3x3
    conv where conv3x3_thin's launchers do (one input channel, C_out likewise, channels_last), the
    tile engine's row otherwise."""
    km, ext = extension
    thin = {(t["name"], t["arch"]): t for t in ext["thin"]}
    archs = extension_archs()   # CI: sm_80 and sm_90; the GPU suite's build: the GPU's
    assert "sm_90" in archs     # the model reads sm_90 below
    for t in ("__half", "__nv_bfloat16", "float"):
        tf = ("false", "true")
        names = ([f"pointwise_thin_{p}<{t}, {kc}>" for p in ("fprop", "dgrad", "wgrad")
                  for kc in (2, 8)] + [f"conv3x3_thin_fprop<{t}, {b}>" for b in tf]
                 + [f"conv3x3_thin_wgrad<{t}, {y}, {b}>" for y in tf for b in tf])
        for name in names:
            for arch in archs:
                k = thin[(name, arch)]
                assert k["all_warps"] > 0, k
                assert (k["first_warps"] > 0) == name.startswith("pointwise_thin_fprop"), k
    assert len(thin) == len(archs) * 3 * 12, sorted(thin)
    hand = {t["name"]: t for t in ext["thin"] if t["arch"] == "sm_90"}

    def conv(pass_, c, k, runs=True, premasked=True, pad=0):
        return km._conv3x3_thin_row("down.0.0", pass_, c, k, 4096, premasked, runs, pad, hand,
                                    1 << 20, km.H200, None)

    assert conv("fwd", 1, 64)["kernel"].endswith("conv3x3_thin_fprop<__nv_bfloat16, false>")
    assert conv("fwd", 1, 64, pad=1)["kernel"].endswith("fprop<__nv_bfloat16, true>")
    assert conv("wgrad", 1, 64)["kernel"].endswith("wgrad<__nv_bfloat16, false, false>")
    assert conv("wgrad", 1, 32, premasked=False, pad=1)["kernel"].endswith(
        "wgrad<__nv_bfloat16, true, true>")
    for c, k, runs in ((3, 64, True), (1, 48, True), (1, 4, True), (1, 64, False)):
        assert conv("fwd", c, k, runs) is None and conv("wgrad", c, k, runs) is None, (c, k, runs)

    def row(pass_, c, classes):
        x = ("tensor", "", [2, c, 16, 16], None, 2)
        return km._thin_row("head", pass_, x, classes, hand, 1 << 20, km.H200)

    assert row("wgrad", 64, 2)["kernel"].endswith("wgrad<__nv_bfloat16, 2>")
    assert row("dgrad", 64, 3)["kernel"].endswith("dgrad<__nv_bfloat16, 8>")
    assert row("fwd", 256, 8)["kernel"].endswith("fprop<__nv_bfloat16, 8>")
    assert row("wgrad", 2048, 2) is not None and row("fwd", 512, 2) is None   # (R = 64 > 32)
    for c, classes in ((5, 2), (24, 2), (64, 9), (64, 0), (4096, 2)):
        assert row("wgrad", c, classes) is None, (c, classes)


def test_resource_usage_counts_stack_frame_spills():
    """Spills are read as LOCAL plus STACK (tools/sass_report.resource_usage, used by
    tools/triton_aot.py and this model): the cuobjdump line of a Triton sm_80 kernel that
    ptxas -v reports with "4952 bytes stack frame, 11818 bytes spill stores" and LOCAL:0."""
    import sass_report
    spilling = ("Resource usage:\n Common:\n  GLOBAL:0\n Function igemm_fwd_kernel:\n  REG:32 "
                "STACK:4952 SHARED:0 LOCAL:0 CONSTANT[0]:560 TEXTURE:0 SURFACE:0 SAMPLER:0\n")
    assert sass_report.resource_usage(spilling) == (32, 4952)
    clean = spilling.replace("REG:32 STACK:4952", "REG:201 STACK:0")
    assert sass_report.resource_usage(clean) == (201, 0)
    assert sass_report.resource_usage("no such line") == (None, None)


_TMA_SCRIPT = r"""
import dataclasses, json, sys
sys.path.insert(0, "tools")
import kernel_model as km
launches = km.record_step(dataclasses.replace(km.MODELS["valid572"], batch=1))
out = {}
for l in launches:
    if not l.kernel.endswith("igemm_fwd_kernel"):
        continue
    kind = (l.constexprs["W_DESC"], l.constexprs["O_DESC"])
    if kind[0] == 0 or kind in out:
        continue
    i = next((i for i, c in enumerate(l.configs) if not c[0].get("A_L1")), None)
    if i is None:   # (the A_L1 tiles keep pointers: igemm_fwd_kernel)
        continue
    off = dataclasses.replace(l, constexprs=dict(l.constexprs, W_DESC=0, O_DESC=False))
    rows = {}
    for name, launch in (("tma", l), ("pointers", off)):
        b = km._compile_job((km.compile_key(launch, i), 90))
        assert not b.get("error"), b["error"]
        ml = km.analyze_sass(b["sass"])["mainloop"]
        rows[name] = dict(tma_loads=ml["tma_loads"], ld=ml["load_bytes_per_thread"],
                          spill=b["spill"], tma_store="UTMASTG" in b["sass"])
    out[kind] = dict(layer=l.layer, phase=l.phase, config=l.configs[i][0], **rows)
print(json.dumps({f"{w} {o}": v for (w, o), v in out.items()}))
"""


def test_tma_descriptors_compile_to_tma_copies():
    """With UNET_FAST_TRITON_TMA=1 the paper U-Net's step launches the forward kernel with both
    kinds of weight descriptor (W_DESC 1: N contiguous, 2: K contiguous) and with the TMA output
    store; compiled for sm_90 each mainloop loads its weight tile by TMA (UTMALDG) instead of
    cp.async (half the bytes a thread copies for a square tile), stores by UTMASTG, and spills
    nothing. (Not on sm_80: utils.tma_enabled.)"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["UNET_FAST_TRITON_TMA"] = "1"
    res = subprocess.run([sys.executable, "-c", _TMA_SCRIPT], capture_output=True, text=True,
                         env=env, timeout=900, cwd=ROOT)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"1 True", "2 True"} <= set(got), got
    for kind, r in got.items():
        tma, ptr = r["tma"], r["pointers"]
        assert tma["tma_loads"] >= 1 and ptr["tma_loads"] == 0, (kind, r)
        assert tma["ld"] < ptr["ld"], (kind, r)      # B's cp.async copies are gone
        assert tma["tma_store"] == kind.endswith("True") and not ptr["tma_store"], (kind, r)
        assert tma["spill"] == 0, (kind, r)


_FIRST_STEP = r"""
import json, sys
import first_step_compiles as fsc
import kernel_model as km
cfg = km.ModelConfig("tiny", 1, 2, 44, "valid", 2, base_channels=16, depth=2)
first = fsc.first_step(cfg)
again = fsc.first_step(cfg)
pre = fsc.first_step(cfg, precompile=True)   # (everything is compiled by now)
print(json.dumps([first, again, pre]))
"""


def test_first_step_compiles_counts_what_a_first_step_compiles(tmp_path):
    """tools/first_step_compiles.py: a small U-Net's training step through Triton's own launch
    path on the stand-in sm_90 driver compiles its kernels (a launch there would fail: the
    stand-in cannot launch); the same step again in that process compiles nothing (the kernels
    are in Triton's in-memory cache: what it counted were compiles), nor does its --precompile
    (UNet.precompile's dry step of it)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), UNET_FAST_COMPILE_THREADS="2",
               PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tools"), ROOT]))
    res = subprocess.run([sys.executable, "-c", _FIRST_STEP], capture_output=True, text=True,
                         env=env, timeout=900, cwd=ROOT)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    first, again, pre = json.loads(res.stdout.strip().splitlines()[-1])
    assert first["compiles"] >= 10 and first["seconds"] > 0, first
    assert again["compiles"] == 0, again
    # --precompile: UNet.precompile's dry step of the same step, its result beside the count
    assert pre["compiles"] == 0 and pre["precompile"]["kernels"] == 0, pre
    assert pre["precompile"]["skipped"] is None and "error" not in pre["precompile"], pre
    assert any(name.endswith(".cubin") for _, _, files in os.walk(tmp_path) for name in files)


_FIRST_EVAL = r"""
import dataclasses, json, sys
sys.path.insert(0, "tools")
import kernel_model as km
cfg = dataclasses.replace(km.MODELS["valid572"], batch=1)
trained, evaluated = km.record_step(cfg), km.record_step(cfg, train=False)
tuned = {(l.kernel, l.tune_key) for l in trained}
own = [dict(layer=l.layer, configs=len(l.configs), tuned=(l.kernel, l.tune_key) in tuned)
       for l in evaluated if l.constexprs.get("STORE_Y") is False]
print(json.dumps(dict(counts=km.first_eval(trained, evaluated), own=own)))
"""


def test_a_first_evaluation_tunes_only_its_own_variants():
    """The paper U-Net's evaluation forward (no gradients) runs kernel variants of its own (STORE_Y
    off: the four encoder steps, which then write no ring, and the last conv with the head), each
    tuned on its own key (storing less can move the best tile: igemm._FWD_KEY); every other
    launch is one the training step compiled and tuned already. kernel_model.first_eval counts
    exactly those variants' configs as compiled and timed."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", _FIRST_EVAL], capture_output=True, text=True,
                         env=env, timeout=900, cwd=ROOT)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    own, counts = got["own"], got["counts"]
    assert sorted(r["layer"] for r in own) == ["down.0.2", "down.1.2", "down.2.2", "down.3.2",
                                               "up.3.conv.2+head"], own
    assert not any(r["tuned"] for r in own) and all(r["configs"] > 1 for r in own), own
    assert counts["autotune_keys"] == len(own), counts
    assert counts["autotune_runs"] == sum(r["configs"] for r in own), counts
    # (fewer compiles than runs: layers that differ only in values Triton does not specialize
    # on, down.2.2 and down.3.2, share binaries)
    assert 0 < counts["compiles"] < counts["autotune_runs"], counts


def test_first_eval_counts_a_tuned_key_as_one_compile_and_no_timing(monkeypatch):
    """kernel_model.first_eval: a launch of a key the training step tuned compiles the config
    chosen then (once, where its variant is new) and times nothing; a launch the training step
    compiled compiles nothing; a new key compiles and times each of its configs."""
    import kernel_model as km

    def launch(variant, key, configs=2):
        return km.Launch("igemm.igemm_fwd_kernel", "fwd", "x", {}, {"V": variant},
                         configs=[({"BLOCK_M": 64 * (i + 1)}, 4, 3, (1, 1, 1), None)
                                  for i in range(configs)], tune_key=key)
    monkeypatch.setattr(km, "compile_key",
                        lambda l, i: (l.constexprs["V"], l.configs[i][0]["BLOCK_M"]))
    trained = [launch("a", ("k1",)), launch("b", ("k2",))]
    evaluated = [launch("a", ("k1",)),            # as trained: nothing
                 launch("a2", ("k1",)),           # a variant of a tuned key: one compile
                 launch("a2", ("k1",)),           # ... once
                 launch("c", ("k3",), 3),         # a new key: 3 compiles, 3 timing runs
                 launch("d", ("k4",), 1)]         # a new key of one config: compiled, not timed
    assert km.first_eval(trained, evaluated) == dict(compiles=5, autotune_keys=1,
                                                     autotune_runs=3)


def test_inference_is_predicted_with_the_configs_the_training_step_tuned(monkeypatch):
    """The model's inference rows take, for a launch whose autotune key the training step tuned,
    the config the model chose there (what the autotuner reuses), not the best for the
    inference variant alone; a launch of a new key gets the best of its own."""
    import kernel_model as km

    def launch(store_y, key=("k",)):
        return km.Launch("igemm.igemm_fwd_kernel", "fwd", "down.0.2", {}, {"STORE_Y": store_y},
                         configs=[({"BLOCK_M": 64}, 4, 3, (9, 1, 1), None),
                                  ({"BLOCK_M": 128}, 8, 3, (5, 1, 1), None)], tune_key=key)
    monkeypatch.setattr(km, "compile_key", lambda l, i: (l.constexprs["STORE_Y"], l.tune_key, i))
    monkeypatch.setattr(km, "_BINARIES", collections.defaultdict(dict))
    # with y stored the second config is the faster; without, the first
    times = {True: (1.0, 0.5), False: (0.2, 0.4)}
    monkeypatch.setattr(km, "predict", lambda l, i, b, m: dict(
        time_s=times[l.constexprs["STORE_Y"]][i]))
    failures = []
    rows, chosen = km._predict_launches([launch(True)], km.H200, failures)
    assert [r["time_s"] for r in rows] == [0.5] and not failures
    infer, _ = km._predict_launches([launch(False), launch(False, key=("new",))], km.H200,
                                    failures, chosen)
    assert [r["time_s"] for r in infer] == [0.4, 0.2]
