"""Re-score saved test probabilities (search.py --save_probs) under different FOV erosions."""
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from search import DATA, metrics  # noqa: E402

probs = [p.float() for p in torch.load(sys.argv[1])]
labels, fovs = [], []
for c in range(11, 15):
    for e in "LR":
        img = np.asarray(Image.open(f"{DATA}/Image_{c:02d}{e}.jpg")).astype(np.float32)
        lab = np.asarray(Image.open(f"{DATA}/Image_{c:02d}{e}_1stHO.png")).astype(np.float32)
        # search.py works in MONAI's PIL orientation (W, H): transpose to match
        labels.append(torch.from_numpy(lab.T.copy()))
        fovs.append(torch.from_numpy((img.mean(-1) > 10.0).T.copy()).float())
for erode in (0, 2, 4, 8):
    print(erode, metrics(probs, labels, fovs, erode))
