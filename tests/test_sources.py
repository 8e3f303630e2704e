"""Every layout users have is read by its own reader onto the model's classes, and every source's images reach
the model through the one preprocessing function in training and in serving."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_isic2019

from inference import Predictor
from inference.image import open_image, prepare, shades_of_gray, to_input
from inference.model import CLASSES
from train.data import LesionDataset, load_sources
from train.errors import DataError
from train.network import MelanomaModel
from train.onnx_export import export_onnx


def test_a_run_trains_on_the_challenge_training_part_only(data_dir):
    frame, _ = load_sources([], [], "none", [str(data_dir / "isic2017")])
    assert len(frame) == 1975 and set(frame.source) == {"isic2017"}  # Validation stays the external check


def test_the_2019_layout_maps_its_abbreviations_sites_and_missing_patients(tmp_path, data_dir):
    folder = make_isic2019(tmp_path, data_dir, n=40)
    rows, _ = load_sources([str(folder)], [], "none")
    csv = pd.read_csv(folder / "train.csv")
    assert len(rows) == 40 and set(rows.source) == {"isic2019"}
    expected = csv.diagnosis.map({"MEL": "mel", "NV": "nv", "BKL": "bkl"})
    assert rows.label.tolist() == expected.tolist() and rows.target.tolist() == csv.target.tolist()
    assert set(rows.site) <= {"torso", "upper extremity", "head/neck", "unknown"} and "torso" in set(rows.site)
    assert rows.group.is_unique  # patient_id -1: no patient, so no two images are grouped
    # the 2019 set holds ISIC 2017 (and HAM10000) images: the other source's row is kept, the copy left out
    both, _ = load_sources([str(folder)], [], "none", [str(data_dir / "isic2017")])
    assert len(both) == 1975 and set(both.source) == {"isic2017"}
    csv.loc[0, "diagnosis"] = "XYZ"
    csv.to_csv(folder / "train.csv", index=False)
    with pytest.raises(DataError, match="diagnosis value.*xyz"):
        load_sources([str(folder)], [], "none")


def test_shades_of_gray_removes_a_colour_cast_and_leaves_grey_alone(isic_rows):
    image = prepare(open_image(isic_rows.path[3]), 128)
    cast = np.clip(image.astype(np.float32) * np.array([1.0, 0.8, 0.6], np.float32), 0, 255).astype(np.uint8)
    def tint(array):  # each channel's mean relative to the others': the colour of the light, not its brightness
        means = array.reshape(-1, 3).astype(np.float64).mean(axis=0)
        return means / means.mean()

    before = tint(cast) / tint(image)
    after = tint(shades_of_gray(cast)) / tint(shades_of_gray(image))
    assert before.max() / before.min() > 1.5  # the cast: red 1.0, green 0.8, blue 0.6 of the light
    assert after.max() / after.min() < 1.03  # gone: both end with the same colour balance
    grey = np.repeat(image.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    assert np.abs(shades_of_gray(grey).astype(int) - grey).max() <= 1
    assert not shades_of_gray(np.zeros((8, 8, 3), np.uint8)).any()


@pytest.fixture(scope="module", params=["none", "shades_of_gray"])
def model_folder(request, tmp_path_factory):
    model = MelanomaModel(backbone="test_efficientnet", image_size=72, mean=[0.485, 0.456, 0.406],
                          std=[0.229, 0.224, 0.225], colour_constancy=request.param)
    folder = tmp_path_factory.mktemp(f"model_{request.param}")
    model.save_pretrained(folder)
    export_onnx(model, folder)
    return folder


def test_serving_applies_exactly_the_training_preprocessing_on_every_source(model_folder, data_dir):
    predictor = Predictor.from_pretrained(model_folder)
    c = predictor.config
    frame, _ = load_sources([str(data_dir / "isic2020")], [str(data_dir / "ham10000")], "none",
                            [str(data_dir / "isic2017")])
    rows = frame.groupby("source").head(3).reset_index(drop=True)
    assert set(rows.source) == {"isic2020", "ham10000", "isic2017"}
    dataset = LesionDataset(rows, c.image_size, colour=c.colour_constancy)  # what training feeds the model
    for i, path in enumerate(rows.path):
        trained_on = to_input(dataset[i]["image"].numpy(), c.mean, c.std)
        assert np.array_equal(predictor.model_input(path), trained_on), (c.colour_constancy, path)
    if c.colour_constancy == "shades_of_gray":  # and it is not a no-op
        assert not np.array_equal(dataset[0]["image"].numpy(), prepare(open_image(rows.path[0]), c.image_size))


def test_the_model_outputs_the_seven_diagnoses(model_folder):
    assert Predictor.from_pretrained(model_folder).classes == CLASSES and len(CLASSES) == 7
