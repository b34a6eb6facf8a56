"""Deeply supervised networks (DynUNet ``deep_supervision=true``): every head's loss trains, coarser ones weigh less;
mirroring TTA averages the flipped predictions mapped back."""
import torch
from monai.losses import DiceCELoss
from torch import nn

from medexp.tasks.segmentation import SegmentationTask


class ThreeHeads(nn.Module):
    """In training: (B, 3 heads, C, *spatial) as DynUNet stacks them; in evaluation the main output only."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))

    def forward(self, x):
        heads = torch.stack([torch.cat([x * s, -x * s], dim=1) for s in self.scale], dim=1)
        return heads if self.training else heads[:, 0]


def test_head_losses_weigh_half_per_level_and_sum_to_one():
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    task = SegmentationTask(ThreeHeads(), torch.optim.SGD, num_classes=2, roi_size=[4, 4, 4], loss=lambda: loss)
    task.log_train_loss = lambda value: None
    images, labels = torch.randn(2, 1, 4, 4, 4), torch.randint(0, 2, (2, 1, 4, 4, 4))
    heads = task.net.train()(images).unbind(dim=1)
    expected = (loss(heads[0], labels) + 0.5 * loss(heads[1], labels) + 0.25 * loss(heads[2], labels)) / 1.75
    assert torch.allclose(task.training_step({"image": images, "label": labels}, 0), expected)
    task.eval()
    assert task.predict_probabilities(images).shape == (2, 2, 4, 4, 4)  # the heads are a training-time matter


def test_mirroring_tta_averages_the_flipped_predictions_mapped_back():
    """A net that is not mirror-symmetric (it sees the column index): TTA = mean of the re-flipped predictions."""
    import torch
    from monai.losses import DiceCELoss

    from medexp.tasks.segmentation import SegmentationTask

    class ColumnAware(torch.nn.Module):
        def forward(self, x):
            ramp = torch.linspace(-2, 2, x.shape[-1]).expand_as(x)
            return torch.cat([x * ramp, -x * ramp + x], dim=1)

    def task(flips):
        return SegmentationTask(ColumnAware(), torch.optim.SGD, num_classes=2, roi_size=[8, 8], loss=DiceCELoss,
                                tta_flips=flips)

    images = torch.rand(1, 1, 8, 8)
    plain, mirrored = task([]).predict_probabilities(images), task([[1]]).predict_probabilities(images)
    flipped_back = task([]).predict_probabilities(images.flip(-1)).flip(-1)
    assert torch.allclose(mirrored, (plain + flipped_back) / 2, atol=1e-5)
    assert not torch.allclose(mirrored, plain, atol=1e-3)
    assert torch.allclose(mirrored.sum(dim=1), torch.ones(1, 8, 8), atol=1e-5)
