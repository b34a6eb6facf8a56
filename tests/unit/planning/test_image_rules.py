"""Each classification and detection plan rule on a constructed fingerprint: the value it plans and that its reason
names the figure used; and the sweep space centred on a plan."""
from __future__ import annotations

import pytest

from medexp.planning import image_rules
from medexp.planning.search import search_space, sizes_around


def classification_fp(**changes) -> dict:
    """4708 gray 28x28 arrays (PneumoniaMNIST-like), imbalanced 1:3, oriented on both axes."""
    fp = {
        "task": "classification", "spatial_dims": 2, "channels": 1, "source": "arrays",
        "cases_per_split": {"train": 4708, "val": 524, "test": 624},
        "modality": {"kind": "unknown", "why": "1 channel(s)"},
        "shape": {"median": [28.0, 28.0], "min": [28.0, 28.0], "max": [28.0, 28.0], "one_shape": True},
        "intensity": {"image": {"p00_5": [14.0], "p99_5": [227.0]}}, "binary_images": False,
        "orientation": {"asymmetry": [0.3, 0.06], "agreeing_cases": [0.99, 0.93], "one_orientation": [True, True]},
        "labels": {"multi_label": False, "num_classes": 2, "counts": {"train": [1214, 3494]}, "imbalance": 2.88},
    }
    fp.update(changes)
    return fp


def detection_fp(**changes) -> dict:
    """BCCD-like: 480x640 photographs, ~14 cells per image of 40-170 px, touching cells."""
    fp = {
        "task": "detection", "spatial_dims": 2, "channels": 3, "source": "files",
        "cases_per_split": {"train": 205, "val": 87, "test": 72},
        "shape": {"median": [480.0, 640.0], "one_shape": True},
        "orientation": {"asymmetry": [0.02, 0.02], "agreeing_cases": [0.6, 0.6], "one_orientation": [False, False]},
        "labels": {"num_classes": 3, "class_names": ["Platelets", "RBC", "WBC"]},
        "boxes": {"n": 4886, "per_image": {"median": 13.5, "max": 30.0}, "size": {"p05": 42.0, "p95": 166.0},
                  "smallest_side": {"p05": 39.0}, "overlap": {"p95": 0.47}},
    }
    fp.update(changes)
    return fp


def test_arrays_keep_their_size_and_files_are_resized_from_large_to_small():
    assert image_rules.classification_sizes(classification_fp()) is None
    files = classification_fp(source="files", shape={"median": [300.0, 400.0], "one_shape": False,
                                                     "min": [200.0, 300.0], "max": [600.0, 800.0]})
    sizes = image_rules.classification_sizes(files)
    assert sizes[0] == [168, 224] and [max(s) for s in sizes] == sorted((max(s) for s in sizes), reverse=True)
    small = classification_fp(source="files", shape={"median": [48.0, 48.0], "one_shape": True})
    assert image_rules.classification_sizes(small) == [[48, 48]]  # small images of one shape: as stored


def test_the_stem_keeps_small_images_whole_and_halves_large_ones():
    small = image_rules.resnet([28, 28], 2, "cpu")
    assert small["model.conv1_t_stride"].value == 1 and small["model.no_max_pool"].value
    large = image_rules.resnet([224, 224], 2, "cpu")
    assert large["model.conv1_t_stride"].value == 2 and not large["model.no_max_pool"].value  # 224/4 = 56
    volume = image_rules.resnet([28, 28, 28], 3, "cpu")  # 3D MedMNIST: halved, as the searched recipe does
    assert volume["model.conv1_t_stride"].value == 2 and volume["model.no_max_pool"].value
    assert "28/2 = 14" in volume["model.conv1_t_stride"].reason
    assert image_rules.resnet([28, 28], 2, "gpu")["model.layers"].value == [2, 2, 2, 2]


def test_batch_gives_an_epoch_twenty_steps_within_the_cap():
    assert image_rules.classification_batch([28, 28], [16, 32, 64, 128], 1, "cpu", 4708).value == 128
    assert image_rules.classification_batch([28, 28, 28], [16, 32, 64, 128], 2, "cpu", 1188).value == 32
    assert image_rules.classification_batch([28, 28], [16, 32, 64, 128], 1, "cpu", 100).value == 8


def test_mirroring_only_along_axes_whose_orientation_varies():
    oriented = image_rules.classification_augmentation(classification_fp())
    assert oriented["augmentation.flip_axes"].value == [] and oriented["augmentation.flip_prob"].value == 0.0
    free = classification_fp(orientation={"asymmetry": [0.3, 0.0], "agreeing_cases": [0.99, 0.5],
                                          "one_orientation": [True, False]})
    assert image_rules.classification_augmentation(free)["augmentation.flip_axes"].value == [1]


def test_evaluation_averages_the_axes_mirrored_in_training():
    assert image_rules.classification_plan(classification_fp(), None, "cpu", 2)["task.tta_flips"].value == []
    free = classification_fp(orientation={"asymmetry": [0.0, 0.3], "agreeing_cases": [0.5, 0.99],
                                          "one_orientation": [False, True]})
    plan = image_rules.classification_plan(free, None, "cpu", 2)
    assert plan["task.tta_flips"].value == [[0]] and "mirror" in plan["task.tta_flips"].reason


def test_binary_shapes_get_no_intensity_augmentation_and_large_sets_less_affine():
    shapes = image_rules.classification_augmentation(classification_fp(binary_images=True))
    assert shapes["augmentation.intensity_prob"].value == 0.0 and "binary" in shapes["augmentation.noise_prob"].reason
    photos = image_rules.classification_augmentation(classification_fp())
    assert photos["augmentation.intensity_prob"].value == 0.8 and photos["augmentation.affine_prob"].value == 0.8
    large = classification_fp(cases_per_split={"train": 90000, "val": 1, "test": 1})
    assert image_rules.classification_augmentation(large)["augmentation.affine_prob"].value == 0.5


def test_only_extremely_imbalanced_classes_are_weighted_and_multi_label_ones_never():
    one_to_three = image_rules.class_balance(classification_fp())["task.class_weights"]  # PneumoniaMNIST's 2.88x
    assert one_to_three.value is None and "2.88x" in one_to_three.reason
    even = classification_fp(labels={"multi_label": False, "counts": {"train": [100, 120]}, "imbalance": 1.2})
    assert image_rules.class_balance(even)["task.class_weights"].value is None
    rare = classification_fp(labels={"multi_label": False, "counts": {"train": [30, 3000]}, "imbalance": 100.0})
    assert image_rules.class_balance(rare)["task.class_weights"].value == "balanced"
    multi = classification_fp(labels={"multi_label": True, "counts": {"train": [5, 500]}, "imbalance": 100.0})
    assert image_rules.class_balance(multi)["task.class_weights"].value is None


def test_few_validation_images_of_a_class_test_the_final_checkpoint_else_the_best():
    def labels(val):
        return {"multi_label": False, "counts": {"train": [929, 259], "val": val}, "imbalance": 3.59}

    few = image_rules.checkpoint_choice(classification_fp(labels=labels([76, 22])))
    assert few["callbacks.model_checkpoint.monitor"].value is None
    assert "22" in few["callbacks.model_checkpoint.monitor"].reason
    assert image_rules.checkpoint_choice(classification_fp(labels=labels([135, 389]))) == {}
    assert image_rules.checkpoint_choice(classification_fp(labels=labels([0, 0]))) == {}  # no validation split


def test_ct_images_are_windowed_to_their_percentiles():
    ct = classification_fp(source="files", modality={"kind": "CT", "why": "HU"},
                           intensity={"image": {"p00_5": [-1000.0], "p99_5": [900.0]}})
    assert image_rules.classification_normalisation(ct)["data.preprocessing.window"].value == [-1000.0, 900.0]
    assert image_rules.classification_normalisation(classification_fp()) == {}  # arrays: standardised as always


def test_detection_floor_keeps_the_smallest_boxes_twelve_pixels():
    floor = image_rules.detection_floor(detection_fp())
    assert floor.value == round(12 / 39, 4) and "39" in floor.reason


def test_pyramid_starts_at_a_stride_half_the_smallest_boxes_and_reaches_the_largest():
    plan = image_rules.pyramid(detection_fp(), 0.5)  # boxes 21..83 px at half size
    assert plan["model.returned_layers"].value == [2, 3]  # stride 8 <= 21/2; 3 levels reach 83
    assert plan["model.anchor_sizes"].value == [21, 34]
    tiny = image_rules.pyramid(detection_fp(boxes={**detection_fp()["boxes"], "size": {"p05": 6.0, "p95": 12.0}}), 1)
    assert tiny["model.returned_layers"].value == [1] and tiny["model.anchor_sizes"].value == [6, 10]


def test_detection_sizes_divide_by_their_coarsest_level():
    sizes = image_rules.detection_sizes(detection_fp(), 0.3)
    assert sizes[0][1] == 640 and abs(sizes[0][0] - 480) <= 32 and min(max(s) for s in sizes) >= 192
    for size in sizes:
        layers = image_rules.pyramid(detection_fp(), max(size) / 640)["model.returned_layers"].value
        assert all(s % image_rules.size_divisor(layers) == 0 for s in size)


def test_overlapping_cells_keep_overlapping_detections():
    heads = image_rules.detection_heads(detection_fp())
    assert heads["task.nms_thresh"].value == 0.5 and heads["task.hard_negative.batch_size_per_image"].value == 224
    apart = detection_fp(boxes={**detection_fp()["boxes"], "overlap": {"p95": 0.0}, "per_image": {"median": 1, "max": 2}})
    heads = image_rules.detection_heads(apart)
    assert heads["task.nms_thresh"].value == 0.22 and heads["task.hard_negative.batch_size_per_image"].value == 64


def test_quarter_turns_only_where_orientation_varies_on_every_axis():
    assert image_rules.detection_augmentation(detection_fp())["data.rotate90_prob"].value == 0.5
    oriented = detection_fp(orientation={"asymmetry": [0.5, 0.0], "agreeing_cases": [1.0, 0.5],
                                         "one_orientation": [True, False]})
    augmentation = image_rules.detection_augmentation(oriented)
    assert augmentation["data.rotate90_prob"].value == 0.0 and augmentation["augmentation.flip_axes"].value == [1]


def test_the_search_space_is_centred_on_the_plan():
    plan = image_rules.classification_plan(classification_fp(), None, "cpu", 2)
    space = search_space(classification_fp(), plan)
    lr = plan["optimizer.lr"].value
    assert space["optimizer.lr"]["low"] * space["optimizer.lr"]["high"] == pytest.approx(lr * lr, rel=0.01)
    assert space["model.layers"]["choices"][0] == plan["model.layers"].value  # the plan's depth first
    affine = space["augmentation.affine_prob"]
    assert affine["low"] <= plan["augmentation.affine_prob"].value <= affine["high"]
    assert "data.preprocessing.size" not in space  # arrays keep their size
    detection = image_rules.detection_plan(detection_fp(), [256, 320], "cpu", 2)
    sizes = search_space(detection_fp(), detection)["data.preprocessing.resize"]["choices"]
    assert sizes[0] == [256, 320] and len(sizes) == 3 and all(s % 32 == 0 for size in sizes for s in size)


def test_sizes_around_round_each_axis_to_its_pooling():
    assert sizes_around([80, 128], [16, 32]) == [[80, 128], [64, 96], [96, 160]]
