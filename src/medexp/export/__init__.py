"""Trained runs as models others can use: the MLflow pyfunc (``pyfunc``), ONNX and TorchScript files (``formats``),
all built from one inference module (``model``).

The names below are shared by the trainer's side (``model``, imports torch, never MLflow) and the MLflow writer's
side (``pyfunc``, imports MLflow, never torch), so they live here, importing neither.
"""
INPUT_NAME, OUTPUT_NAME, LABELS_NAME = "image", "probabilities", "label_map"
CLASSIFICATION, SEGMENTATION, DETECTION = "classification", "segmentation", "detection"  # deployed models' kinds
# the files of a run's MLflow model, written by the trainer (``write_model_files``), logged by the writer process
TORCHSCRIPT, CHECKPOINT, EXAMPLE, META = "model.pt", "model.ckpt", "input_example.npy", "medexp_model.json"
