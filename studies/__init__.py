"""Studies: commands that read finished run folders and model folders, and never train a fold themselves
(`python -m studies.NAME --help`). A training run (`python -m train`) imports none of them.

ablate.py (recipe ablations: one training run per option, against a reference), loso.py (leave one source out),
crosscheck.py (a model judged source by source through the Predictor, an external set included; writes the
card's crosscheck.json), baselines.py (metadata-only models and paired comparisons of two runs), soup.py (a
weight average of trained models into one model folder), guard_eval.py (the out-of-scope guard measured against
its alternatives on held-out rows, photos and recoloured dermoscopy), folds.py (fold models' out-of-fold table
per source, and the candidates for the bundled model side by side on an external set), patients.py (does a
lesion's patient help: the ugly-duckling measurement on ISIC 2020's whole patients).
Dependencies: studies → train → inference; nothing imports studies.
"""
