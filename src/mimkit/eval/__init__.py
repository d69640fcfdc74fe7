"""Evaluation of encoder modules and datasets: kNN, linear probe, fine-tuning, label efficiency, t-SNE,
embeddings (from a run directory or a file: :mod:`mimkit.eval_protocols`)."""

from mimkit.data.subsets import per_class_subset
from mimkit.eval.cache import feature_key
from mimkit.eval.classifier import build_classifier
from mimkit.eval.features import FeaturePass
from mimkit.eval.finetune import finetune
from mimkit.eval.frozen import Encoder, Split, evaluate_frozen, features, plot_tsne
from mimkit.eval.knn import knn_accuracy, knn_classify
from mimkit.eval.label_efficiency import LabelEfficiencyOptions, run_label_efficiency
from mimkit.eval.linear import LinearProbeConfig, linear_probe
from mimkit.eval.online_knn import OnlineKNN
from mimkit.eval.recipe import FinetuneConfig

__all__ = [
    "Encoder",
    "FeaturePass",
    "FinetuneConfig",
    "LabelEfficiencyOptions",
    "LinearProbeConfig",
    "OnlineKNN",
    "Split",
    "build_classifier",
    "evaluate_frozen",
    "feature_key",
    "features",
    "finetune",
    "knn_accuracy",
    "knn_classify",
    "linear_probe",
    "per_class_subset",
    "plot_tsne",
    "run_label_efficiency",
]
