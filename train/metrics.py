"""Metrics on out-of-fold predictions: sklearn's where sklearn has them, the rest small and explicit.

Everything takes plain numpy arrays so the same code scores one validation fold during training
and the whole OOF table at the end. A metric that is undefined for the rows given (an AUC with one
class present) is None, never a made-up number.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    roc_auc_score,
    roc_curve,
)

from inference.model import CLASSES, MALIGNANT, probabilities

from .data import ages

MEL = CLASSES.index("mel")
MALIGNANT_IDX = [CLASSES.index(c) for c in MALIGNANT]
AGE_BANDS = ((0, 30, "<30"), (30, 45, "30-44"), (45, 60, "45-59"), (60, 75, "60-74"), (75, 200, "75+"))
SKIN_TYPE_NOTE = ("Skin type (Fitzpatrick) was not recorded in ISIC 2020 or HAM10000, so performance across "
                  "skin tones is unknown; both data sets come mostly from fair-skinned patients.")


def _both_classes(y: np.ndarray) -> bool:
    return len(np.unique(y)) == 2


def auc(y: np.ndarray, score: np.ndarray) -> float | None:
    return float(roc_auc_score(y, score)) if _both_classes(y) else None


def auc_interval(y: np.ndarray, score: np.ndarray, other: np.ndarray | None = None, rounds: int = 1000,
                 seed: int = 0) -> list[float] | None:
    """95 % bootstrap interval of the ROC AUC of `score` or, given `other` (a second model's scores for the
    same rows), of the paired difference AUC(score) − AUC(other). Melanomas and non-melanomas are resampled
    separately (every round has both); percentiles of `rounds` values. It measures how far one validation
    fold can be trusted (with 7 melanomas, not far); it does not measure seed-to-seed variation."""
    y, score = np.asarray(y), np.asarray(score)
    if not _both_classes(y):
        return None
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    values = []
    for _ in range(rounds):
        rows = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        value = roc_auc_score(y[rows], score[rows])
        values.append(value if other is None else value - roc_auc_score(y[rows], np.asarray(other)[rows]))
    return [float(v) for v in np.percentile(values, [2.5, 97.5])]


def partial_auc_above_tpr(y: np.ndarray, score: np.ndarray, min_tpr: float = 0.8) -> float | None:
    """Area under the ROC curve where TPR >= min_tpr, in [0, 1 - min_tpr] (ISIC 2024 challenge metric).

    Flipping labels and scores turns "TPR above 0.8" into "FPR below 0.2", which sklearn computes as a
    McClish-standardised partial AUC; this undoes the standardisation back to the raw area.
    """
    if not _both_classes(y):
        return None
    max_fpr = 1.0 - min_tpr
    scaled = roc_auc_score(1 - y, -score, max_fpr=max_fpr)
    return float(0.5 * max_fpr**2 + (max_fpr - 0.5 * max_fpr**2) / 0.5 * (scaled - 0.5))


def sensitivity_at_specificity(y: np.ndarray, score: np.ndarray,
                               specificity: float) -> tuple[float | None, float | None]:
    """Highest sensitivity with specificity >= the target, and the score threshold that gives it."""
    if not _both_classes(y):
        return None, None
    fpr, tpr, thresholds = roc_curve(y, score)
    ok = fpr <= 1.0 - specificity + 1e-12
    i = int(np.flatnonzero(ok)[np.argmax(tpr[ok])])
    return float(tpr[i]), float(min(thresholds[i], 1.0))


def rates_at_threshold(y: np.ndarray, score: np.ndarray, threshold: float) -> tuple[float | None, float | None]:
    """(sensitivity, specificity) of `score >= threshold`."""
    pos, neg = y == 1, y == 0
    sens = float((score[pos] >= threshold).mean()) if pos.any() else None
    spec = float((score[neg] < threshold).mean()) if neg.any() else None
    return sens, spec


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error with equal-width bins (Guo et al. 2017)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(total)


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> list[dict]:
    """Per-bin (mean confidence, accuracy, count) for the reliability diagram."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    return [{"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int((which == b).sum()),
             "confidence": float(confidence[which == b].mean()) if (which == b).any() else None,
             "accuracy": float(correct[which == b].mean()) if (which == b).any() else None} for b in range(bins)]


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising the multi-class NLL of softmax(logits / T) (Guo et al. 2017), T in [0.05, 20]."""
    def nll(log_t: float) -> float:
        return float(log_loss(labels, probabilities(logits, math.exp(log_t)), labels=list(range(len(CLASSES)))))

    best = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(best.x))


def age_band(age: float | None) -> str:
    if age is None or (isinstance(age, float) and math.isnan(age)):
        return "unknown"
    return next(name for lo, hi, name in AGE_BANDS if lo <= age < hi)


def subgroup_table(y: np.ndarray, mel_prob: np.ndarray, values: list[str], threshold: float | None) -> dict:
    """Per value: counts, melanoma AUC, sensitivity at 90 % specificity within the subgroup, and
    sensitivity/specificity at the overall 90 %-specificity threshold (the one a deployment would use)."""
    table = {}
    values_arr = np.asarray(values, dtype=object)
    for value in sorted(set(values)):
        group = values_arr == value
        sens_within, _ = sensitivity_at_specificity(y[group], mel_prob[group], 0.90)
        sens_global, spec_global = (rates_at_threshold(y[group], mel_prob[group], threshold)
                                    if threshold is not None else (None, None))
        table[value] = {"n": int(group.sum()), "n_melanoma": int(y[group].sum()),
                        "melanoma_auc": auc(y[group], mel_prob[group]),
                        "sensitivity_at_90_specificity": sens_within,
                        "sensitivity_at_overall_threshold": sens_global,
                        "specificity_at_overall_threshold": spec_global}
    return table


def ham_diagnosis(probs: np.ndarray, labels: np.ndarray) -> dict | None:
    """Seven-class differential on HAM10000 rows: balanced accuracy, weighted F1, accuracy, confusion matrix.

    Accuracy is reported only beside `majority_class_accuracy` (always answering "nv"), because on a data set
    that is two-thirds nevi a model that never finds a melanoma already scores ~0.67.
    """
    if not len(labels):
        return None
    truth = np.asarray(labels)
    pred = probs.argmax(axis=1)
    present = sorted(set(truth.tolist()))
    return {
        "n_images": int(len(truth)),
        "classes": list(CLASSES),
        "balanced_accuracy": float(balanced_accuracy_score(truth, pred)),
        "weighted_f1": float(f1_score(truth, pred, average="weighted", labels=present)),
        "macro_f1": float(f1_score(truth, pred, average="macro", labels=present)),
        "accuracy": float((pred == truth).mean()),
        "majority_class_accuracy": float((truth == CLASSES.index("nv")).mean()),
        "confusion_matrix": {"labels": list(CLASSES), "rows": "true class", "columns": "predicted class",
                             "counts": confusion_matrix(truth, pred, labels=list(range(len(CLASSES)))).tolist()},
    }


def evaluate(rows: pd.DataFrame, logits: np.ndarray, temperature: float) -> dict:
    """All reported metrics (metrics.json) for scored rows: `rows` has one row per image with its true
    `label` (a class name), `source`, `sex`, `age` (NaN = unknown) and `site`; `logits` (n, classes) are
    aligned with it; probabilities use `temperature`."""
    labels = rows["label"].map(CLASSES.index).to_numpy()
    sources, sexes, sites = (rows[c].tolist() for c in ("source", "sex", "site"))
    raw, probs = probabilities(logits, 1.0), probabilities(logits, temperature)
    y_mel = (labels == MEL).astype(int)
    y_mal = np.isin(labels, MALIGNANT_IDX).astype(int)
    mel, mal = probs[:, MEL], probs[:, MALIGNANT_IDX].sum(axis=1)
    src = np.asarray(sources)
    pred = probs.argmax(axis=1)
    sens90, thr90 = sensitivity_at_specificity(y_mel, mel, 0.90)
    sens95, thr95 = sensitivity_at_specificity(y_mel, mel, 0.95)
    present = sorted(set(labels.tolist()))
    return {
        "n_images": int(len(labels)),
        "n_melanoma": int(y_mel.sum()),
        "n_by_source": {s: int((src == s).sum()) for s in sorted(set(sources))},
        "n_melanoma_by_source": {s: int(y_mel[src == s].sum()) for s in sorted(set(sources))},
        "melanoma_auc": auc(y_mel, mel),
        "melanoma_auc_ci95": auc_interval(y_mel, mel),
        # per source (melanoma_auc_<source>, _ci95): pooling sources rewards telling them apart (issue 24)
        **{f"melanoma_auc_{s}{suffix}": fn(y_mel[src == s], mel[src == s])
           for s in sorted(set(sources)) for suffix, fn in (("", auc), ("_ci95", auc_interval))},
        "melanoma_auc_uncalibrated": auc(y_mel, raw[:, MEL]),
        "melanoma_pauc_above_80_tpr": partial_auc_above_tpr(y_mel, mel, 0.8),
        "sensitivity_at_90_specificity": sens90,
        "threshold_at_90_specificity": thr90,
        "sensitivity_at_95_specificity": sens95,
        "threshold_at_95_specificity": thr95,
        "malignant_auc": auc(y_mal, mal),
        "diagnosis_balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
        "diagnosis_balanced_accuracy_classes": [CLASSES[i] for i in present],
        "diagnosis_weighted_f1": float(f1_score(labels, pred, average="weighted", labels=present)),
        "confusion_matrix": {"labels": list(CLASSES), "rows": "true class", "columns": "predicted class",
                             "counts": confusion_matrix(labels, pred, labels=list(range(len(CLASSES)))).tolist()},
        "diagnosis_ham10000": ham_diagnosis(probs[src == "ham10000"], labels[src == "ham10000"]),
        "temperature": temperature,
        "nll_before_temperature": float(log_loss(labels, raw, labels=list(range(len(CLASSES))))),
        "nll_after_temperature": float(log_loss(labels, probs, labels=list(range(len(CLASSES))))),
        "ece_before_temperature": ece(raw.max(axis=1), (raw.argmax(axis=1) == labels).astype(float)),
        "ece_after_temperature": ece(probs.max(axis=1), (pred == labels).astype(float)),
        "melanoma_ece_before_temperature": ece(raw[:, MEL], y_mel.astype(float)),
        "melanoma_ece_after_temperature": ece(mel, y_mel.astype(float)),
        "subgroups": {key: subgroup_table(y_mel, mel, values, thr90) for key, values in (
            ("sex", sexes), ("age_band", [age_band(a) for a in ages(rows)]), ("site", sites), ("source", sources))},
        "skin_type": SKIN_TYPE_NOTE,
    }
