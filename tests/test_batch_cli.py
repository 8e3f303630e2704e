"""`python -m inference.batch` writes a Kaggle submission, or says clearly why it cannot."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO


def _run(*args):
    return subprocess.run([sys.executable, "-m", "inference.batch", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True)


@pytest.fixture()
def test_csv(tmp_path, isic_rows):
    # the competition's test.csv layout, with one metadata field (age) missing entirely
    rows = isic_rows.sort_values("target").tail(20)[["image_name", "patient_id", "sex", "anatom_site_general_challenge"]]
    path = tmp_path / "test.csv"
    rows.to_csv(path, index=False)
    return path


def test_writes_a_valid_submission_for_20_real_images(tiny_model_dir, data_dir, test_csv, tmp_path):
    out = tmp_path / "sub" / "submission.csv"
    done = _run("--model", tiny_model_dir, "--images", data_dir / "isic2020" / "train", "--csv", test_csv, "--out", out)
    assert done.returncode == 0, done.stderr
    submission = pd.read_csv(out)
    assert list(submission.columns) == ["image_name", "target"]
    assert list(submission.image_name) == list(pd.read_csv(test_csv).image_name)
    assert submission.target.between(0, 1).all() and submission.target.notna().all()
    assert "wrote 20 predictions" in done.stdout
    # 8 views by default, as the Space scores; --no-tta: one view
    one = tmp_path / "one.csv"
    done = _run("--model", tiny_model_dir, "--images", data_dir / "isic2020" / "train", "--csv", test_csv, "--out",
                one, "--no-tta")
    assert done.returncode == 0, done.stderr
    single = pd.read_csv(one)
    assert list(single.image_name) == list(submission.image_name) and single.target.between(0, 1).all()
    assert not np.allclose(single.target, submission.target)


def test_missing_images_are_listed_before_scoring(tiny_model_dir, data_dir, test_csv, tmp_path):
    rows = pd.read_csv(test_csv)
    rows.loc[[3, 7], "image_name"] = ["ISIC_0000001", "ISIC_0000002"]
    rows.to_csv(test_csv, index=False)
    out = tmp_path / "submission.csv"
    done = _run("--model", tiny_model_dir, "--images", data_dir / "isic2020" / "train", "--csv", test_csv, "--out", out)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "2 of 20 images" in done.stderr and "ISIC_0000001" in done.stderr and "ISIC_0000002" in done.stderr
    assert not out.exists()


def test_bad_metadata_and_bad_model_are_one_line_errors(tiny_model_dir, data_dir, test_csv, tmp_path):
    rows = pd.read_csv(test_csv)
    rows.loc[4, "anatom_site_general_challenge"] = "elbow"
    rows.to_csv(test_csv, index=False)
    done = _run("--model", tiny_model_dir, "--images", data_dir / "isic2020" / "train", "--csv", test_csv,
                "--out", tmp_path / "s.csv")
    assert done.returncode == 2 and "row 6" in done.stderr and "'elbow'" in done.stderr
    assert "Traceback" not in done.stderr
    done = _run("--model", tmp_path / "nowhere", "--images", data_dir, "--csv", test_csv, "--out", tmp_path / "s.csv")
    assert done.returncode == 2 and "Traceback" not in done.stderr
