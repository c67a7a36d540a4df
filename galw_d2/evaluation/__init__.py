"""Person-search evaluation: the standard protocol's metrics (numpy core), the saved-results file,
the detectron2 evaluator and plots. See docs/evaluation.md."""

from .detection import evaluate_detection, match_detections  # noqa: F401
from .results import build_results, load_results, save_results, validate_results  # noqa: F401
from .scoring import evaluate_results  # noqa: F401
from .search import average_precision, evaluate_search, iou_threshold, score_query  # noqa: F401

__all__ = [
    "average_precision",
    "evaluate_search",
    "score_query",
    "iou_threshold",
    "evaluate_detection",
    "match_detections",
    "build_results",
    "load_results",
    "save_results",
    "validate_results",
    "evaluate_results",
    "PersonSearchEvaluator",
]


def __getattr__(name):  # lazy: the core must not import detectron2
    if name == "PersonSearchEvaluator":
        from .evaluator import PersonSearchEvaluator

        return PersonSearchEvaluator
    raise AttributeError(name)
