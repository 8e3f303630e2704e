"""The run's plots: ROC curves, reliability diagrams, confusion matrices and training curves (PNG files)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from inference.model import MALIGNANT, probabilities  # noqa: E402

from . import metrics as M  # noqa: E402


def plot_roc(oof: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    y_mal = oof["label"].isin(MALIGNANT).astype(int).to_numpy()
    curves = [("melanoma, all", oof["target"].to_numpy(), oof["melanoma_probability"].to_numpy())]
    for source in sorted(oof["source"].unique()):
        rows = (oof["source"] == source).to_numpy()
        curves.append((f"melanoma, {source}", oof["target"].to_numpy()[rows],
                       oof["melanoma_probability"].to_numpy()[rows]))
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
        p = probabilities(logits, t)
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
    for ax, matrix in zip(axes[0], matrices):
        c, names = np.asarray(matrix["counts"], dtype=float), matrix["labels"]
        rates = c / np.maximum(c.sum(axis=1, keepdims=True), 1)
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(names)):
            for j in range(len(names)):
                if c[i, j]:
                    ax.text(j, i, f"{int(c[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set(xlabel="predicted", ylabel="true", title=matrix["title"])
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


