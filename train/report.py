"""After the folds: OOF predictions, temperature, metrics.json, plots, model card and the final model folder.

Main process only. The published model is the model of the first trained fold (a fixed rule: picking
the fold with the best score would publish a lucky draw); the out-of-fold metrics estimate how such
a single fold model does on patients it has not seen. The temperature is fitted on all OOF logits.
Everything is built in a temporary folder and renamed into `model/` at the end, so `model/` is
either the previous complete one or the new complete one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from inference.model import CLASS_NAMES, CLASSES, MALIGNANT, MelanomaModel  # noqa: E402

from .onnx_export import export_onnx
from . import metrics as M  # noqa: E402
from .checkpoint import assert_finite, replace_dir  # noqa: E402
from .config import Config, to_yaml  # noqa: E402
from .data import HAM_SITE, ISIC_DIAGNOSIS, ages  # noqa: E402

PLOTS = ("roc.png", "reliability.png", "confusion_matrix.png", "training_curves.png")


def out_of_fold(run: Path, frame: pd.DataFrame, folds: list[int]) -> pd.DataFrame:
    parts = []
    for fold in folds:
        part = pd.read_csv(run / f"fold{fold}" / "best" / "val_predictions.csv", dtype={"image_id": str})
        part.insert(1, "fold", fold)
        parts.append(part)
    info = frame[["image_id", "source", "target", "age", "sex", "site"]]
    return pd.concat(parts, ignore_index=True).merge(info, on="image_id", how="left", validate="one_to_one")


def finalize(cfg: Config, run: Path, frame: pd.DataFrame, folds_done: list[int], partial: bool) -> Path | None:
    if not folds_done:
        return None
    oof = out_of_fold(run, frame, folds_done)
    logits = oof[[f"logit_{c}" for c in CLASSES]].to_numpy()
    labels = oof["label"].map(CLASSES.index).to_numpy()
    temperature = M.fit_temperature(logits, labels)
    result = M.evaluate(logits, labels, oof["source"].tolist(), oof["sex"].tolist(), ages(oof), oof["site"].tolist(),
                        temperature)
    probs = M.softmax(logits, temperature)
    for i, c in enumerate(CLASSES):
        oof[f"prob_{c}"] = probs[:, i]
    oof["melanoma_probability"] = probs[:, M.MEL]
    oof["malignant_probability"] = probs[:, M.MALIGNANT_IDX].sum(axis=1)
    oof.to_csv(run / "oof_predictions.csv", index=False)

    history = pd.concat([pd.read_csv(run / f"fold{f}" / "log.csv") for f in folds_done], ignore_index=True)
    history.to_csv(run / "log.csv", index=False)
    per_fold = {str(f): json.loads((run / f"fold{f}" / "best" / "best.json").read_text()) for f in folds_done}
    published = folds_done[0]
    result.update({
        "complete": not partial and folds_done == cfg.folds_to_train,
        "folds_total": cfg.folds, "folds_requested": cfg.folds_to_train, "folds_trained": folds_done,
        "per_fold_best": per_fold, "published_fold": published,
        "model_selection_note": "Each fold's best epoch is chosen by melanoma AUC on that same validation fold, so "
                                "these out-of-fold figures are slightly optimistic.",
        "train_images_per_s_mean": float(history["train_images_per_s"].mean()),
    })

    model = MelanomaModel.from_pretrained(str(run / f"fold{published}" / "best"))
    model.set_temperature(temperature)
    assert_finite(model, "save the final model")
    tmp = run / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    export_onnx(model, tmp)  # model.onnx beside the weights: the Space's fast CPU backend, verified against torch
    plot_roc(oof, tmp / "roc.png")
    plot_reliability(logits, labels, temperature, tmp / "reliability.png")
    matrices = [{**result["confusion_matrix"], "title": "all rows, 8 classes"}]
    if result["diagnosis_ham10000"]:
        matrices.insert(0, {**result["diagnosis_ham10000"]["confusion_matrix"], "title": "HAM10000 rows, 7 classes"})
    plot_confusion(matrices, tmp / "confusion_matrix.png")
    plot_curves(history, tmp / "training_curves.png")
    (tmp / "metrics.json").write_text(json.dumps(result, indent=1))
    (tmp / "training_config.yaml").write_text(to_yaml(cfg))
    (tmp / "README.md").write_text(model_card(cfg, result, frame, model.config))
    replace_dir(tmp, run / "model")
    shutil.copy2(run / "model" / "metrics.json", run / "metrics.json")
    return run / "model"


# --- plots ------------------------------------------------------------------------------------

def plot_roc(oof: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    y_mal = oof["label"].isin(MALIGNANT).astype(int).to_numpy()
    curves = [("melanoma, all", oof["target"].to_numpy(), oof["melanoma_probability"].to_numpy())]
    for source in sorted(oof["source"].unique()):
        m = (oof["source"] == source).to_numpy()
        curves.append((f"melanoma, {source}", oof["target"].to_numpy()[m], oof["melanoma_probability"].to_numpy()[m]))
    curves.append(("malignant, all", y_mal, oof["malignant_probability"].to_numpy()))
    for name, y, score in curves:
        if len(np.unique(y)) == 2:
            fpr, tpr, _ = roc_curve(y, score)
            ax.plot(fpr, tpr, label=f"{name} (AUC {M.auc(y, score):.3f}, n={len(y)})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.axvline(0.10, color="grey", lw=0.5, ls="--")
    ax.text(0.11, 0.03, "90% specificity", fontsize=7, color="grey")
    ax.set(xlabel="False positive rate (1 - specificity)", ylabel="Sensitivity", title="Out-of-fold ROC")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reliability(logits: np.ndarray, labels: np.ndarray, temperature: float, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    y_mel = (labels == M.MEL).astype(float)
    for t, style in ((1.0, "o-"), (temperature, "s-")):
        p = M.softmax(logits, t)
        correct = (p.argmax(axis=1) == labels) * 1.0
        top = [(b["confidence"], b["accuracy"]) for b in M.reliability(p.max(axis=1), correct) if b["n"]]
        mel = [(b["confidence"], b["accuracy"]) for b in M.reliability(p[:, M.MEL], y_mel) if b["n"]]
        name = "raw" if t == 1.0 else f"T = {temperature:.2f}"
        axes[0].plot(*zip(*top), style, ms=3, label=f"{name} (ECE {M.ece(p.max(axis=1), correct):.3f})")
        axes[1].plot(*zip(*mel), style, ms=3, label=f"{name} (ECE {M.ece(p[:, M.MEL], y_mel):.3f})")
    panels = ((axes[0], "Diagnosis (top class)", "confidence", "accuracy"),
              (axes[1], "Melanoma probability", "predicted p(melanoma)", "observed melanoma rate"))
    for ax, title, xlabel, ylabel in panels:
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusion(matrices: list[dict], path: Path) -> None:
    """One panel per confusion matrix ({labels, counts, title}): counts written, colour = row (recall) rate."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(6 * len(matrices), 5.5), squeeze=False)
    for ax, m in zip(axes[0], matrices):
        c, names = np.asarray(m["counts"], dtype=float), m["labels"]
        rates = c / np.maximum(c.sum(axis=1, keepdims=True), 1)
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(names)):
            for j in range(len(names)):
                if c[i, j]:
                    ax.text(j, i, f"{int(c[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set(xlabel="predicted", ylabel="true", title=m["title"])
    fig.suptitle("Confusion matrices (counts; colour = share of the true class)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(history: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for fold, h in history.groupby("fold"):
        axes[0].plot(h["epoch"], h["train_loss"], "-", label=f"fold {fold} train")
        axes[0].plot(h["epoch"], h["val_loss"], "--", label=f"fold {fold} val")
        axes[1].plot(h["epoch"], h["val_melanoma_auc"], "o-", ms=3, label=f"fold {fold}")
        axes[2].plot(h["epoch"], h["lr"], "-", label=f"fold {fold}")
    for ax, title in zip(axes, ("loss", "validation melanoma AUC", "learning rate (end of epoch)")):
        ax.set(title=title, xlabel="epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- model card -------------------------------------------------------------------------------

def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _auc(m: dict, key: str) -> str:
    """'0.877 (95 % CI 0.853–0.898)'; no interval when the rows hold a single class."""
    interval = m[f"{key}_ci95"]
    return _f(m[key]) + (f" (95 % CI {interval[0]:.3f}–{interval[1]:.3f})" if interval else "")


def _subgroup_rows(table: dict) -> str:
    return "\n".join(f"| {name} | {r['n']} | {r['n_melanoma']} | {_f(r['melanoma_auc'])} | "
                     f"{_f(r['sensitivity_at_90_specificity'])} | {_f(r['sensitivity_at_overall_threshold'])} |"
                     for name, r in table.items())


def _ham_section(d: dict | None) -> str:
    if not d:
        return ""
    return f"""
**Differential diagnosis on HAM10000 rows** ({d['n_images']} images; argmax over the seven HAM10000 classes):
balanced accuracy {_f(d['balanced_accuracy'])}, weighted F1 {_f(d['weighted_f1'])}, macro F1 {_f(d['macro_f1'])},
accuracy {_f(d['accuracy'])}. Accuracy is a poor yardstick here: answering "nv" for every image scores
{_f(d['majority_class_accuracy'])} on these rows while missing every melanoma, so demo apps quoting 70-98 %
accuracy say little about melanoma detection. Balanced accuracy (the mean per-class recall) and the melanoma AUC do.
"""


def model_card(cfg: Config, m: dict, frame: pd.DataFrame, model_config: dict) -> str:
    counts = frame.groupby(["source", "label"]).size().unstack(fill_value=0)
    data_rows = "\n".join(f"| {s} | {int(counts.loc[s].sum())} | {int(counts.loc[s].get('mel', 0))} | "
                          + ", ".join(f"{c} {int(n)}" for c, n in counts.loc[s].items() if n) + " |"
                          for s in counts.index)
    status = ("" if m["complete"] else
              f"\n> **Partial run:** only folds {m['folds_trained']} of the requested {m['folds_requested']} finished "
              "(stopped by the time limit). The figures below cover those folds only.\n")
    subgroups = "\n\n".join(f"**{title}**\n\n| group | n | melanomas | AUC | sens. @ 90% spec. (within) | "
                            f"sens. @ overall 90%-spec. threshold |\n|---|---|---|---|---|---|\n"
                            f"{_subgroup_rows(m['subgroups'][key])}"
                            for key, title in (("sex", "Sex"), ("age_band", "Age band"), ("site", "Anatomical site"),
                                               ("source", "Data set")))
    sources = sorted(frame.source.unique())
    inputs = "image + age/sex/site" if cfg.metadata_mode == "fused" else "image only"
    n_mel = m["n_melanoma_by_source"]
    ece = f"{_f(m['ece_before_temperature'])} / {_f(m['ece_after_temperature'])}"
    mel_ece = f"{_f(m['melanoma_ece_before_temperature'])} / {_f(m['melanoma_ece_after_temperature'])}"
    return f"""---
license: cc-by-nc-4.0
library_name: pytorch
pipeline_tag: image-classification
tags:
- dermatology
- dermoscopy
- melanoma
- timm
- medical-imaging
metrics:
- roc_auc
---

# Melanoma triage model: {cfg.backbone} at {cfg.image_size} px, {inputs}

> **Research demo, not a medical device.** It has not been clinically validated and must not be used to
> diagnose, rule out or triage anyone's skin lesion. See a dermatologist about any changing or worrying lesion.
{status}
Input: one dermoscopic image plus optional age, sex and anatomical site (blank fields are allowed: training
blanked each field with probability {cfg.meta_dropout}). Output: probabilities over {len(CLASSES)} classes
({", ".join(f"{c} = {CLASS_NAMES[c]}" for c in CLASSES)}); melanoma probability = p(mel), malignant
probability = p(mel) + p(bcc) + p(akiec). Probabilities are calibrated by temperature scaling
(T = {m['temperature']:.3f}, stored in `config.json`).

## Results (out-of-fold)

Folds trained: {m['folds_trained']} of {m['folds_total']} (grouped by patient / lesion). {m['n_images']} validation
images ({", ".join(f"{s}: {n}" for s, n in m['n_by_source'].items())}), {m['n_melanoma']} melanomas. The published
weights are the fold-{m['published_fold']} model. {m['model_selection_note']}

| metric | value |
|---|---|
| melanoma ROC AUC (all rows) | {_auc(m, 'melanoma_auc')} |
| melanoma ROC AUC, ISIC 2020 rows only ({n_mel.get('isic2020', 0)} melanomas) | {_auc(m, 'melanoma_auc_isic2020')} |
| melanoma ROC AUC, HAM10000 rows only ({n_mel.get('ham10000', 0)} melanomas) | {_auc(m, 'melanoma_auc_ham10000')} |
| melanoma partial AUC above 80% sensitivity (max 0.2) | {_f(m['melanoma_pauc_above_80_tpr'])} |
| sensitivity at 90% specificity | {_f(m['sensitivity_at_90_specificity'])} |
| sensitivity at 95% specificity | {_f(m['sensitivity_at_95_specificity'])} |
| malignant (mel + bcc + akiec) ROC AUC | {_f(m['malignant_auc'])} |
| diagnosis balanced accuracy | {_f(m['diagnosis_balanced_accuracy'])} |
| diagnosis weighted F1 | {_f(m['diagnosis_weighted_f1'])} |
| expected calibration error, before / after temperature | {ece} |
| melanoma-probability ECE, before / after temperature | {mel_ece} |

{_ham_section(m["diagnosis_ham10000"])}
ISIC 2020 rows are the realistic screening mix (about 2% melanoma); HAM10000 is enriched with melanomas and
other diagnoses, so its AUC is not comparable to a clinic's. All numbers are in `metrics.json`.

![ROC curves](roc.png)
![Reliability diagrams](reliability.png)
![Confusion matrix](confusion_matrix.png)
![Training curves](training_curves.png)

### Subgroups (melanoma)

{subgroups}

{M.SKIN_TYPE_NOTE} Subgroups with few melanomas have very uncertain AUCs (n/a: only one class present).

## Data

| data set | images | melanomas | diagnoses |
|---|---|---|---|
{data_rows}

* ISIC 2020: International Skin Imaging Collaboration, SIIM-ISIC 2020 Challenge Dataset, doi:10.34970/2020-ds01;
  Rotemberg et al., Scientific Data 8:34 (2021). CC BY-NC 4.0.
* HAM10000: Tschandl, Rosendahl & Kittler, Scientific Data 5:180161 (2018), doi:10.7910/DVN/DBW86T. CC BY-NC 4.0.

Label mapping: ISIC 2020 diagnoses {", ".join(f"{k} → {v}" for k, v in ISIC_DIAGNOSIS.items())}. HAM10000 `dx` is
used as is. HAM10000 localization → ISIC site: {", ".join(f"{k} → {v}" for k, v in HAM_SITE.items())}.
Folds: StratifiedGroupKFold by {"patient (ISIC) and lesion (HAM)" if len(sources) > 1 else "patient/lesion"},
stratified by data set and diagnosis, with the known ISIC 2020 duplicate pairs kept in one fold
(`folds.csv` in the run).

## Training

`{cfg.backbone}` (ImageNet weights: {cfg.backbone_weights}), {cfg.image_size} px, metadata MLP width
{model_config['meta_hidden']}; AdamW (lr {cfg.lr:g}, weight decay {cfg.weight_decay:g}), {cfg.warmup_epochs:g}
warm-up epoch(s) then cosine, {cfg.epochs} epochs, batch {cfg.batch_size} per process x {cfg.grad_accum} accumulation,
gradient clipping {cfg.clip_grad_norm:g}, augmentation "{cfg.augment}", class imbalance: {cfg.imbalance}
(power {cfg.class_weight_power:g}), best epoch by validation melanoma AUC. The full recipe is `training_config.yaml`.

## Intended use

A research and teaching demo of image + metadata melanoma risk scoring, run by people who understand its limits.
Not for clinical decisions, screening programmes, or self-diagnosis.

## Limitations

* Trained and evaluated on two public dermoscopy collections only, mostly from fair-skinned patients in Europe,
  the USA and Australia; no external test set. Performance on other populations, skin tones, cameras or on
  clinical (non-dermoscopic) phone photos is unknown and likely worse.
* ISIC 2020 has about 2% melanomas, 80% of its benign lesions are unlabelled beyond "benign", and the subset used
  here may be small: confidence intervals on the figures above are wide.
* The best epoch was selected on the validation fold it is scored on (optimistic), and the published model is
  one fold's model, not an ensemble.
* Calibration was fitted on these data sets' class mix; in a population with a different melanoma rate the
  probabilities are not the real risk.

## Licence

The weights were trained on CC BY-NC 4.0 data and are released under CC BY-NC 4.0: **non-commercial use only**,
with attribution to the ISIC 2020 and HAM10000 sources above. The training code is Apache-2.0.

## Use

```python
from inference import Predictor
predictor = Predictor.from_pretrained("REPO_ID@COMMIT_SHA")  # pin the commit that was evaluated
predictor.predict("lesion.jpg", age=55, sex="female", site="torso")
```
"""
