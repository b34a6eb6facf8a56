"""Reports: the figures and pages a run leaves behind (ROC curves, confusion matrices, overlays, detections).

Tasks compute what to show and call these writers from their ``write_*_report`` methods (declared on
``medexp.tasks.base.BaseTask``); the tracking side logs the files. Matplotlib is imported here only.
"""
