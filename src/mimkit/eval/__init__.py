"""Evaluation of pretrained encoders: kNN, linear probe, fine-tuning, label efficiency, t-SNE.

Frozen protocols share one cached feature pass (:mod:`mimkit.eval.cache`); t-SNE is imported lazily
(:mod:`mimkit.eval.tsne`, needs scikit-learn).
"""

from mimkit.data.subsets import per_class_subset
from mimkit.eval.cache import cached_features, feature_key
from mimkit.eval.classifier import build_classifier
from mimkit.eval.features import extract_features
from mimkit.eval.finetune import FinetuneConfig, finetune
from mimkit.eval.knn import knn_accuracy, knn_classify
from mimkit.eval.label_efficiency import run_label_efficiency
from mimkit.eval.linear import LinearProbeConfig, linear_probe
from mimkit.eval.online_knn import OnlineKNN

__all__ = [
    "FinetuneConfig",
    "LinearProbeConfig",
    "OnlineKNN",
    "build_classifier",
    "cached_features",
    "extract_features",
    "feature_key",
    "finetune",
    "knn_accuracy",
    "knn_classify",
    "linear_probe",
    "per_class_subset",
    "run_label_efficiency",
]
