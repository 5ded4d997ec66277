"""Sentiment, intent, urgency and automated-message models learned from a labelled corpus.

Hand-written cue rules fit the set they were written beside (intent 0.42 on messages
written by someone else); these models learn from `chains/local/corpus/`, 1,000+
messages written and labelled by hand for this project (see its README), and are
evaluated on messages never trained on (`python -m eval.run`).

Per task: a linear SVM on word (1-2) and character (2-5, within words: typos and slang)
TF-IDF n-grams, with the business-impact cues of `chains.local.cues` for urgency.
Probabilities are calibrated (`CalibratedClassifierCV`, sigmoid, 5 folds), so a
`confidence` of 0.8 is right about 80% of the time (the calibration error is reported by
the evaluation).

How the settings were chosen (leave-one-writer-out over the training writers, and the
dev writer; never the test sets): logistic regression scored the same as the SVM and
trained 5-10x slower; WordLlama embeddings and VADER's lexicon scores as extra inputs
lowered or did not change accuracy; MiniLM sentence embeddings (a 90 MB model needing
PyTorch) added about 0.01 and 10-20 ms per message, not worth their weight here.

Training is deterministic (no randomness in the solvers or the folds), takes a few
seconds, and is cached on disk by the hash of the corpus and this file's model version.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import joblib
import numpy as np
import sklearn
from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.svm import LinearSVC
from scipy import sparse

from chains.local.cues import CUE_NAMES, cue_matrix, cue_vector

log = logging.getLogger(__name__)

MODEL_VERSION = "interaction-models-2"
CORPUS = Path(__file__).parent / "corpus"
TRAINING_FILES = ("train.csv", "dev.csv")
Row = tuple[str, str]  # (text, channel)


@dataclass(frozen=True, slots=True)
class TaskSpec:
    c: float  # inverse regularisation of the linear SVM
    cue_weight: float = 0.0  # scale of the cue block beside the n-grams (0: none)


TASKS: dict[str, TaskSpec] = {
    "sentiment": TaskSpec(c=0.3),
    "intent": TaskSpec(c=0.3),
    "urgency": TaskSpec(c=0.3, cue_weight=0.6),
    "automated": TaskSpec(c=0.3),
}


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    channel: str
    labels: dict[str, str]
    source: str  # the id prefix: which writer's slice

    @property
    def row(self) -> Row:
        return (self.text, self.channel)


def read_examples(paths: Sequence[Path]) -> list[Example]:
    examples: list[Example] = []
    for path in paths:
        with path.open(newline="") as handle:
            for record in csv.DictReader(handle):
                # A set without an `automated` column holds customers' messages only.
                labels = {task: record.get(task) or "no" for task in TASKS}
                source = (record.get("id") or path.stem).split("-")[0]
                examples.append(Example(record["text"], record["channel"], labels, source))
    return examples


def corpus_paths(names: Sequence[str] = TRAINING_FILES) -> list[Path]:
    return [CORPUS / name for name in names]


# Top-level functions (not lambdas): fitted models are pickled to the cache.
def texts_of(rows: Sequence[Row]) -> list[str]:
    return [text for text, _ in rows]


class TextFeatures:
    """Word and character n-grams, fitted once and shared by every task; the cue block is
    computed once per message too."""

    def __init__(self) -> None:
        self.words = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, dtype=np.float32)
        self.chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True,
                                     max_features=60_000, dtype=np.float32)

    def fit(self, rows: Sequence[Row]) -> TextFeatures:
        texts = texts_of(rows)
        self.words.fit(texts)
        self.chars.fit(texts)
        return self

    def transform(self, rows: Sequence[Row]) -> Features:
        texts = texts_of(rows)
        ngrams = sparse.hstack([weighted_ngrams(self.words, texts), weighted_ngrams(self.chars, texts)]).tocsr()
        return Features(ngrams, cue_matrix(list(rows)))

def weighted_ngrams(vectorizer: TfidfVectorizer, texts: list[str]) -> sparse.csr_matrix:
    """`vectorizer.transform(texts)` without scikit-learn's per-call input validation
    (more than half of the learned labels' time, on the first event's path): the counts
    from its own `CountVectorizer.transform`, then `_weigh`, so the result is bit for bit
    scikit-learn's (tested)."""
    matrix: sparse.csr_matrix = CountVectorizer.transform(vectorizer, texts)
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    _weigh(vectorizer, matrix.data, vectorizer.idf_[matrix.indices], rows, matrix.shape[0])
    return matrix


def _known_ngrams(vectorizer: TfidfVectorizer, text: str) -> tuple[np.ndarray, np.ndarray]:
    """One text's known n-grams (ascending columns, as scikit-learn sorts them) and their
    counts, counted without a sparse matrix and without a Python step per n-gram."""
    counts = Counter(map(vectorizer.vocabulary_.get, _analyzer(vectorizer)(text)))
    counts.pop(None, None)
    columns = sorted(counts)
    return np.array(columns, dtype=np.intp), np.array([counts[column] for column in columns], dtype=vectorizer.dtype)


@lru_cache(maxsize=16)
def _analyzer(vectorizer: TfidfVectorizer) -> Callable[[str], list[str]]:
    """scikit-learn builds it anew on every `transform`; a fitted vectorizer's never changes."""
    analyzer: Callable[[str], list[str]] = vectorizer.build_analyzer()
    return analyzer


def _weigh(vectorizer: TfidfVectorizer, values: np.ndarray, idf: np.ndarray, rows: np.ndarray,
           row_count: int) -> None:
    """In place, what scikit-learn's `TfidfTransformer` does to counts with `TextFeatures`'
    settings: log-scaled counts, idf weights (`idf`: each value's), rows scaled to unit
    length, in its precision (squares in float32, summed in float64)."""
    assert vectorizer.use_idf and vectorizer.norm == "l2", "the arithmetic below is for these settings"
    if vectorizer.sublinear_tf:
        np.log(values, out=values)
        values += 1.0
    values *= idf
    norms = np.sqrt(np.bincount(rows, weights=np.square(values), minlength=row_count))
    norms[norms == 0.0] = 1.0
    values /= norms[rows]


@dataclass(frozen=True, slots=True)
class Features:
    ngrams: sparse.csr_matrix
    cues: np.ndarray

    def for_text_model(self, spec: TaskSpec) -> sparse.csr_matrix:
        if not spec.cue_weight:
            return self.ngrams
        return sparse.hstack([self.ngrams, sparse.csr_matrix(self.cues * spec.cue_weight)]).tocsr()


def _calibrated(c: float) -> CalibratedClassifierCV:
    """Calibrated on 5-fold out-of-fold scores, then one model refitted on everything
    (`ensemble=False`): predicting costs one model, not five."""
    svm = LinearSVC(C=c, class_weight="balanced", random_state=0)  # liblinear shuffles: fix it
    return CalibratedClassifierCV(svm, method="sigmoid", cv=5, ensemble=False)


@dataclass
class TaskModel:
    """A fitted, calibrated linear model reduced to its arithmetic: scores `X @ W + b`,
    per-class sigmoid calibration `1 / (1 + exp(a·score + c))`, normalised as
    `CalibratedClassifierCV.predict_proba` does (tested equal). Predicting costs one
    sparse product instead of scikit-learn's per-call validation (0.2 ms, not 3 ms)."""

    spec: TaskSpec
    classes: list[str]
    weights: np.ndarray  # (features, scores): one score column per class, one for binary
    intercepts: np.ndarray
    slopes: np.ndarray  # the calibrators' a
    offsets: np.ndarray  # the calibrators' b

    @classmethod
    def compile(cls, spec: TaskSpec, calibrated: CalibratedClassifierCV) -> TaskModel:
        (fitted,) = calibrated.calibrated_classifiers_  # ensemble=False: one model, refitted on everything
        svm: LinearSVC = fitted.estimator
        return cls(
            spec, [str(label) for label in calibrated.classes_],
            np.ascontiguousarray(svm.coef_.T, dtype=np.float64), np.asarray(svm.intercept_, dtype=np.float64),
            np.asarray([c.a_ for c in fitted.calibrators]), np.asarray([c.b_ for c in fitted.calibrators]),
        )

    def probabilities(self, features: Features) -> np.ndarray:
        return self._calibrate(np.asarray(features.for_text_model(self.spec) @ self.weights) + self.intercepts)

    def _calibrate(self, scores: np.ndarray) -> np.ndarray:
        calibrated = 1.0 / (1.0 + np.exp(self.slopes * scores + self.offsets))
        if len(self.classes) == 2:
            return np.hstack([1.0 - calibrated, calibrated])
        total = calibrated.sum(axis=1, keepdims=True)
        uniform = np.full_like(calibrated, 1.0 / len(self.classes))
        return np.divide(calibrated, total, out=uniform, where=total != 0)


def fit_task(spec: TaskSpec, features: Features, labels: Sequence[str]) -> TaskModel:
    return TaskModel.compile(spec, _calibrated(spec.c).fit(features.for_text_model(spec), list(labels)))


@dataclass(frozen=True, slots=True)
class Prediction:
    label: str
    confidence: float
    probabilities: dict[str, float]


class InteractionClassifier:
    def __init__(self, features: TextFeatures, models: dict[str, TaskModel], fingerprint: str) -> None:
        self.features = features
        self.models = models
        self.fingerprint = fingerprint  # corpus + model version: what this model is

    @classmethod
    def fit(cls, examples: Sequence[Example], fingerprint: str = "") -> InteractionClassifier:
        rows = [example.row for example in examples]
        extractor = TextFeatures().fit(rows)
        features = extractor.transform(rows)
        models = {task: fit_task(spec, features, [e.labels[task] for e in examples]) for task, spec in TASKS.items()}
        return cls(extractor, models, fingerprint)

    def predict_many(self, rows: Sequence[Row]) -> list[dict[str, Prediction]]:
        features = self.features.transform(rows)
        by_task = {task: (model.classes, model.probabilities(features)) for task, model in self.models.items()}
        return [{task: _prediction(classes, probabilities[index].tolist())
                 for task, (classes, probabilities) in by_task.items()}
                for index in range(len(rows))]

    def predict(self, text: str, channel: str) -> dict[str, Prediction]:
        """`predict_many` for the one message each analysis reads (`MessageScorer`)."""
        scorer: MessageScorer | None = self.__dict__.get("_scorer")
        if scorer is None:
            scorer = self.__dict__["_scorer"] = MessageScorer(self.features, self.models)
        return scorer.predict(text, channel)

    def __getstate__(self) -> dict[str, object]:
        """The scorer is derived from the models: not written to the cache twice."""
        return {key: value for key, value in self.__dict__.items() if key != "_scorer"}


class MessageScorer:
    """Every task's probabilities for one message, from one lookup per n-gram.

    Why: labelling the message is the largest fixed CPU cost of a stream, and it sits on
    the first event's path. On a busy server much of it is memory, not arithmetic: each
    known n-gram's idf and its weights for the four tasks sat in five arrays, which other
    streams' work had evicted by the next message. Here one row holds a feature's idf and
    every task's weights (16 float64s, two cache lines; the table is ~7 MB per process),
    the four tasks' scores come from one product and are calibrated together. Timed inside
    the bench's server at concurrency 100: 339-343 -> 286-289 µs per message (2026-12-04).

    The same operations as before on every value: the float32 weights of the counts, each
    task's sum in the same order (a task without cues gets zero weights for the cue block,
    exact zeros added after its n-grams), the same calibration. As before, the sum runs in
    another order than `predict_many`'s sparse product, so a probability may differ in its
    last bits; the rounded ones served do not (tested over every corpus message)."""

    def __init__(self, features: TextFeatures, models: dict[str, TaskModel]) -> None:
        self._words, self._chars = features.words, features.chars
        self._word_columns = len(self._words.vocabulary_)
        ngram_columns = self._word_columns + len(self._chars.vocabulary_)
        self._tasks: list[tuple[str, TaskModel, slice]] = []
        scores = 0
        for task, model in models.items():
            self._tasks.append((task, model, slice(scores, scores + model.weights.shape[1])))
            scores += model.weights.shape[1]
        cue_weights = {model.spec.cue_weight for model in models.values() if model.spec.cue_weight}
        assert len(cue_weights) <= 1, "the tasks that use cues share one scale: one value per cue"
        self._cue_weight = cue_weights.pop() if cue_weights else 0.0
        self._table = np.empty((ngram_columns, 1 + scores))  # idf, then every task's weights
        self._table[: self._word_columns, 0] = self._words.idf_
        self._table[self._word_columns :, 0] = self._chars.idf_
        self._cue_rows = np.zeros((len(CUE_NAMES), scores))
        for _, model, span in self._tasks:
            self._table[:, 1 + span.start : 1 + span.stop] = model.weights[:ngram_columns]
            if model.spec.cue_weight:
                self._cue_rows[:, span] = model.weights[ngram_columns:]
        self._intercepts = np.concatenate([model.intercepts for model in models.values()])
        self._slopes = np.concatenate([model.slopes for model in models.values()])
        self._offsets = np.concatenate([model.offsets for model in models.values()])

    def predict(self, text: str, channel: str) -> dict[str, Prediction]:
        words, word_values = _known_ngrams(self._words, text)
        chars, char_values = _known_ngrams(self._chars, text)
        rows = self._table[np.concatenate([words, chars + self._word_columns])]
        _weigh(self._words, word_values, rows[: len(words), 0], np.zeros(len(words), dtype=np.intp), 1)
        _weigh(self._chars, char_values, rows[len(words) :, 0], np.zeros(len(chars), dtype=np.intp), 1)
        cues = np.asarray(cue_vector(text, channel)) * self._cue_weight
        present = np.flatnonzero(cues)  # a sparse matrix holds no zeros either
        values = np.concatenate([word_values, char_values]).astype(np.float64)
        values = np.concatenate([values, cues[present]])
        weights = np.concatenate([rows[:, 1:], self._cue_rows[present]])
        scores = (values[:, np.newaxis] * weights).sum(axis=0) + self._intercepts
        calibrated = 1.0 / (1.0 + np.exp(self._slopes * scores + self._offsets))
        return {task: _prediction(model.classes, _normalised(calibrated[span], len(model.classes)))
                for task, model, span in self._tasks}


def _normalised(calibrated: np.ndarray, classes: int) -> list[float]:
    """`TaskModel._calibrate`'s normalisation of one row, in the same operations."""
    if classes == 2:
        (positive,) = calibrated.tolist()
        return [1.0 - positive, positive]
    total = float(calibrated.sum())
    return (calibrated / total).tolist() if total != 0 else [1.0 / classes] * classes


def _prediction(classes: list[str], values: list[float]) -> Prediction:
    best = max(range(len(values)), key=values.__getitem__)  # the first of equals, as `np.argmax`
    return Prediction(classes[best], round(values[best], 4),
                      {label: round(p, 4) for label, p in zip(classes, values, strict=True)})


def fingerprint_of(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256(f"{MODEL_VERSION}|sklearn {sklearn.__version__}".encode())
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def load_or_train(cache_dir: Path | None, paths: Sequence[Path] | None = None) -> InteractionClassifier:
    """The classifier for `paths` (default: the shipped corpus), from the cache when its
    fingerprint matches, else trained now and cached (written atomically)."""
    paths = list(paths or corpus_paths())
    fingerprint = fingerprint_of(paths)
    cached = cache_dir / f"{MODEL_VERSION}-{fingerprint}.joblib" if cache_dir else None
    if cached is not None and cached.exists():
        try:
            classifier: InteractionClassifier = joblib.load(cached)
            return classifier
        except Exception:  # noqa: BLE001 - a broken cache file is retrained over
            log.warning("retraining over an unreadable model cache %s", cached, exc_info=True)
    classifier = InteractionClassifier.fit(read_examples(paths), fingerprint)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(f".{os.getpid()}.tmp")
            joblib.dump(classifier, partial)
            partial.replace(cached)
        except OSError:  # a read-only cache (an image's) costs a retrain per start, not the service
            log.warning("cannot write the model cache %s; serving the model trained now", cached, exc_info=True)
    return classifier


_MODEL_CACHE_DIR: Path | None = None


def configure(cache_dir: Path | None) -> None:
    """Where `classifier()` keeps its trained model (set once per process at start-up)."""
    global _MODEL_CACHE_DIR
    if cache_dir != _MODEL_CACHE_DIR:
        _MODEL_CACHE_DIR = cache_dir
        classifier.cache_clear()


@lru_cache(maxsize=1)
def classifier() -> InteractionClassifier:
    return load_or_train(_MODEL_CACHE_DIR)
