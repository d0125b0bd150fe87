"""The README's examples with third-party code: a MONAI loss on the "valid" output against a
target cropped with `crop_to_output`, and MONAI's sliding-window inference with the "same" model,
which agrees with our own overlap-tile prediction."""
import pytest
import torch

import unet_fast as uf

monai = pytest.importorskip("monai", reason="monai is in requirements-dev.txt")


def test_monai_loss_on_the_valid_output_with_crop_to_output():
    from monai.losses import DiceCELoss
    torch.manual_seed(0)
    model = uf.UNet(1, 3, base_channels=4, depth=2)
    x = torch.randn(2, 1, 76, 76)
    target = torch.randint(0, 3, (2, 1, 76, 76))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    with pytest.raises((AssertionError, ValueError, RuntimeError)):
        loss_fn(model(x), target)  # the output is smaller than the input: what users hit
    loss = loss_fn(model(x), model.crop_to_output(target))
    loss.backward()
    assert torch.isfinite(loss) and model.head.weight.grad is not None


def test_monai_sliding_window_with_the_same_model_matches_our_overlap_tile():
    from monai.inferers import sliding_window_inference
    from unet_fast.app.predict import predict_logits
    torch.manual_seed(0)
    model = uf.UNet(1, 2, base_channels=4, depth=2, padding="same").eval()
    image = torch.rand(1, 1, 100, 90)
    with torch.no_grad():
        theirs = sliding_window_inference(image, roi_size=(48, 48), sw_batch_size=4,
                                          predictor=model, overlap=0.5, mode="gaussian")
        ours = predict_logits(model, image[0], tile=48, overlap=24)
    assert theirs.shape == (1, 2, 100, 90)
    agree = (theirs[0].argmax(0) == ours.argmax(0)).float().mean().item()
    assert agree > 0.99, agree
