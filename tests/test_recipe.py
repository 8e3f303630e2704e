"""The recipe's parts: augmentation kinds, normalisation on the device, the weight average, the ablation runner."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_args

from inference.image import open_image, prepare, to_input
from train.epoch import batch_to_input
from train import augment


@pytest.fixture(scope="module")
def lesion(isic_rows) -> np.ndarray:
    return prepare(open_image(isic_rows.path[0]), 96)


def dihedral_views(array: np.ndarray) -> list[np.ndarray]:
    return [np.rot90(array, k) for k in range(4)] + [np.rot90(array, k)[:, ::-1] for k in range(4)]


@pytest.mark.parametrize("kind", augment.KINDS[1:])
def test_every_kind_is_seeded_uint8_and_keeps_the_shape(kind, lesion):
    fn = augment.build(kind, 96)
    outs = [np.ascontiguousarray(fn(lesion.copy(), np.random.default_rng(seed))) for seed in (1, 1, 2, 3, 4)]
    assert all(o.dtype == np.uint8 and o.shape == lesion.shape for o in outs)
    assert np.array_equal(outs[0], outs[1])  # same generator state, same sample (any worker, any process)
    assert len({o.tobytes() for o in outs[1:]}) > 1  # and the seeds do change it
    assert augment.build("none", 96) is None


def test_flips_give_each_of_the_eight_dihedral_views(lesion):
    views = dihedral_views(lesion)
    seen = set()
    for seed in range(64):
        out = augment.flips(lesion, np.random.default_rng(seed))
        index = [np.array_equal(out, v) for v in views].index(True)  # always exactly a dihedral view
        seen.add(index)
        # the same view for the same seed as the NumPy definition the ablations were trained with
        k = int(np.random.default_rng(seed).integers(8))
        assert np.array_equal(out, np.rot90(lesion, k % 4)[:, ::-1] if k >= 4 else np.rot90(lesion, k % 4))
        assert out.flags.c_contiguous  # the batch needs no second, strided copy
    assert seen == set(range(8))


def test_colour_is_a_monotone_table_per_channel_and_geometry_moves_pixels(lesion):
    rng = np.random.default_rng(5)
    out = augment.colour(lesion, rng, p=1.0)
    assert not np.array_equal(out, lesion)
    for c in range(3):  # a lookup table that keeps the order of levels: no pixel overtakes a brighter one
        order = np.argsort(lesion[..., c].ravel(), kind="stable")
        assert (np.diff(out[..., c].ravel()[order].astype(int)) >= 0).all()
    hole = augment.cutout(lesion, rng, p=1.0)
    zeros = np.argwhere((hole == 0).all(axis=2) & (lesion != 0).any(axis=2))
    side = round(0.375 * 96)
    assert len(zeros) == side * side and np.ptp(zeros[:, 0]) == np.ptp(zeros[:, 1]) == side - 1  # one square
    moved = augment.affine(lesion, rng, p=1.0)
    assert moved.shape == lesion.shape and not np.array_equal(moved, lesion)
    assert augment.colour(lesion, rng, p=0.0) is lesion and augment.affine(lesion, rng, p=0.0) is lesion
    with pytest.raises(ValueError, match="unknown kind 'heavy'; choose one of none, flips"):
        augment.build("heavy", 96)


def test_device_steps_change_the_look_not_the_lesion(lesion):
    rng = np.random.default_rng(11)
    crop = augment.zoom(lesion, rng, p=1.0, area=(0.25, 0.25))  # a quarter of the area, blown up 2x
    assert crop.shape == lesion.shape and not np.array_equal(crop, lesion)
    dark = augment.vignette(lesion, rng, p=1.0).astype(int)
    corners = np.concatenate([dark[:2, :2].ravel(), dark[-2:, -2:].ravel(), dark[:2, -2:].ravel(), dark[-2:, :2].ravel()])
    assert corners.max() <= 20 and np.abs(dark[40:56, 40:56] - lesion[40:56, 40:56].astype(int)).max() == 0
    soft = augment.blur(lesion, rng, p=1.0)
    assert np.abs(np.diff(soft.astype(int), axis=1)).mean() < np.abs(np.diff(lesion.astype(int), axis=1)).mean()
    squeezed = augment.jpeg(lesion, rng, p=1.0)
    assert squeezed.shape == lesion.shape and 0 < np.abs(squeezed.astype(int) - lesion).mean() < 20
    for step in (augment.zoom, augment.vignette, augment.blur, augment.jpeg):
        assert step(lesion, rng, p=0.0) is lesion


def test_batch_to_input_is_the_eval_transform_and_channels_last(lesion):
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    batch = torch.from_numpy(np.stack([lesion, lesion[::-1].copy()]))
    out = batch_to_input(batch, mean, std)
    assert out.shape == (2, 3, 96, 96) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    expected = (lesion.astype(np.float64) / 255 - mean) / std
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), expected, atol=1e-5)
    assert np.array_equal(to_input(lesion, mean, std), out[0].contiguous().numpy())  # the Predictor's single image


def test_weight_average_follows_the_model_and_survives_a_save(tmp_path):
    from train.ema import WeightAverage

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    average = WeightAverage(model, decay=0.9)
    start = average.model[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(8, 4))  # BatchNorm statistics move too
    average.update(model)
    decay = min(0.9, 2 / 11)  # warm-up: the first updates follow the model closely
    torch.testing.assert_close(average.model[0].weight, start + (1 - decay) * 1.0)
    torch.testing.assert_close(average.model[1].running_mean, (1 - decay) * model[1].running_mean)
    assert average.model[1].num_batches_tracked == model[1].num_batches_tracked
    assert not any(p.requires_grad for p in average.model.parameters())
    average.save(tmp_path)
    again = WeightAverage(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)), decay=0.9)
    again.load(tmp_path)
    assert again.updates == 1 and torch.equal(again.model[0].weight, average.model[0].weight)


def test_an_ablation_is_one_command_trained_then_compared(tmp_path, subset, reference, capsys):
    from studies.ablate import main

    ref_run, _ = reference
    base = tmp_path / "base.yaml"
    options = dict(zip(tiny_args(*subset, tmp_path / "unused")[::2], tiny_args(*subset, tmp_path / "unused")[1::2]))
    base.write_text(yaml.safe_dump({k[2:]: yaml.safe_load(v) for k, v in options.items() if k != "--output_dir"}))
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"base": str(base), "reference": str(ref_run), "runs": str(tmp_path / "runs"),
                                    "results": str(tmp_path / "results"), "common": {"epochs": 1, "train_folds": [0]},
                                    "ablations": {"flips_ema": {"augment": "flips", "ema_decay": 0.9}}}))
    assert main(["--plan", str(plan), "--list"]) == 0
    assert "flips_ema                not run" in capsys.readouterr().out
    assert main(["--plan", str(plan), "flips_ema", "--table"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "flips_ema"
    result = json.loads((tmp_path / "results" / "flips_ema.json").read_text())
    saved = yaml.safe_load((run / "model" / "training_config.yaml").read_text())
    assert saved["augment"] == "flips" and saved["ema_decay"] == 0.9 and saved["epochs"] == 1
    assert result["epochs"] == 1 and result["against"] == str(ref_run)
    ham = result["compare"]["ham10000"]
    assert ham["difference"] == pytest.approx(ham["auc"] - ham["auc_other"])
    assert ham["auc"] == pytest.approx(result["metrics"]["melanoma_auc_ham10000"], abs=0.02)
    assert f"| flips_ema: augment flips, ema_decay 0.9 | {ham['auc']:.3f} |" in out
    assert f"`python -m studies.ablate --plan {plan} flips_ema`" in out  # a plan other than the default is named
    # a second call neither retrains nor fails: the finished run is compared again
    mtime = (run / "model" / "model.safetensors").stat().st_mtime
    assert main(["--plan", str(plan), "flips_ema"]) == 0
    assert (run / "model" / "model.safetensors").stat().st_mtime == mtime
    # the committed result, not the scratch run folder, makes the table
    shutil.rmtree(run)
    assert main(["--plan", str(plan), "--table"]) == 0
    assert f"| flips_ema: augment flips, ema_decay 0.9 | {ham['auc']:.3f} |" in capsys.readouterr().out
    assert main(["--plan", str(plan), "nonesuch"]) == 2
    assert "no ablation 'nonesuch'; known: flips_ema" in capsys.readouterr().err
    # a missing comparison folder is named before any training starts
    lost = yaml.safe_load(plan.read_text()) | {"reference": str(tmp_path / "gone")}
    lost["ablations"]["second"] = {"augment": "none"}
    plan.write_text(yaml.safe_dump(lost))
    assert main(["--plan", str(plan), "second"]) == 2
    assert "second is compared with" in capsys.readouterr().err and not (tmp_path / "runs" / "second").exists()


def test_class_set_melanoma_trains_melanoma_against_the_rest_and_validates_on_every_label(subset):
    from accelerate import Accelerator

    from inference.model import CLASSES
    from train.config import make
    from train.data import load_sources
    from train.setup import setup_fold

    frame, _ = load_sources([str(subset[0])], [str(subset[1])], "none")
    cfg = make({"isic_dirs": [str(subset[0])], "backbone": "test_efficientnet", "backbone_weights": "none",
                "image_size": 64, "batch_size": 8, "num_workers": 0, "class_set": "melanoma"})
    fs = setup_fold(Accelerator(cpu=True), cfg, frame.iloc[::2], frame.iloc[1::2], 0)
    trained = {CLASSES[i] for i in fs.train_ds.labels.tolist()}
    assert trained == {"mel", "nv"}
    assert (fs.train_ds.labels == CLASSES.index("mel")).sum() == frame.iloc[::2].target.sum()
    assert set(fs.val_rows.label) == set(frame.iloc[1::2].label) and fs.val_rows.label.nunique() == len(CLASSES)
