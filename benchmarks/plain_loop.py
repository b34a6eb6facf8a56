"""The baseline a user would write by hand: the classic CNN (or a ResNet-18) on a MedMNIST npz, a
DataLoader over a TensorDataset, Adam, the loop, test evaluation at the end. Prints one JSON line.

    python benchmarks/plain_loop.py pneumoniamnist.npz --model cnn --epochs 30 [--device cuda --resident]

``--resident`` keeps the data on the device and takes batches by index (the fastest plain loop on a GPU).
``--precision bf16-mixed`` runs forward and loss under bfloat16 autocast, as Lightning's precision of that name does.
``--augmentation light`` applies medexp's ``augmentation=light`` recipe the way one would write it by hand: on
the device, whole batch at once, all random numbers of a batch in one draw. ``--kernels`` adds the kernels one
training step launches (``kernel_count.py``).
"""
import argparse
import functools
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def classic_cnn(classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, classes))


def small_resnet18(classes: int) -> nn.Module:
    from monai.networks.nets import ResNet

    return ResNet(block="basic", layers=[2, 2, 2, 2], block_inplanes=[32, 64, 128, 256], spatial_dims=2,
                  n_input_channels=1, num_classes=classes, conv1_t_size=3, conv1_t_stride=1, no_max_pool=True)


def resnet18_small_input(classes: int) -> nn.Module:
    """torchvision's ResNet-18 with the 3x3 stride-1 stem and no max-pool for 28 px (medexp's model=resnet18
    model.small_input=true)."""
    from torchvision.models import resnet18

    net = resnet18(weights=None, num_classes=classes)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


NETWORKS = {"cnn": classic_cnn, "resnet18_small": small_resnet18, "resnet18": resnet18_small_input}


def light_augmentation(x: torch.Tensor) -> torch.Tensor:
    """augmentation=light: with p 0.5 rotate +-10 deg, zoom 0.9-1.1, shift +-5 %; flip left-right with p 0.5; with
    p 0.5 each, shift intensity +-0.1 and scale contrast 0.9-1.1 around the image mean."""
    n = x.shape[0]
    u = torch.rand(n, 8, device=x.device)  # every random number of the batch in one draw
    hit = (u[:, 0] < 0.5).float()
    angle = (u[:, 1] * 20 - 10) * (math.pi / 180) * hit
    zoom = 1 + (u[:, 2] * 0.2 - 0.1) * hit
    flip = 1 - 2 * (u[:, 3] < 0.5).float()
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    shift = (u[:, 4:6] * 0.2 - 0.1) * hit[:, None]
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    per_sample = (-1, 1, 1, 1)
    offset = torch.where(u[:, 6] < 0.5, torch.rand(n, device=x.device) * 0.2 - 0.1, 0.0).view(per_sample)
    factor = torch.where(u[:, 7] < 0.5, torch.rand(n, device=x.device) * 0.2 + 0.9, 1.0).view(per_sample)
    x = x + offset
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * factor + mean


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("npz")
    ap.add_argument("--model", default="cnn", choices=sorted(NETWORKS))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resident", action="store_true")
    ap.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    ap.add_argument("--augmentation", default="none", choices=["none", "light"])
    ap.add_argument("--kernels", action="store_true", help="also count the kernels of one training step")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    device = torch.device(a.device)
    d = np.load(a.npz)

    def images(key):
        return torch.tensor(d[key], dtype=torch.float32).unsqueeze(1) / 255.0

    xtr, ytr = images("train_images"), torch.tensor(d["train_labels"].ravel(), dtype=torch.long)
    xte, yte = images("test_images"), d["test_labels"].ravel()
    classes = int(ytr.max()) + 1
    net = NETWORKS[a.model](classes).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    if a.resident:
        xtr, ytr = xtr.to(device), ytr.to(device)
    loader = DataLoader(TensorDataset(xtr, ytr), batch_size=a.batch, shuffle=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.precision == "bf16-mixed")

    def step(x, y):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if a.augmentation == "light":
            x = light_augmentation(x)
        opt.zero_grad()
        with autocast:
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()

    net.train()
    kernels = {}
    t0 = time.perf_counter()
    for epoch in range(a.epochs):
        if a.resident:
            order = torch.randperm(len(ytr), device=device)
            batches = ((xtr[i], ytr[i]) for i in order.split(a.batch))
        else:
            batches = loader
        for i, (x, y) in enumerate(batches):
            if a.kernels and epoch == 0 and i == 5:  # warm: not the first steps
                from kernel_count import count_step  # imports Lightning: only when asked

                kernels = count_step(functools.partial(step, x, y), device)
            else:
                step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    net.eval()
    with torch.no_grad(), autocast:
        prob = torch.softmax(net(xte.to(device)).float(), 1).cpu().numpy()
    print(json.dumps({"model": a.model, "epochs": a.epochs, "train_s": round(train_s, 3),
                      "img_per_s": round(len(ytr) * a.epochs / train_s, 1),
                      "test_acc": round(float((prob.argmax(1) == yte).mean()), 4), **kernels}))


if __name__ == "__main__":
    main()
