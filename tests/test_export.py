"""Using the fast model outside our code: torch.export and ONNX give graphs of standard ops (our
kernels are for this package's runtime; an exported graph records the reference ops whatever the
backend), and onnxruntime runs the ONNX graph with the reference's numbers. TorchScript is not
supported (README): torch.export is its successor."""
import pytest
import torch

import unet_fast as uf

onnx = pytest.importorskip("onnx", reason="onnx is in requirements-dev.txt")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in requirements-dev.txt")


def _backends():
    # the backends that can run on this machine's CPU: their choice must not reach the graph
    out = ["auto", "torch"]
    if uf.backends.available()["cuda"] is None:
        out.append("cuda")  # the extension's CPU kernels
    return out


def _models(padding):
    torch.manual_seed(0)
    ref = uf.reference.UNet(2, 3, base_channels=4, depth=2, padding=padding).eval()
    return ref, uf.UNet(2, 3, base_channels=4, depth=2, padding=padding).eval()


@pytest.mark.parametrize("backend", _backends())
def test_torch_export_records_standard_ops(backend):
    ref, model = _models("valid")
    model.load_state_dict(ref.state_dict())
    model.backend = backend
    x = torch.randn(2, 2, 60, 76)
    ep = torch.export.export(model, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not [t for t in targets if "unet_fast" in t], targets
    assert "aten.conv2d.default" in targets
    torch.testing.assert_close(ep.module()(x), ref(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_onnx_export_runs_in_onnxruntime_with_the_reference_numbers(padding, tmp_path):
    ref, model = _models(padding)
    model.load_state_dict(ref.state_dict())
    model.backend = _backends()[-1]  # the extension's kernels where it is built
    x = torch.randn(1, 2, 60, 60)
    path = tmp_path / "unet.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["image"],
                      output_names=["logits"])
    onnx.checker.check_model(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"image": x.numpy()})
    assert got.shape == (1, 3) + model.output_size((60, 60))
    with torch.no_grad():
        want = ref.double()(x.double())
    # float32 arithmetic in onnxruntime against a float64 reference
    torch.testing.assert_close(torch.from_numpy(got).double(), want, rtol=1e-5, atol=1e-5)
