"""How well the local interaction models do on messages they were not trained on.

Four views, each printed per task (sentiment, intent, urgency, automated):

- **dev**: trained on `train.csv` only, scored on `dev.csv` (written by another person):
  the split used to choose the models' settings.
- **cross-validation**: 5 stratified folds over train + dev.
- **leave one writer out**: train + dev were written in slices by different people
  (the id prefix); each slice is scored by a model trained on the others: the closest
  estimate of a new customer's messages.
- **test**: the shipped model (trained on train + dev) on `eval/data/` sets that no
  model was ever trained or tuned on; for the threats set also its urgency on the legal
  and safety threats alone (the contract makes each `high`) and on their look-alikes
  alone (legal or safety words, no threat), where a model that learned the words and not
  the threat fails one or the other.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
from sklearn.model_selection import StratifiedKFold

from chains.local.classifier import TASKS, Example, InteractionClassifier, corpus_paths, load_or_train, read_examples

DATA = Path(__file__).parent / "data"
TEST_SETS = {"eval/data/interactions.csv": DATA / "interactions.csv",
             "eval/data/interactions_heldout.csv": DATA / "interactions_heldout.csv",
             "eval/data/interactions_threats.csv": DATA / "interactions_threats.csv"}
THREATS = "eval/data/interactions_threats.csv"


@dataclass
class TaskReport:
    task: str
    where: str
    n: int
    accuracy: float
    macro_f1: float
    ece: float
    classes: list[str]
    precision: list[float]
    recall: list[float]
    confusion: np.ndarray

    @property
    def min_recall(self) -> float:
        return min(self.recall)


def expected_calibration_error(correct: np.ndarray, confidence: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)


def report(task: str, where: str, truth: Sequence[str], predicted: Sequence[str], confidence: Sequence[float]) -> TaskReport:
    classes = sorted(set(truth) | set(predicted))
    precision, recall, _, _ = precision_recall_fscore_support(truth, predicted, labels=classes, zero_division=0)
    correct = np.asarray([t == p for t, p in zip(truth, predicted, strict=True)], dtype=float)
    return TaskReport(
        task, where, len(truth), float(accuracy_score(truth, predicted)),
        float(f1_score(truth, predicted, average="macro", labels=classes, zero_division=0)),
        expected_calibration_error(correct, np.asarray(confidence)), classes,
        [float(p) for p in precision], [float(r) for r in recall],
        confusion_matrix(truth, predicted, labels=classes),
    )


def score(model: InteractionClassifier, examples: Sequence[Example], where: str) -> list[TaskReport]:
    predictions = model.predict_many([e.row for e in examples])
    return [
        report(task, where, [e.labels[task] for e in examples], [p[task].label for p in predictions],
               [p[task].confidence for p in predictions])
        for task in TASKS
    ]


def threat_views(model: InteractionClassifier, path: Path, examples: Sequence[Example]) -> list[TaskReport]:
    """Urgency on the set's threats alone and on its look-alikes alone: `examples` are the
    set's rows, read by `read_examples`, which drops the `threat` column read here."""
    with path.open(newline="") as handle:
        threat = [record["threat"] != "none" for record in csv.DictReader(handle)]
    views = []
    for flag, what in ((True, "legal or safety threats"), (False, "their look-alikes")):
        chosen = [example for example, is_threat in zip(examples, threat, strict=True) if is_threat is flag]
        views += [r for r in score(model, chosen, f"test {THREATS}: {len(chosen)} {what}") if r.task == "urgency"]
    return views


def pooled(examples: Sequence[Example], folds: Sequence[tuple[list[int], list[int]]], where: str) -> list[TaskReport]:
    """Each example predicted by the model of the fold that held it out; pooled."""
    truth: dict[str, list[str]] = {task: [] for task in TASKS}
    predicted: dict[str, list[str]] = {task: [] for task in TASKS}
    confidence: dict[str, list[float]] = {task: [] for task in TASKS}
    for train_index, test_index in folds:
        model = InteractionClassifier.fit([examples[i] for i in train_index])
        for i, prediction in zip(test_index, model.predict_many([examples[i].row for i in test_index]), strict=True):
            for task in TASKS:
                truth[task].append(examples[i].labels[task])
                predicted[task].append(prediction[task].label)
                confidence[task].append(prediction[task].confidence)
    return [report(task, where, truth[task], predicted[task], confidence[task]) for task in TASKS]


def evaluate(cache_dir: Path, *, quick: bool = False) -> list[TaskReport]:
    train = read_examples(corpus_paths(["train.csv"]))
    dev = read_examples(corpus_paths(["dev.csv"]))
    everything = train + dev
    reports = score(InteractionClassifier.fit(train), dev, f"dev ({len(dev)}, trained on train {len(train)})")
    if not quick:
        stratify = [e.labels["intent"] for e in everything]
        folds = [(list(a), list(b)) for a, b in
                 StratifiedKFold(5, shuffle=True, random_state=7).split(np.zeros(len(everything)), stratify)]
        reports += pooled(everything, folds, f"5-fold CV (train+dev {len(everything)})")
        writers = sorted({e.source for e in everything})
        by_writer = [([i for i, e in enumerate(everything) if e.source != w],
                      [i for i, e in enumerate(everything) if e.source == w]) for w in writers]
        reports += pooled(everything, by_writer, f"leave one writer out ({len(writers)} writers)")
    shipped = load_or_train(cache_dir, corpus_paths())
    for name, path in TEST_SETS.items():
        examples = read_examples([path])
        reports += score(shipped, examples, f"test {name} ({len(examples)})")
        if name == THREATS:
            reports += threat_views(shipped, path, examples)
    return reports
