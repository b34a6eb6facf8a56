"""Saliency maps for report pages: MONAI's Grad-CAM (``monai.visualize.GradCAM``). MONAI is already a dependency
and its CAM takes the layer by name for any of medexp's 2D/3D networks; the ``grad-cam`` package would add a
dependency for the same map."""
from __future__ import annotations

import numpy as np


def grad_cam(net, images, classes: np.ndarray) -> list[np.ndarray]:
    """MONAI's Grad-CAM at the network's last convolution, for the predicted class of each image."""
    import torch
    from monai.visualize import GradCAM

    last_conv = [name for name, module in net.named_modules() if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d))][-1]
    cam = GradCAM(nn_module=net, target_layers=last_conv)
    maps = []
    with torch.inference_mode(False), torch.enable_grad():  # Lightning's test hooks run under inference mode
        for image, label in zip(images, classes, strict=True):
            heat = cam(image[None].clone().requires_grad_(True), class_idx=int(label))[0, 0]
            maps.append(heat.detach().cpu().numpy())
    return maps
