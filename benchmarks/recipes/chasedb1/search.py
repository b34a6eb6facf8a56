"""Recipe search for CHASEDB1 retinal vessel segmentation (plain PyTorch + MONAI, CPU).

Protocol: children 01-10 train/val (val = the children in --val_children, default "10"), 11-14 test,
ground truth = 1stHO masks. FOV = mean(RGB)/255 > --fov_thr (optionally eroded by --fov_erode px).
Test metrics are computed at the ORIGINAL resolution, on FOV pixels only:
Dice of (sigmoid prob > 0.5) pooled over all test pixels ("global"), mean per-image Dice, pixel AUROC.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc

T0 = time.time()
C0 = time.process_time()

from monai.data import CacheDataset, DataLoader, list_data_collate  # noqa: E402
from monai.inferers import SlidingWindowInferer  # noqa: E402
from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss  # noqa: E402
from monai.networks.nets import UNet  # noqa: E402
from monai.transforms import (  # noqa: E402
    CastToTyped,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    FgBgToIndicesd,
    Lambdad,
    LoadImaged,
    NormalizeIntensityd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropSamplesd,
    Resized,
    ScaleIntensityd,
)
from monai.utils import set_determinism  # noqa: E402

DATA = "/work/shared/data/CHASEDB1"


def parse_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=DATA)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val_children", default="10")
    # preprocessing
    p.add_argument("--chan", default="green", choices=["green", "rgb"])
    p.add_argument("--norm", default="zscore", choices=["zscore", "zscore_fov", "minmax"])
    p.add_argument("--scale", type=float, default=1.0, help="resize factor for train+inference (metrics at full res)")
    p.add_argument("--fov_thr", type=float, default=10.0, help="on mean RGB in 0..255")
    p.add_argument("--fov_erode", type=int, default=0)
    # sampling
    p.add_argument("--crop", default="posneg", choices=["posneg", "rand"])
    p.add_argument("--pos", type=float, default=1.0)
    p.add_argument("--neg", type=float, default=1.0)
    p.add_argument("--patch", type=int, default=96)
    p.add_argument("--samples", type=int, default=8, help="patches per image per draw")
    p.add_argument("--imgs_per_batch", type=int, default=2, help="batch = imgs_per_batch*samples")
    # aug
    p.add_argument("--aug", default="full", choices=["none", "flip", "full"])
    p.add_argument("--affine_p", type=float, default=0.3)
    p.add_argument("--rot_deg", type=float, default=15.0)
    p.add_argument("--scale_range", type=float, default=0.1)
    p.add_argument("--int_p", type=float, default=0.5)
    # model
    p.add_argument("--channels", default="16,32,64,128")
    p.add_argument("--strides", default="2,2,2")
    p.add_argument("--res_units", type=int, default=0)
    p.add_argument("--norm_layer", default="batch", choices=["batch", "instance"])
    p.add_argument("--dropout", type=float, default=0.0)
    # optimisation
    p.add_argument("--loss", default="dicece", choices=["dicece", "dice", "bce", "dicefocal"])
    p.add_argument("--lambda_dice", type=float, default=1.0)
    p.add_argument("--lambda_ce", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--wd", type=float, default=1e-4)
    p.add_argument("--opt", default="adamw", choices=["adamw", "adam", "sgd"])
    p.add_argument("--sched", default="onecycle", choices=["onecycle", "cosine", "none"])
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of iters (onecycle pct_start / cosine warmup)")
    p.add_argument("--iters", type=int, default=600)
    p.add_argument("--time_budget", type=float, default=0.0, help="seconds of training; 0 = use --iters only")
    p.add_argument("--val_every", type=int, default=0, help="0 = validate only at end (last ckpt)")
    p.add_argument("--val_from", type=float, default=0.5, help="first validation at this fraction of iters")
    # inference
    p.add_argument("--roi", type=int, default=0, help="0 = 2*patch")
    p.add_argument("--sw_batch", type=int, default=8)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--skip_test", action="store_true")
    p.add_argument("--speed", type=int, default=0, help="only time N train iters and 1 inference, then exit")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--save_probs", default="")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def file_list(data, children):
    out = []
    for c in children:
        for e in "LR":
            out.append(
                {
                    "img": os.path.join(data, f"Image_{c:02d}{e}.jpg"),
                    "label": os.path.join(data, f"Image_{c:02d}{e}_1stHO.png"),
                    "name": f"{c:02d}{e}",
                }
            )
    return out


def det_transforms(a):
    """Deterministic (cached) part. Keeps full-res label 'label_full' and FOV 'fov_full' for metrics."""
    keys = ["img", "label"]
    t = [
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),  # img (3,W,H) ; label (1,W,H)
        CastToTyped(keys=keys, dtype=np.float32),
        CopyFOV(a.fov_thr),  # FOV from the raw RGB image (0..255)
    ]
    if a.chan == "green":
        t.append(Lambdad(keys="img", func=lambda x: x[1:2]))
    if a.norm == "zscore":
        t.append(NormalizeIntensityd(keys="img", channel_wise=True))
    elif a.norm == "minmax":
        t.append(ScaleIntensityd(keys="img", minv=0.0, maxv=1.0, channel_wise=True))
    elif a.norm == "zscore_fov":
        t.append(FOVZscore())
    if a.scale != 1.0:
        t.append(KeepFull())
        t.append(ScaleResize(a.scale))
    t.append(EnsureTyped(keys=["img", "label"], track_meta=False))
    if a.crop == "posneg":
        # precomputed once (cached): fg = vessel pixels, bg = non-vessel pixels inside the FOV
        t.append(FgBgToIndicesd(keys="label", image_key="fov" if a.scale == 1.0 else None, image_threshold=0.5))
    return Compose(t)


class CopyFOV:
    def __init__(self, thr):
        self.thr = thr

    def __call__(self, d):
        d = dict(d)
        img = torch.as_tensor(d["img"])
        d["fov"] = (img.mean(0, keepdim=True) > self.thr).float().as_subclass(torch.Tensor)
        return d


class FOVZscore:
    def __call__(self, d):
        d = dict(d)
        img = torch.as_tensor(d["img"]).as_subclass(torch.Tensor)
        m = d["fov"][0] > 0
        out = torch.empty_like(img)
        for c in range(img.shape[0]):
            v = img[c][m]
            out[c] = (img[c] - v.mean()) / (v.std() + 1e-6)
        d["img"] = out
        return d


class KeepFull:
    def __call__(self, d):
        d = dict(d)
        d["label_full"] = torch.as_tensor(d["label"]).as_subclass(torch.Tensor).clone()
        d["fov_full"] = d["fov"].clone()
        return d


class ScaleResize:
    def __init__(self, s):
        self.s = s

    def __call__(self, d):
        d = dict(d)
        img = torch.as_tensor(d["img"]).as_subclass(torch.Tensor)
        size = [int(round(x * self.s)) for x in img.shape[1:]]
        d["img"] = Resized(keys="img", spatial_size=size, mode="area")({"img": img})["img"]
        lab = torch.as_tensor(d["label"]).as_subclass(torch.Tensor)
        # soft label via area averaging, then binarise
        d["label"] = (Resized(keys="l", spatial_size=size, mode="area")({"l": lab})["l"] > 0.5).float()
        return d


def rand_transforms(a):
    keys = ["img", "label"]
    if a.crop == "posneg":
        crop = RandCropByPosNegLabeld(
            keys=keys, label_key="label", spatial_size=(a.patch, a.patch), pos=a.pos, neg=a.neg,
            num_samples=a.samples, fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices",
        )
    else:
        crop = RandSpatialCropSamplesd(
            keys=keys, roi_size=(a.patch, a.patch), num_samples=a.samples, random_size=False
        )
    t = [crop]
    if a.aug in ("flip", "full"):
        t += [
            RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
            RandRotate90d(keys=keys, prob=0.5, max_k=3),
        ]
    if a.aug == "full":
        if a.affine_p > 0:
            t.append(
                RandAffined(
                    keys=keys, prob=a.affine_p, rotate_range=(math.radians(a.rot_deg),),
                    scale_range=(a.scale_range, a.scale_range), mode=("bilinear", "nearest"),
                    padding_mode="reflection",
                )
            )
        if a.int_p > 0:
            t += [
                RandScaleIntensityd(keys="img", factors=0.1, prob=a.int_p),
                RandShiftIntensityd(keys="img", offsets=0.1, prob=a.int_p),
                RandAdjustContrastd(keys="img", gamma=(0.8, 1.25), prob=0.0),  # off (z-scored input has negatives)
            ]
    t.append(EnsureTyped(keys=keys, track_meta=False))
    return Compose(t)


class PatchDataset(torch.utils.data.Dataset):
    """Applies random transforms to cached items; each item -> list of `samples` patches."""

    def __init__(self, cached, tf, length):
        self.cached, self.tf, self.length = cached, tf, length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        d = self.cached[i % len(self.cached)]
        out = self.tf({k: d[k] for k in ("img", "label", "label_fg_indices", "label_bg_indices") if k in d})
        return [{"img": o["img"], "label": o["label"]} for o in out]


def build_model(a, in_ch):
    return UNet(
        spatial_dims=2,
        in_channels=in_ch,
        out_channels=1,
        channels=tuple(int(x) for x in a.channels.split(",")),
        strides=tuple(int(x) for x in a.strides.split(",")),
        num_res_units=a.res_units,
        norm=a.norm_layer,
        dropout=a.dropout,
    )


def build_loss(a):
    if a.loss == "dicece":
        return DiceCELoss(sigmoid=True, lambda_dice=a.lambda_dice, lambda_ce=a.lambda_ce)
    if a.loss == "dice":
        return DiceLoss(sigmoid=True)
    if a.loss == "dicefocal":
        return DiceFocalLoss(sigmoid=True)
    return torch.nn.BCEWithLogitsLoss()


@torch.no_grad()
def predict(model, inferer, d, scale):
    img = torch.as_tensor(d["img"]).as_subclass(torch.Tensor)[None]
    logits = inferer(img, model)
    prob = torch.sigmoid(logits)[0, 0]
    if scale != 1.0:
        full = d["label_full"].shape[1:]
        prob = F.interpolate(prob[None, None], size=full, mode="bilinear", align_corners=False)[0, 0]
    return prob


def metrics(probs, labels, fovs, erode):
    ps, ls = [], []
    per = []
    for p, l, f in zip(probs, labels, fovs):
        f = f.float()
        if erode > 0:
            k = 2 * erode + 1
            f = -F.max_pool2d(-f[None, None], k, stride=1, padding=erode)[0, 0]
        m = f > 0.5
        pv, lv = p[m], l[m] > 0.5
        pr = pv > 0.5
        inter = (pr & lv).sum().item()
        per.append(2 * inter / (pr.sum().item() + lv.sum().item() + 1e-9))
        ps.append(pv)
        ls.append(lv)
    pv, lv = torch.cat(ps), torch.cat(ls)
    pr = pv > 0.5
    tp = (pr & lv).sum().item()
    fp = (pr & ~lv).sum().item()
    fn = (~pr & lv).sum().item()
    tn = (~pr & ~lv).sum().item()
    dice = 2 * tp / (2 * tp + fp + fn)
    auroc = binary_auroc(pv, lv.int()).item()
    return {
        "dice": round(dice, 4),
        "dice_img": round(float(np.mean(per)), 4),
        "auroc": round(auroc, 4),
        "acc": round((tp + tn) / (tp + tn + fp + fn), 4),
        "sens": round(tp / (tp + fn), 4),
        "spec": round(tn / (tn + fp), 4),
    }


def evaluate(model, inferer, items, a):
    model.eval()
    probs, labels, fovs = [], [], []
    for d in items:
        probs.append(predict(model, inferer, d, a.scale))
        if a.scale != 1.0:
            labels.append(d["label_full"][0])
            fovs.append(d["fov_full"][0])
        else:
            labels.append(torch.as_tensor(d["label"]).as_subclass(torch.Tensor)[0])
            fovs.append(d["fov"][0])
    model.train()
    return metrics(probs, labels, fovs, a.fov_erode), probs


def main(argv=None):
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    set_determinism(seed=a.seed)
    timing = {"import": round(time.time() - T0, 1)}

    val_c = [int(x) for x in a.val_children.split(",") if x]
    tr_c = [c for c in range(1, 11) if c not in val_c]
    t = time.time()
    dtf = det_transforms(a)
    train_ds = CacheDataset(file_list(a.data, tr_c), dtf, num_workers=0, progress=False)
    val_ds = CacheDataset(file_list(a.data, val_c), dtf, num_workers=0, progress=False) if val_c else []
    test_items = None
    if not a.skip_test:
        test_ds = CacheDataset(file_list(a.data, range(11, 15)), dtf, num_workers=0, progress=False)
        test_items = [test_ds[i] for i in range(len(test_ds))]
    val_items = [val_ds[i] for i in range(len(val_ds))]
    timing["load"] = round(time.time() - t, 1)

    in_ch = 1 if a.chan == "green" else 3
    model = build_model(a, in_ch)
    nparams = sum(p.numel() for p in model.parameters())
    loss_fn = build_loss(a)
    if a.opt == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.wd)
    elif a.opt == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=a.lr, weight_decay=a.wd)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=a.lr, weight_decay=a.wd, momentum=0.9, nesterov=True)
    if a.sched == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.iters, pct_start=a.warmup)
    elif a.sched == "cosine":
        w = max(1, int(a.warmup * a.iters))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / w if s < w else 0.5 * (1 + math.cos(math.pi * (s - w) / max(1, a.iters - w)))
        )
    else:
        sched = None

    roi = a.roi or 2 * a.patch
    inferer = SlidingWindowInferer(roi_size=(roi, roi), sw_batch_size=a.sw_batch, overlap=a.overlap, mode="gaussian")

    ptf = rand_transforms(a)
    ptf.set_random_state(seed=a.seed)
    # length: enough draws for all iterations
    pds = PatchDataset(train_ds, ptf, length=a.iters * a.imgs_per_batch + 100)
    g = torch.Generator()
    g.manual_seed(a.seed)
    loader = DataLoader(pds, batch_size=a.imgs_per_batch, shuffle=True, num_workers=0, collate_fn=list_data_collate,
                        generator=g)

    if a.speed:
        t = time.time()
        c0 = time.process_time()
        it = iter(loader)
        tdata = 0.0
        for i in range(a.speed):
            t1 = time.time()
            b = next(it)
            tdata += time.time() - t1
            loss = loss_fn(model(b["img"]), b["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        ttrain = time.time() - t
        ctrain = time.process_time() - c0
        t = time.time()
        with torch.no_grad():
            model.eval()
            predict(model, inferer, val_items[0], a.scale)
        tinf = time.time() - t
        print(json.dumps({"params": nparams, "s_per_iter": round(ttrain / a.speed, 3), "cpu_s_per_iter": round(ctrain / a.speed, 3),
                          "data_s_per_iter": round(tdata / a.speed, 3), "infer_s_per_img": round(tinf, 2),
                          "batch": a.imgs_per_batch * a.samples, "load_s": timing["load"]}))
        return

    model.train()
    t = time.time()
    c0 = time.process_time()
    best, best_state, best_it, hist = -1.0, None, -1, []
    it, step, losses = iter(loader), 0, []
    tval = 0.0
    val_from = int(a.val_from * a.iters)
    while step < a.iters:
        if a.time_budget and (time.time() - t - tval) > a.time_budget:
            break
        b = next(it)
        logits = model(b["img"])
        loss = loss_fn(logits, b["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        step += 1
        losses.append(loss.item())
        if a.verbose and step % 50 == 0:
            print(f"it {step} loss {np.mean(losses[-50:]):.4f} {time.time() - t:.0f}s", flush=True)
        if a.val_every and val_items and step >= val_from and (step % a.val_every == 0 or step == a.iters):
            tv = time.time()
            m, _ = evaluate(model, inferer, val_items, a)
            tval += time.time() - tv
            hist.append((step, m["dice"], m["auroc"]))
            if a.verbose:
                print(f"  val@{step} {m}", flush=True)
            if m["dice"] > best:
                best, best_it = m["dice"], step
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    timing["train"] = round(time.time() - t - tval, 1)
    timing["cpu_train_val"] = round(time.process_time() - c0, 1)
    timing["val"] = round(tval, 1)
    if best_state is not None:
        model.load_state_dict(best_state)
    res = {"iters_done": step, "best_it": best_it, "params": nparams,
           "final_loss": round(float(np.mean(losses[-50:])), 4)}
    if not a.val_every and val_items:
        tv = time.time()
        m, _ = evaluate(model, inferer, val_items, a)
        timing["val"] = round(time.time() - tv, 1)
        best = m["dice"]
        res["val_auroc"] = m["auroc"]
    res["val_dice"] = round(best, 4)
    res["val_hist"] = hist
    if test_items is not None:
        t = time.time()
        m, probs = evaluate(model, inferer, test_items, a)
        timing["test"] = round(time.time() - t, 1)
        res.update({f"test_{k}": v for k, v in m.items()})
        if a.save_probs:
            torch.save([p.half() for p in probs], a.save_probs)
    timing["total"] = round(time.time() - T0, 1)
    timing["cpu_total"] = round(time.process_time() - C0, 1)
    res["timing"] = timing
    res["args"] = {k: v for k, v in vars(a).items() if k not in ("data", "verbose")}
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
