"""The fast U-Net: the reference network (same modules, parameters, initialization and state-dict
keys, by construction) with a forward that reads like the paper's figure and runs on the fused
ops of `unet_fast.ops`:

- contracting path: per level, conv3x3+ReLU twice; the second also writes the 2x2 max-pooled map
  from its epilogue (`conv3x3_relu_pool`), and its output, center-cropped to what the decoder
  reads, is the skip;
- bottleneck: conv3x3+ReLU twice;
- expanding path: per level, the 2x2 up-convolution, then conv3x3+ReLU over the concat of the
  center-cropped skip and the up-sampled map (`concat_conv3x3_relu`: the Triton kernels read the
  two halves where they lie, no concat buffer; for a backend that would copy both into a buffer,
  `_dispatch.fused`, the up-convolution writes into that buffer itself, `up_concat`), then
  conv3x3+ReLU;
- head: the 1x1 convolution, computed in the last conv's epilogue (`conv3x3_relu_conv1x1`).

Every op after the first layer reads a ReLU output, so the model uses the ops' internal
ReLU-gradient contract (unet_fast/_dispatch.py, OPS): an op told `_relu_input` returns its input
gradient already multiplied by (x > 0), and the op that produced x is told `_grad_masked` and does
not mask again. Parameter gradients equal the reference's.
"""
from __future__ import annotations

import contextlib

import torch
import torch.utils.checkpoint

from . import _dispatch, ops, reference
from ._utils import check_model_input, memory_format_of


# UNet(checkpointing=...): keep every activation; recompute every level; recompute the up-convs'
CHECKPOINTING = (False, True, "up")


class UNet(reference.UNet):
    """U-Net (Ronneberger et al., 2015) on unet_fast's kernels.

    backend: "auto" (default: the fastest implementation that can run each input; the reference
    ops on CPU), "triton", "cuda" or "torch". `backend_report()` says what ran each layer.
    checkpointing: True: recompute each level's activations in the backward instead of keeping
    them (activation checkpointing): much less peak memory for about one more forward. "up":
    recompute only the decoder's up-sampled maps (the 2x2 transposed convolutions' outputs,
    which the next convolution's weight gradient reads) from their inputs, which are kept anyway:
    less peak memory for the cheapest layers run again (tools/memory_model.py models both).
    State dicts of a torch.compile'd model ("_orig_mod." keys) or of DDP ("module.") load as is.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base_channels: int = 64,
                 depth: int = 4, padding: str = "valid", backend: str = "auto",
                 checkpointing: bool | str = False):
        super().__init__(in_channels, num_classes, base_channels, depth, padding)
        self.backend = _dispatch.check_backend_name(backend)
        if checkpointing not in CHECKPOINTING:
            raise ValueError(f"checkpointing must be one of {', '.join(map(repr, CHECKPOINTING))}"
                             f", got {checkpointing!r}")
        self.checkpointing = checkpointing if checkpointing == "up" else bool(checkpointing)
        self._report: dict[str, str] = {}
        self._register_load_state_dict_pre_hook(_strip_wrapper_prefixes)
        _dispatch.ensure_backends()

    def backend_report(self) -> dict:
        """{layer name: backend that ran it} for the last eager forward (a compiled graph's
        choices were made when it was traced)."""
        return dict(self._report)

    def precompile(self, train=None, evaluate=None, *, autocast=None, threads=None) -> dict:
        """Compile now, all side by side, the Triton kernels that training steps on inputs like
        `train` and evaluations (forwards without gradients) on inputs like `evaluate` will
        launch, instead of shape by shape as the first step meets them. Each is an input shape
        (batch, channels, height, width), an example input, or a list of them; `autocast` the
        dtype the steps run `torch.autocast` with (torch.bfloat16, torch.float16, or None: no
        autocast); `threads` the compile threads (default UNET_FAST_COMPILE_THREADS's). Runs
        nothing (a dry step: no output, no gradient is written; backend "auto" measures nothing)
        and needs what the steps will need (the model on its GPU, memory for one step). A no-op
        with backend "torch" or "cuda", or where Triton cannot run. Returns {"kernels": compiles
        started, "failed", "seconds", "skipped": None or why nothing was compiled}.

            model.precompile(train=(8, 1, 572, 572), evaluate=(1, 1, 572, 572),
                             autocast=torch.bfloat16)
        """
        from ._precompile import precompile
        return precompile(self, train, evaluate, autocast=autocast, threads=threads)

    # ------------------------------------------------------------------ the figure
    def forward(self, x):
        check_model_input(self, x)
        caller_format = memory_format_of(x)
        inner = _dispatch.inner_memory_format(self._backend, x.device)
        if inner is not None:
            x = x.to(memory_format=inner)  # (restrides even a 1-channel input)
        with _dispatch.report_layers(self._report):
            skips = []
            # the decoder's concat read in place (fused), or written by its up-conv (_decode)
            fused = _dispatch.fused("concat_conv3x3_relu", self._backend)
            # what of each skip its decoder reads: the encoder hands over just that (its pool
            # backward adds the crop's gradient where the crop lies, with no zero-padded copy)
            crops = self._skip_crops(x.shape[-2:])
            for i, level in enumerate(self.down):                   # contracting path
                skip, x = self._step(self._encode, f"down.{i}", level, x, skip_hw=crops[i])
                skips.append(skip)
            del skip  # (no name here keeps the deepest skip alive: the list gives them up one
            #            by one, each to its decoder step)
            x = self._step(self._bottleneck, "bottleneck", self.bottleneck, x)
            for i, level in enumerate(self.up):                     # expanding path, its
                last = i == len(self.up) - 1                        # last step ending in the head
                name, head = f"up.{i}", (self.head if last else None)
                if self._checkpointed():   # (the level is one segment, made again in backward)
                    x = self._step(self._decode, name, level, x, skips.pop(), head=head,
                                   fused=fused)
                else:   # no frame holds a map past its last reader (in inference each is
                    #     freed as soon as read): the up-conv's input and the skip are handed
                    #     over in a list _decode_concat empties, the level in two calls
                    held = [x, skips.pop()]
                    del x
                    x = self._decode_concat(name, level, held, fused)
                    x = self._decode_out(name, level, x, head)
        if x.is_contiguous(memory_format=caller_format) and not (
                torch.is_grad_enabled() and x.requires_grad):
            return x
        # (in training also when no copy is needed: a loss may hand back a gradient of another
        # layout, cross-entropy's NCHW to a channels_last caller, which must not reach the kernels)
        return _InCallersFormat.apply(x, caller_format)

    # ------------------------------------------------------------------ the steps
    def _encode(self, name, level, x, skip_hw):
        """conv3x3+ReLU, conv3x3+ReLU whose epilogue also writes the pooled map: (skip, pooled),
        the skip cropped to `skip_hw` already (None: the whole map). (The skip's gradient
        reaches the second conv's pool backward, which masks it.)"""
        x = self._conv(f"{name}.0", level[0], x, relu_input=name != "down.0", grad_masked=True)
        with _dispatch.layer(f"{name}.2"):
            return ops.conv3x3_relu_pool(x, level[2].weight, level[2].bias, self._pad,
                                         backend=self._backend, _relu_input=True,
                                         _skip_hw=skip_hw)

    def _bottleneck(self, name, block, x):
        x = self._conv(f"{name}.0", block[0], x, relu_input=True, grad_masked=True)
        return self._conv(f"{name}.2", block[2], x, relu_input=True, grad_masked=True)

    def _decode(self, name, level, x, skip, head=None, fused=True):
        """up-conv 2x2, conv3x3+ReLU over cat([cropped skip, up]), conv3x3+ReLU (and the 1x1
        `head` over it, when given: one op)."""
        return self._decode_out(name, level,
                                self._decode_concat(name, level, [x, skip], fused), head)

    def _decode_concat(self, name, level, held, fused):
        """up-conv 2x2, conv3x3+ReLU over cat([cropped skip, up]), for `held` = [x, skip] (emptied
        here). (The concat is not a ReLU output as a whole: the conv leaves its gradient
        unmasked; the skip's half is masked by the encoder's pool backward.) `fused`: the backend
        reads the concat's halves in place (_dispatch.fused); else the up-conv writes into a
        concat buffer. The two give the same numbers."""
        x, skip = held
        held.clear()
        if fused:
            def up_conv(x, skip, backend):
                with _dispatch.layer(f"{name}.up"):
                    return ops.conv_transpose2x2(x, level.up.weight, level.up.bias,
                                                 backend=backend, _relu_input=True)
            up = up_conv(x, skip, self._backend)
            with self._recomputed(up, up_conv, x, skip, f"{name}.up"), \
                    _dispatch.layer(f"{name}.conv.0"):
                del x   # (read by no other layer)
                return ops.concat_conv3x3_relu(skip, up, level.conv[0].weight,
                                               level.conv[0].bias, self._pad,
                                               backend=self._backend, _grad_masked=True)
        else:
            # (the up-conv writes straight into the buffer, beside the skip, and the conv reads
            # it; the skip's gradient is the buffer's gradient's lower channel slice, a view)
            def up_conv(x, skip, backend):
                with _dispatch.layer(f"{name}.up"):
                    return ops.up_concat(skip, x, level.up.weight, level.up.bias,
                                         backend=backend, _relu_input=True)
            cat = up_conv(x, skip, self._backend)
            with self._recomputed(cat, up_conv, x, skip, f"{name}.up"):
                del x, skip   # (read by no other layer: the skip is in the buffer)
                return self._conv(f"{name}.conv.0", level.conv[0], cat, relu_input=False,
                                  grad_masked=True)

    def _decode_out(self, name, level, x, head):
        """The level's second conv3x3+ReLU, and the 1x1 `head` over it when given (one op)."""
        if head is not None:
            conv = level.conv[2]
            with _dispatch.layer(f"{name}.conv.2", "head"):
                return ops.conv3x3_relu_conv1x1(x, conv.weight, conv.bias, head.weight, head.bias,
                                                self._pad, backend=self._backend, _relu_input=True)
        return self._conv(f"{name}.conv.2", level.conv[2], x, relu_input=True, grad_masked=True)

    def _conv(self, name, conv, x, relu_input, grad_masked):
        with _dispatch.layer(name):
            return ops.conv3x3_relu(x, conv.weight, conv.bias, self._pad, backend=self._backend,
                                    _relu_input=relu_input, _grad_masked=grad_masked)

    def _checkpointed(self) -> bool:
        return self.checkpointing is True and torch.is_grad_enabled()

    def _step(self, fn, *args, **static):
        """One level; with checkpointing, its activations are recomputed in the backward, under
        the backend request of the forward (`use_backend` is per thread, and on a GPU the
        backward runs on the autograd engine's own)."""
        if self._checkpointed():
            asked = _dispatch.requested_backend(self._backend)

            def level(*tensors):
                if _dispatch._is_compiling():   # (a traced graph's backends are fixed already)
                    return fn(*args[:2], *tensors, **static)
                with _dispatch.use_backend(asked):
                    return fn(*args[:2], *tensors, **static)
            return torch.utils.checkpoint.checkpoint(level, *args[2:], use_reentrant=False)
        return fn(*args, **static)

    def _recomputed(self, t, make, x, skip, layer):
        """With checkpointing="up": within, autograd keeps `t` = make(x, skip, backend) (the
        up-conv's output, or the concat buffer it writes) as a recipe, and the backward that needs
        it makes it again (no grad, on the backend that ran it: the same kernel, the same numbers;
        where "auto" ran cuDNN's transposed conv, bit for bit only with a deterministic algorithm)
        instead of keeping it. x and skip are kept anyway (the up-conv's own weight gradient reads
        x; the cropped skip is a view of the encoder's saved output), as detached views: hooks
        that held the graph would keep every step's alive. (A compiled graph recomputes as its
        partitioner decides; an exported one has no backward.)"""
        if self.checkpointing != "up" or not torch.is_grad_enabled() or _dispatch._is_compiling() \
                or _dispatch._is_exporting():
            return contextlib.nullcontext()
        ran = self._report.get(layer)
        backend = ran if ran in _dispatch.BACKENDS else self._backend
        dev = t.device.type
        cast = torch.autocast(dev, torch.get_autocast_dtype(dev),
                              enabled=torch.is_autocast_enabled(dev))   # as in the forward
        x, skip = x.detach(), skip.detach()
        # (autograd keeps both hooks as long as what they saved: they hold no reference to t, or
        # its graph; t is alive, so its id is its own, while the hooks are on)
        t_id = id(t)

        def pack(saved):
            return _RECIPE if id(saved) == t_id else saved

        def unpack(saved):
            if saved is not _RECIPE:
                return saved
            with torch.no_grad(), cast:
                return make(x, skip, backend)

        return torch.autograd.graph.saved_tensors_hooks(pack, unpack)

    def _skip_crops(self, hw):
        """Per level, the (H, W) its decoder center-crops the skip to (the whole skip in "same"
        mode with even sizes), traced from the input size as the figure's arithmetic goes."""
        shrink = 0 if self.padding == "same" else 4   # two unpadded 3x3 convs per step
        axes = []
        for s in hw:
            skips = []
            for _ in self.down:
                skips.append(s - shrink)
                s = (s - shrink) // 2
            s -= shrink                                   # the bottleneck
            ups = []
            for _ in self.up:
                ups.append(2 * s)
                s = 2 * s - shrink
            axes.append([min(a, b) for a, b in zip(skips, reversed(ups))])
        return [tuple(int(v) for v in hw_) for hw_ in zip(*axes)]

    @property
    def _backend(self):
        return None if self.backend == "auto" else self.backend

    @property
    def _pad(self) -> int:
        return 0 if self.padding == "valid" else 1


_RECIPE = object()   # what autograd keeps of a tensor UNet._recomputed makes again


class _InCallersFormat(torch.autograd.Function):
    """The output in the caller's memory format, and its gradient back in the layout the network
    ran in, whatever layout the loss hands back. (Else the NCHW gradient of an NCHW caller, or of
    a channels_last caller's cross-entropy, would reach every backward kernel, which are built for
    NHWC: one copy of the small head gradient here instead of a slow path in each of them.)"""

    @staticmethod
    def forward(ctx, x, fmt):
        ctx.inner = memory_format_of(x)
        return x.contiguous(memory_format=fmt)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=ctx.inner), None


def _strip_wrapper_prefixes(state_dict, prefix, *args):
    """Accept keys saved from torch.compile (`_orig_mod.`) or DDP (`module.`) wrappers."""
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        stripped = rest
        while stripped.startswith(("_orig_mod.", "module.")):
            stripped = stripped.split(".", 1)[1]
        if stripped != rest:
            state_dict[prefix + stripped] = state_dict.pop(key)
