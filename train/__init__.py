"""Training package: `python -m train` / `accelerate launch -m train` (see train/loop.py).

One file per job: config.py (options), data.py (sources, label/site mappings, validation, Dataset),
folds.py (grouped stratified folds), augment.py (albumentations), loop.py (the accelerate loop),
checkpoint.py (atomic resumable states), metrics.py, report.py (OOF, plots, model card), publish.py (Hub).
Training imports from `inference`; `inference` never imports from here.
"""
