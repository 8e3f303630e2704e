"""Readers of the data layouts users have, one module each, every one mapping its labels to the model's
classes in one visible table and returning the rows `train.data` assembles (image_id, source, path, group,
label, target, age, sex, site, tfrecord).

* `isic_challenge`: the ISIC 2016–2017 challenge layout (`<prefix>_Data/`, `_Part3_GroundTruth.csv`,
  `_Data_metadata.csv`), e.g. ISIC 2017, a source from other clinics and devices than the two the
  bundled model trained on.

ISIC 2020 (`jpeg-melanoma`) and HAM10000 are still read in `train/data.py`.
"""
