"""Recipe search for PneumoniaMNIST binary classification (plain PyTorch).

Prints one JSON line with val AUROC (of the chosen checkpoint), test AUROC, test ACC and train seconds.
Checkpoint selection uses the validation split only; test is evaluated once at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc


def parse_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="/work/shared/data/pneumoniamnist.npz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    # model
    p.add_argument("--layers", default="1,1,1,1")
    p.add_argument("--widths", default="16,32,64,128")
    # optimisation
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--opt", default="adamw", choices=["adamw", "adam", "sgd"])
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--sched", default="cosine", choices=["cosine", "onecycle", "none"])
    p.add_argument("--warmup_epochs", type=float, default=0.0)
    p.add_argument("--class_weights", default="balanced", choices=["balanced", "none"])
    p.add_argument("--label_smoothing", type=float, default=0.0)
    p.add_argument("--select", default="best_val_auroc", choices=["best_val_auroc", "last", "best_val_loss"])
    # augmentation
    p.add_argument("--aug_p", type=float, default=0.8, help="per-op probability")
    p.add_argument("--rotate_deg", type=float, default=10.0)
    p.add_argument("--scale_min", type=float, default=0.9)
    p.add_argument("--scale_max", type=float, default=1.1)
    p.add_argument("--translate", type=float, default=0.1, help="fraction of image size")
    p.add_argument("--hflip_p", type=float, default=0.0)
    p.add_argument("--intensity_shift", type=float, default=0.1, help="+- in normalised units")
    p.add_argument("--contrast_min", type=float, default=0.8)
    p.add_argument("--contrast_max", type=float, default=1.2)
    p.add_argument("--noise_std", type=float, default=0.05)
    p.add_argument("--no_aug", action="store_true")
    p.add_argument("--pad", default="border", choices=["border", "zeros", "min", "reflection"])
    p.add_argument("--tta_flip", action="store_true", help="average hflip at eval (only if hflip_p>0)")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--all_rules", action="store_true", help="also report test metrics for every selection rule")
    p.add_argument("--threads", type=int, default=0)
    return p.parse_args(argv)


def load(path, device):
    d = np.load(path)
    out = {}
    for s in ("train", "val", "test"):
        x = torch.from_numpy(d[f"{s}_images"]).float().div_(255.0).unsqueeze(1)
        y = torch.from_numpy(d[f"{s}_labels"]).long().view(-1)
        out[s] = (x, y)
    mean = out["train"][0].mean()
    std = out["train"][0].std()
    for s in out:
        x, y = out[s]
        out[s] = (((x - mean) / std).to(device), y.to(device))
    return out, float(mean), float(std)


def augment(x, a, gen):
    """Batched per-sample augmentation. x: (B,1,H,W) normalised. gen: torch.Generator on x.device."""
    b = x.shape[0]
    dev = x.device

    def u(lo, hi):
        return torch.rand(b, device=dev, generator=gen) * (hi - lo) + lo

    def on(prob):
        return (torch.rand(b, device=dev, generator=gen) < prob).float()

    p = a.aug_p
    # geometry (per-op probability gates each parameter to identity)
    ang = u(-a.rotate_deg, a.rotate_deg) * math.pi / 180.0 * on(p)
    m_s = on(p)
    sc = u(a.scale_min, a.scale_max) * m_s + (1 - m_s)
    m_t = on(p)
    tx = u(-a.translate, a.translate) * 2.0 * m_t  # affine_grid coords span [-1,1] => fraction*2
    ty = u(-a.translate, a.translate) * 2.0 * m_t
    flip = 1.0 - 2.0 * on(a.hflip_p)
    cos, sin = torch.cos(ang), torch.sin(ang)
    # theta maps output coords -> input coords; zoom-in for sc>1 => divide
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = cos / sc * flip
    theta[:, 0, 1] = -sin / sc
    theta[:, 1, 0] = sin / sc * flip
    theta[:, 1, 1] = cos / sc
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # pad with the image minimum (background), via shift so zeros padding = min
    if a.pad == "min":
        xmin = x.amin(dim=(1, 2, 3), keepdim=True)
        x = F.grid_sample(x - xmin, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + xmin
    else:
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode=a.pad, align_corners=False)
    # intensity: contrast around per-image mean, brightness shift, noise
    m_c = on(p).view(b, 1, 1, 1)
    c = u(a.contrast_min, a.contrast_max).view(b, 1, 1, 1)
    c = c * m_c + (1 - m_c)
    mu = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mu) * c + mu
    x = x + (u(-a.intensity_shift, a.intensity_shift) * on(p)).view(b, 1, 1, 1)
    if a.noise_std > 0:
        x = x + torch.randn(x.shape, device=dev, generator=gen) * a.noise_std * on(p).view(b, 1, 1, 1)
    return x


def build_model(a):
    from monai.networks.nets import ResNet

    return ResNet(
        block="basic",
        layers=[int(v) for v in a.layers.split(",")],
        block_inplanes=[int(v) for v in a.widths.split(",")],
        spatial_dims=2,
        n_input_channels=1,
        num_classes=2,
        conv1_t_size=3,
        conv1_t_stride=1,
        no_max_pool=True,
    )


@torch.no_grad()
def predict(model, x, bs=512, tta_flip=False):
    model.eval()
    ps = []
    for i in range(0, x.shape[0], bs):
        xb = x[i : i + bs]
        p = F.softmax(model(xb), dim=1)[:, 1]
        if tta_flip:
            p = 0.5 * (p + F.softmax(model(torch.flip(xb, dims=[3])), dim=1)[:, 1])
        ps.append(p)
    return torch.cat(ps)


def metrics(p, y):
    auc = float(binary_auroc(p, y))
    acc = float(((p >= 0.5).long() == y).float().mean())
    return auc, acc


def main(argv=None):
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    data, mean, std = load(a.data, dev)
    xtr, ytr = data["train"]
    xva, yva = data["val"]
    xte, yte = data["test"]
    model = build_model(a).to(dev)
    gen = torch.Generator(device=dev)
    gen.manual_seed(a.seed)

    if a.class_weights == "balanced":
        counts = torch.bincount(ytr, minlength=2).float()
        w = counts.sum() / (2 * counts)
    else:
        w = torch.ones(2)
    w = w.to(dev)

    if a.opt == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.momentum, nesterov=True, weight_decay=a.wd)
    elif a.opt == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=a.lr, weight_decay=a.wd)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.wd)

    n = xtr.shape[0]
    steps_per_epoch = math.ceil(n / a.batch_size)
    total = steps_per_epoch * a.epochs
    if a.sched == "cosine":
        warm = int(a.warmup_epochs * steps_per_epoch)
        if warm > 0:
            sched = torch.optim.lr_scheduler.SequentialLR(
                opt,
                [
                    torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=warm),
                    torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warm),
                ],
                milestones=[warm],
            )
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    elif a.sched == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=total)
    else:
        sched = None

    best = {r: (-1e9, None, -1) for r in ("best_val_auroc", "last", "best_val_loss")}
    hist = []
    t0 = time.time()
    c0 = time.process_time()
    for ep in range(a.epochs):
        model.train()
        perm = torch.randperm(n, device=dev, generator=gen)
        tl = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * a.batch_size : (i + 1) * a.batch_size]
            xb, yb = xtr[idx], ytr[idx]
            if not a.no_aug:
                xb = augment(xb, a, gen)
            loss = F.cross_entropy(model(xb), yb, weight=w, label_smoothing=a.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            tl += loss.item()
        pv = predict(model, xva, tta_flip=a.tta_flip)
        vauc, vacc = metrics(pv, yva)
        vloss = float(F.nll_loss(torch.log(torch.stack([1 - pv, pv], 1).clamp_min(1e-7)), yva, weight=w))
        hist.append((ep, round(tl / steps_per_epoch, 4), round(vauc, 4), round(vacc, 4), round(vloss, 4)))
        if a.verbose:
            print(hist[-1], round(time.time() - t0, 1), flush=True)
        scores = {"best_val_auroc": vauc, "last": ep, "best_val_loss": -vloss}
        for rule, score in scores.items():
            if score >= best[rule][0]:
                best[rule] = (score, {k: v.detach().clone() for k, v in model.state_dict().items()}, ep)
    train_s = time.time() - t0
    train_cpu_s = time.process_time() - c0
    res = {}
    for rule in best:
        model.load_state_dict(best[rule][1])
        pv = predict(model, xva, tta_flip=a.tta_flip)
        vauc, vacc = metrics(pv, yva)
        pt = predict(model, xte, tta_flip=a.tta_flip)
        tauc, tacc = metrics(pt, yte)
        res[rule] = {"val_auroc": round(vauc, 4), "val_acc": round(vacc, 4), "test_auroc": round(tauc, 4),
                     "test_acc": round(tacc, 4), "epoch": best[rule][2]}
    r = res[a.select]
    out = {
        "seed": a.seed,
        "val_auroc": r["val_auroc"],
        "val_acc": r["val_acc"],
        "test_auroc": r["test_auroc"],
        "test_acc": r["test_acc"],
        "chosen_epoch": r["epoch"],
        "by_rule": res if a.all_rules else None,
        "train_s": round(train_s, 1),
        "train_cpu_s": round(train_cpu_s, 1),
        "epoch_s": round(train_s / a.epochs, 2),
        "n_params": sum(p.numel() for p in model.parameters()),
        "args": {k: v for k, v in vars(a).items() if k not in ("data", "verbose")},
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
