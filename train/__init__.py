"""Training package: `python -m train` / `accelerate launch -m train` (see train/loop.py).

One file per job: network.py (the torch model, a fold ensemble of such models, the eager session), backbone.py (timm encoders, ImageNet
weights), config.py (options), errors.py (what a person is told), data.py (all sources in one
validated table, Dataset), folds.py (grouped stratified folds), augment.py (the augmentation kinds),
setup.py (recipe check, one fold's model, loaders, optimizer), epoch.py (one training pass, validation),
ema.py (weight average), ranks.py (cross-process decisions), loop.py (folds and epochs), checkpoint.py
(atomic resumable states), run_folder.py (claiming the folder, status.json), finalize.py (OOF, final model), metrics.py,
plots.py, card.py + card_template.md (model card), fit_guard.py (out-of-scope guard,
triage lines), onnx_export.py (the one export serving needs; re-exports old folders), ensemble.py (fold models
joined into one model folder and one graph), publish.py (Hub),
sources/ (one reader per data layout users have, each mapping its labels in one table: jpeg-melanoma for ISIC
2020 and 2019, HAM10000, the ISIC challenge layout).
Training imports from `inference`; `inference` never imports from here. The studies that read run folders
(ablations, leave one source out, the cross-source check, baselines, weight averages, the guard's
measurement) are the `studies` package.
"""
