"""The baseline a user would write by hand: the classic CNN (or the small ResNet-18) on a MedMNIST npz, a
DataLoader over a TensorDataset, Adam, the loop, test evaluation at the end. Prints one JSON line.

    python benchmarks/plain_loop.py pneumoniamnist.npz --model cnn --epochs 30 [--device cuda --resident]

``--resident`` keeps the data on the device and takes batches by index (the fastest plain loop on a GPU).
"""
import argparse
import json
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("npz")
    ap.add_argument("--model", default="cnn", choices=["cnn", "resnet18_small"])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resident", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    device = torch.device(a.device)
    d = np.load(a.npz)

    def images(key):
        return torch.tensor(d[key], dtype=torch.float32).unsqueeze(1) / 255.0

    xtr, ytr = images("train_images"), torch.tensor(d["train_labels"].ravel(), dtype=torch.long)
    xte, yte = images("test_images"), d["test_labels"].ravel()
    classes = int(ytr.max()) + 1
    net = (classic_cnn if a.model == "cnn" else small_resnet18)(classes).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    if a.resident:
        xtr, ytr = xtr.to(device), ytr.to(device)
    loader = DataLoader(TensorDataset(xtr, ytr), batch_size=a.batch, shuffle=True)
    net.train()
    t0 = time.perf_counter()
    for _ in range(a.epochs):
        if a.resident:
            order = torch.randperm(len(ytr), device=device)
            batches = ((xtr[i], ytr[i]) for i in order.split(a.batch))
        else:
            batches = loader
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    net.eval()
    with torch.no_grad():
        prob = torch.softmax(net(xte.to(device)), 1).cpu().numpy()
    print(json.dumps({"model": a.model, "epochs": a.epochs, "train_s": round(train_s, 3),
                      "img_per_s": round(len(ytr) * a.epochs / train_s, 1),
                      "test_acc": round(float((prob.argmax(1) == yte).mean()), 4)}))


if __name__ == "__main__":
    main()
