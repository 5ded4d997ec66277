"""What the learned local analysis costs per message, against baselines measured in the same run.

    python -m bench.analysis_bench [--repeat 3]

Rows, all on the dev split's texts (messages the model never trained on), one message per
call as the service predicts:

- `read_message`: the whole local analysis of the service (bounded excerpt, features,
  the sentiment, intent, urgency and automated models, substance extraction, injection
  guard), what a request pays before its first chunk.
- `classifier.predict`: the learned labels alone (compiled models, `TaskModel`).
- `scikit-learn predict_proba`: the same fitted models called through scikit-learn (what
  the compiled arithmetic replaces; identical probabilities, tested).
- `baseline TF-IDF + LR`: a plain word TF-IDF + logistic regression per task, the
  textbook baseline, trained here on the same corpus. It reads less (no character
  n-grams, no cues, uncalibrated) so it is a floor for cost, not a peer in quality.

Then a 20,000-character message (the largest excerpt the analysis reads), and the time to
train on the corpus against loading the cached model. Training and inference are
single-threaded; numbers vary with the machine's load, the ratios less so.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline

from chains.local import classifier as model
from chains.local.analysis import read_message
from chains.local.classifier import TASKS, _calibrated, corpus_paths, read_examples


def timings(call: Callable[[str, str], object], rows: Sequence[tuple[str, str]], repeat: int) -> list[float]:
    for text, channel in rows[:20]:  # warm caches and lazy imports
        call(text, channel)
    found: list[float] = []
    for _ in range(repeat):
        for text, channel in rows:
            started = time.perf_counter()
            call(text, channel)
            found.append((time.perf_counter() - started) * 1_000)
    return found


def row(name: str, ms: list[float], reference: float | None) -> str:
    p50, p95 = statistics.median(ms), float(np.percentile(ms, 95))
    ratio = f"{p50 / reference:5.1f}x" if reference else "    -"
    return f"| {name:<40} | {p50:7.2f} | {p95:7.2f} | {max(ms):7.2f} | {ratio} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    train = read_examples(corpus_paths())
    dev = [e.row for e in read_examples(corpus_paths(["dev.csv"]))]

    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        model.load_or_train(Path(cache))
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        model.configure(Path(cache))
        classifier = model.classifier()
        load_s = time.perf_counter() - started

        rows_train = [e.row for e in train]
        features = classifier.features.transform(rows_train)
        fitted = {task: _calibrated(spec.c).fit(features.for_text_model(spec), [e.labels[task] for e in train])
                  for task, spec in TASKS.items()}

        def sklearn_predict(text: str, channel: str) -> None:
            f = classifier.features.transform([(text, channel)])
            for task, spec in TASKS.items():
                fitted[task].predict_proba(f.for_text_model(spec))

        baselines: dict[str, Pipeline] = {
            task: make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                                LogisticRegression(max_iter=2_000)).fit(
                [e.row[0] for e in train], [e.labels[task] for e in train])
            for task in TASKS
        }

        def baseline_predict(text: str, channel: str) -> None:
            for pipeline in baselines.values():
                pipeline.predict_proba([text])

        measured = {
            "read_message (whole local analysis)": timings(read_message, dev, args.repeat),
            "classifier.predict (learned labels)": timings(classifier.predict, dev, args.repeat),
            "scikit-learn predict_proba (same model)": timings(sklearn_predict, dev, args.repeat),
            "baseline TF-IDF + LR predict_proba": timings(baseline_predict, dev, args.repeat),
        }
        reference = statistics.median(measured["baseline TF-IDF + LR predict_proba"])
        big = ("Our whole team cannot log in since this morning and orders are stuck. " * 300)[:20_000]
        measured["read_message, 20,000 characters"] = timings(read_message, [(big, "email")] * 20, args.repeat)

    print(f"{len(dev)} dev messages x {args.repeat}, one message per call, milliseconds; "
          "ratio = p50 / baseline p50\n")
    print(f"| {'path':<40} |     p50 |     p95 |     max | ratio |")
    print(f"|{'-' * 42}|---------|---------|---------|-------|")
    for name, ms in measured.items():
        print(row(name, ms, reference))
    print(f"\ntrain on {len(train)} messages: {train_s:.1f} s; load the cached model: {load_s * 1_000:.0f} ms")


if __name__ == "__main__":
    main()
