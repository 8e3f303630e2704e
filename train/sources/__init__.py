"""Readers of the data layouts users have, one module each, every one mapping its labels to the model's
classes in one visible table and returning the rows `train.data` assembles (image_id, source, path, group,
label, target, age, sex, site, tfrecord):

* `jpeg_melanoma`: ISIC 2020 (the competition's layout and `cdeotte/jpeg-melanoma-NxN`) and the ISIC 2019
  set in the same layout (`cdeotte/jpeg-isic2019-NxN`).
* `ham10000`: HAM10000 (`HAM10000_metadata.csv`, images anywhere below it).
* `isic_challenge`: the ISIC 2016-2017 challenge layout (`<prefix>_Data/`, `_Part3_GroundTruth.csv`,
  `_Data_metadata.csv`), e.g. ISIC 2017, from other clinics and devices than the two above.
"""
