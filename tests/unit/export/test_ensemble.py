"""Ensembles in ``medexp-predict``: probabilities averaged before the argmax, on a hand-made case whose answer is
known, and members that cannot be averaged refused in one line."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from medexp import checkpoints
from medexp.errors import ConfigError
from medexp.export.ensemble import Ensemble
from medexp.workflows.predict import predict
from tests.unit.workflows.test_predict import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train(tmp_path_factory.mktemp("ensemble"), "data.num_train=64", "data.num_val=32", "data.num_test=32")


def constant_member(ckpt, probabilities: list[float], path):
    """``ckpt`` made to answer ``probabilities`` for every image: the last layer's weights zero, its bias the
    log-probabilities (the softmax of which they are)."""
    state = torch.load(ckpt, weights_only=True)
    last = sorted(key for key in state["state_dict"] if key.startswith("net.classifier") and key.endswith("weight"))[-1]
    state["state_dict"][last].zero_()
    state["state_dict"][last.replace("weight", "bias")].copy_(torch.tensor([math.log(p) for p in probabilities]))
    torch.save(state, path)
    return str(path)


def probabilities(out) -> tuple[np.ndarray, list[int]]:
    """Per case the class probabilities and the index of the predicted class."""
    with open(out / "predictions.csv") as file:
        rows = list(csv.DictReader(file))
    names = [key.removeprefix("probability_") for key in rows[0] if key.startswith("probability_")]
    return (np.array([[float(r[f"probability_{name}"]) for name in names] for r in rows]),
            [names.index(r["predicted_class"]) for r in rows])


def test_ensemble_averages_probabilities_before_the_argmax(trained, tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (5, 32, 32), dtype=np.uint8)
    np.savez(tmp_path / "cases.npz", test_images=images)
    # A alone says class 0 (0.9), B alone class 1 (0.8): averaged 0.55 / 0.45 -> class 0. Majority voting would tie,
    # and averaging after the argmax would give 0.5.
    a = constant_member(trained, [0.9, 0.1], tmp_path / "a.ckpt")
    b = constant_member(trained, [0.2, 0.8], tmp_path / "b.ckpt")
    predict(b, str(tmp_path / "cases.npz"), tmp_path / "b")
    assert probabilities(tmp_path / "b")[1] == [1] * 5
    summary = predict([a, b], str(tmp_path / "cases.npz"), tmp_path / "ab")
    probs, classes = probabilities(tmp_path / "ab")
    np.testing.assert_allclose(probs, [[0.55, 0.45]] * 5, atol=1e-6)
    assert classes == [0] * 5 and len(summary["checkpoint"]) == 2
    c = constant_member(trained, [0.1, 0.9], tmp_path / "c.ckpt")  # three members: (0.9+0.2+0.1)/3 = 0.4
    predict([a, b, c], str(tmp_path / "cases.npz"), tmp_path / "abc")
    probs, classes = probabilities(tmp_path / "abc")
    np.testing.assert_allclose(probs[:, 0], 0.4, atol=1e-6)
    assert classes == [1] * 5


def test_members_that_preprocess_differently_are_refused(trained, tmp_path):
    state = torch.load(trained, weights_only=True)
    (key,) = [k for k in state if k.endswith("DataModule")]
    state[key]["mean"] = [m + 0.1 for m in state[key]["mean"]]
    torch.save(state, tmp_path / "other.ckpt")
    np.savez(tmp_path / "cases.npz", test_images=np.zeros((1, 32, 32), np.uint8))
    with pytest.raises(ConfigError, match="preprocesses images differently .*\\(mean\\): ensemble models trained on"):
        predict([str(trained), str(tmp_path / "other.ckpt")], str(tmp_path / "cases.npz"), tmp_path / "out")


def test_what_cannot_be_averaged_is_one_line():
    with pytest.raises(ConfigError, match="ckpt_path=\\[\\] names no checkpoint"):
        checkpoints.members([])

    class Detector(torch.nn.Module):
        prediction_kind, class_names = "detection", ["lesion"]

    with pytest.raises(ConfigError, match="cannot ensemble detection models"):
        Ensemble([Detector(), Detector()])


def test_a_sweep_ensembles_its_finished_children_best_checkpoints(trained, tmp_path, tracking_uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("sweeps")
    parent = client.create_run(experiment, tags={"sweep.name": "seeds", "sweep.kind": "grid"}, run_name="seeds")
    for index, (probs, status) in enumerate([([0.9, 0.1], "FINISHED"), ([0.2, 0.8], "FINISHED"),
                                             ([0.01, 0.99], "FAILED")]):  # a failed child is left out
        child = client.create_run(experiment, tags={"mlflow.parentRunId": parent.info.run_id})
        folder = tmp_path / f"child{index}"
        folder.mkdir()
        client.log_artifact(child.info.run_id, constant_member(trained, probs, folder / "best-epoch000.ckpt"),
                            "checkpoints")
        client.set_terminated(child.info.run_id, status)
    np.savez(tmp_path / "cases.npz", test_images=np.zeros((2, 32, 32), np.uint8))
    for sweep in ("seeds", parent.info.run_id):
        assert len(checkpoints.members(f"sweep:{sweep}")) == 2
        predict(f"sweep:{sweep}", str(tmp_path / "cases.npz"), tmp_path / sweep)
        np.testing.assert_allclose(probabilities(tmp_path / sweep)[0], [[0.55, 0.45]] * 2, atol=1e-6)
    with pytest.raises(ConfigError, match="no sweep 'nope'"):
        checkpoints.members("sweep:nope")
