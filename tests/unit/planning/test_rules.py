"""Each plan rule on a constructed fingerprint: the value it plans and that its reason names the figure used."""
from __future__ import annotations

import math

from medexp.planning import rules


def fingerprint(**changes) -> dict:
    """A 2D, one-channel dataset of 800x540 images with large round structures, mirrored freely."""
    fp = {
        "task": "segmentation", "spatial_dims": 2, "channels": 1, "n_cases": 100,
        "cases_per_split": {"train": 70, "val": 15, "test": 15},
        "modality": {"kind": "unknown", "why": "1 channel(s)"},
        "shape": {"median": [540.0, 800.0], "min": [540.0, 800.0], "max": [540.0, 800.0], "one_shape": True},
        "spacing": {"median": [1.0, 1.0], "p10": [1.0, 1.0], "min": [1.0, 1.0], "max": [1.0, 1.0],
                    "anisotropy": 1.0},
        "intensity": {"image": {}, "foreground": {"p00_5": [-50.0], "p99_5": [200.0]}},
        "classes": {"voxel_fraction": [0.7, 0.3]},
        "structures": {"half_thickness_voxels": {"p05": 64.0}, "foreground_fraction": {"median": 0.3}},
        "orientation": {"asymmetry": [0.01, 0.02], "agreeing_cases": [0.5, 0.55], "one_orientation": [False, False]},
    }
    fp.update(changes)
    return fp


def test_resolution_floor_keeps_the_thinnest_structures_eight_pixels_half_thick():
    assert rules.resolution_floor(fingerprint()).value == 8 / 64
    thin = fingerprint(structures={"half_thickness_voxels": {"p05": 2.0}, "foreground_fraction": {"median": 0.1}})
    assert rules.resolution_floor(thin).value == 1.0  # vessels 2 px half-thick: no downsizing at all
    assert "2 px half-thick" in rules.resolution_floor(thin).reason


def test_candidate_sizes_shrink_from_the_stored_size_to_the_floor_and_divide_by_their_pooling():
    sizes = rules.candidate_sizes(fingerprint(), floor=0.16)
    longest = [max(s) for s in sizes]
    assert longest == sorted(longest, reverse=True) and longest[0] == 768 and min(longest) >= 128
    for size in sizes:
        pools = rules.pools_per_axis(size)
        assert all(edge % 2 ** p == 0 for edge, p in zip(size, pools, strict=True)), size
        assert abs(size[0] / size[1] - 540 / 800) < 0.1  # proportions kept


def test_pooling_stops_at_a_feature_map_edge_of_four_and_waits_on_a_coarse_axis():
    assert rules.pools_per_axis([80, 128]) == [4, 5]  # 80/16 = 5, 128/32 = 4
    # nnU-Net: an axis 3x coarser (spacing 3 vs 1) is not pooled until the fine axes have reached its spacing
    assert rules.pools_per_axis([20, 128, 128], spacing=[3.0, 1.0, 1.0]) == [2, 5, 5]


def test_network_depth_strides_and_features_follow_the_size():
    plan = rules.network([80, 128], 2, "cpu")
    assert plan["model.strides"].value == [1, 2, 2, 2, 2, [1, 2]]
    assert plan["model.upsample_kernel_size"].value == [2, 2, 2, 2, [1, 2]]
    assert plan["model.filters"].value == [16, 32, 64, 128, 256, 512]
    assert rules.network([80, 128], 2, "gpu")["model.filters"].value[0] == 32
    assert rules.network([80, 128], 2, "cpu", base=8)["model.filters"].value[0] == 8


def test_target_spacing_is_the_median_except_on_an_anisotropic_axis():
    iso = fingerprint(spatial_dims=3, spacing={"median": [1.0, 1.0, 1.2], "p10": [1.0, 1.0, 1.0], "anisotropy": 1.2},
                      shape={"median": [200, 200, 150]})
    assert rules.target_spacing(iso).value == [1.0, 1.0, 1.2]
    thick = fingerprint(spatial_dims=3, spacing={"median": [0.7, 0.7, 5.0], "p10": [0.7, 0.7, 2.5],
                                                 "anisotropy": 7.1}, shape={"median": [512, 512, 30]})
    planned = rules.target_spacing(thick)
    assert planned.value == [0.7, 0.7, 2.5] and "anisotropic" in planned.reason


def test_batch_size_from_memory_dataset_share_and_device():
    filters, strides = [16, 32, 64], [1, 2, 2]
    assert rules.batch_size([64, 64], filters, strides, "cpu", dataset_voxels=1e9).value == rules.MAX_CPU_BATCH
    gpu = rules.batch_size([64, 64], filters, strides, "gpu", dataset_voxels=1e9).value
    assert gpu == int(rules.MEMORY_BYTES["gpu"] // rules.activation_bytes([64, 64], filters, strides))
    # 5% of a dataset of 10 images is half an image: the floor of 2 still holds
    assert rules.batch_size([64, 64], filters, strides, "gpu", dataset_voxels=10 * 64 * 64).value == 2


def test_ct_is_windowed_to_foreground_percentiles_and_other_modalities_z_scored():
    ct = fingerprint(modality={"kind": "CT", "why": "HU"})
    planned = rules.normalisation(ct)
    assert planned["data.preprocessing.window"].value == [-50.0, 200.0]
    assert set(rules.normalisation(fingerprint())) == {"data.preprocessing.normalize"}


def test_mirroring_only_along_axes_whose_orientation_varies():
    assert rules.mirroring(fingerprint()).value == [0, 1]
    one_way = fingerprint(orientation={"asymmetry": [0.02, 0.4], "agreeing_cases": [0.5, 1.0],
                                       "one_orientation": [False, True]})
    planned = rules.mirroring(one_way)
    assert planned.value == [0] and "[1]" in planned.reason


def test_oriented_axes_are_mirrored_for_one_foreground_class_but_not_for_several():
    one_way = {"orientation": {"asymmetry": [0.02, 0.4], "agreeing_cases": [0.5, 1.0],
                               "one_orientation": [False, True]}}
    one_class = fingerprint(**one_way)
    planned = rules.augmentation(one_class)["augmentation.flip_axes"]
    assert planned.value == [0, 1] and "one foreground class" in planned.reason
    two_classes = fingerprint(**one_way, classes={"voxel_fraction": [0.9, 0.05, 0.05]})
    assert rules.augmentation(two_classes)["augmentation.flip_axes"].value == [0]


def test_patches_only_when_the_planned_image_is_too_large_to_train_whole():
    assert rules.patch([80, 128], 2).value is None
    big = rules.patch([1024, 1536], 2).value
    assert math.prod(big) <= rules.MAX_WHOLE_IMAGE_VOXELS[2]
    window = rules.sliding_window([1024, 1536], big, 4)
    assert window["task.roi_size"].value == big and window["task.sw_overlap"].value == 0.5


def test_loader_workers_are_sized_where_the_run_starts():
    assert rules.workers(2).value == "auto" and "here 1 of 2 cores" in rules.workers(2).reason


def test_prepared_cases_stay_in_memory_while_they_take_a_quarter_of_it_else_go_to_disk():
    volumes = fingerprint(spatial_dims=3, cases_per_split={"train": 800, "val": 100, "test": 100})
    size = [256, 256, 160]  # 10.5 M voxels, 3 bytes each prepared: 1000 cases ~29 GiB
    assert rules.case_cache(volumes, size, memory_bytes=24 * 2 ** 30).value == "disk"
    assert rules.case_cache(volumes, size, memory_bytes=512 * 2 ** 30).value == "memory"
    small = fingerprint()  # 100 images of 80x128
    planned = rules.case_cache(small, [80, 128], memory_bytes=24 * 2 ** 30)
    assert planned.value == "memory" and "100 prepared cases" in planned.reason


def test_a_whole_plan_sets_the_channels_and_every_value_has_a_reason():
    plan = rules.segmentation_plan(fingerprint(channels=3), [80, 128], "cpu", cores=2)
    assert plan["data.in_channels"].value == 3
    assert plan["data.preprocessing.resize"].value == [80, 128]
    assert all(p.reason and "\n" not in p.reason for p in plan.values())


def test_a_short_budget_may_shrink_the_patch_down_to_the_context_the_structures_need():
    thin = fingerprint(shape={"median": [960.0, 1000.0], "min": [960.0, 1000.0], "max": [960.0, 1000.0],
                              "one_shape": True},
                       structures={"half_thickness_voxels": {"p05": 3.0, "p95": 4.0},
                                   "foreground_fraction": {"median": 0.07}})
    limits = rules.patch_limits(thin, [992, 1024])
    assert limits[0] is None and limits == [None] + sorted(limits[1:], reverse=True)
    assert min(limits[1:]) >= 128 * 128 > min(limits[1:]) / 2  # halved down to the 128-px context, no further
    smallest = rules.patch([992, 1024], 2, limits[-1])
    assert math.prod(smallest.value) <= limits[-1] and f"for {rules.MIN_STEPS} steps" in smallest.reason
    # a head 4 x 140 px half-thick (a 560 px disk) keeps whole-image training at every planned size
    head = fingerprint(structures={"half_thickness_voxels": {"p05": 66.0, "p95": 140.0},
                                   "foreground_fraction": {"median": 0.3}})
    assert rules.patch_limits(head, [352, 512]) == [None]


def test_volumes_of_several_shapes_train_on_patches_of_their_median_shape():
    """Hippocampus: 1 mm crops from 31x40x24 to 43x59x47 voxels cannot be stacked whole (its first plan stopped at
    the first batch); they train on median-shape patches, smaller ones zero-padded, one per case."""
    crops = fingerprint(spatial_dims=3, shape={"median": [35.0, 50.0, 36.0], "min": [31.0, 40.0, 24.0],
                                               "max": [43.0, 59.0, 47.0], "one_shape": False},
                        spacing={"median": [1.0, 1.0, 1.0], "p10": [1.0, 1.0, 1.0], "min": [1.0, 1.0, 1.0],
                                 "max": [1.0, 1.0, 1.0], "anisotropy": 1.0})
    plan = rules.segmentation_plan(crops, [32, 48, 40], "cpu", cores=2)
    assert plan["data.patch_size"].value == [32, 48, 40] and plan["data.samples_per_image"].value == 1
    assert plan["task.roi_size"].value == [32, 48, 40]
    same = fingerprint(spatial_dims=3, shape={**crops["shape"], "one_shape": True}, spacing=crops["spacing"])
    assert rules.segmentation_plan(same, [32, 48, 40], "cpu", cores=2)["data.patch_size"].value is None


def test_evaluation_mirrors_along_the_planned_mirror_axes_only():
    assert rules.segmentation_plan(fingerprint(), [64, 64], "cpu", 2)["task.tta_flips"].value == [[0], [1]]
    oriented = fingerprint(orientation={"asymmetry": [0.4, 0.4], "agreeing_cases": [1.0, 1.0],
                                        "one_orientation": [True, True]}, classes={"voxel_fraction": [0.9, 0.05, 0.05]})
    assert rules.segmentation_plan(oriented, [64, 64], "cpu", 2)["task.tta_flips"].value == []
