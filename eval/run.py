"""Quality of the embedded models, on data they were not trained on.

    .venv/bin/python -m eval.run [--quick] [--write-readme]

Interaction models: per task accuracy, macro-F1, calibration error, per-class precision
and recall and the confusion matrix, on the dev split, in cross-validation, leaving one
writer out, and on the test sets (`eval.interactions`). Then lead scoring (`eval.scoring`:
cross-validated AUC, Brier and reliability of the shared priors, a tenant model's
learning curve) and the insights chat (`eval.chat`).
`--write-readme` replaces the table between the README's eval markers with this run's.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
from pathlib import Path

from eval.chat import SPLITS, evaluate_chat, print_chat_report
from eval.interactions import TaskReport, evaluate
from eval.scoring import learning_curve, print_scoring_report, prior_reports, scoring_rows

DATA = Path(__file__).parent / "data"
README = Path(__file__).resolve().parents[1] / "README.md"
TARGETS = {"sentiment": 0.85, "intent": 0.80, "urgency": 0.75}


def print_report(report: TaskReport) -> None:
    print(f"\n{report.task} — {report.where}: accuracy {report.accuracy:.3f}, macro-F1 {report.macro_f1:.3f}, "
          f"calibration error {report.ece:.3f}")
    width = max(len(c) for c in report.classes)
    print(f"  {'class':<{width}}  precision  recall  | confusion (rows: truth, columns: predicted)")
    for index, label in enumerate(report.classes):
        row = " ".join(f"{int(v):>4}" for v in report.confusion[index])
        print(f"  {label:<{width}}  {report.precision[index]:>9.3f}  {report.recall[index]:>6.3f}  | {row}")


def scoring_metrics() -> list[tuple[str, float, str]]:
    """Prints the priors' reliability tables and the tenant learning curve (`eval.scoring`)."""
    priors, curve = prior_reports(), learning_curve()
    print_scoring_report(priors, curve)
    return scoring_rows(priors, curve)


def chat_metrics() -> list[tuple[str, float, str]]:
    """The insights chat on every split, through the real chain (`eval.chat`); the
    README reports the test splits, which nothing was tuned on."""
    rows = []
    for split in SPLITS:
        report = asyncio.run(evaluate_chat(split))
        print_chat_report(report)
        if split.endswith("test"):
            rows += [(f"chat {name}", value, report.where) for name, value in report.metrics.items()]
    return rows


def summary_rows(reports: list[TaskReport]) -> list[tuple[str, float, str]]:
    rows = []
    for r in reports:
        if r.task == "automated" or not (r.where.startswith(("test", "leave", "dev"))):
            continue
        rows.append((f"{r.task} accuracy / macro-F1 / min recall", r.accuracy, f"{r.where}; F1 {r.macro_f1:.3f}; "
                     f"min class recall {r.min_recall:.2f}; calibration error {r.ece:.3f}"))
    return rows


def write_readme(rows: list[tuple[str, float, str]]) -> None:
    table = "| metric | value | data |\n|---|---|---|\n" + "\n".join(
        f"| {name} | {value:.3f} | {where} |" for name, value, where in rows)
    text = README.read_text()
    text, found = re.subn(r"(<!-- eval:start -->\n).*?(<!-- eval:end -->)",
                          lambda m: m.group(1) + table + "\n" + m.group(2), text, flags=re.DOTALL)
    if found != 1:
        raise SystemExit("README.md has no <!-- eval:start --> ... <!-- eval:end --> section to fill")
    README.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.run")
    parser.add_argument("--quick", action="store_true", help="dev and test only (no cross-validation)")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        reports = evaluate(Path(cache), quick=args.quick)
    for report in reports:
        print_report(report)
    rows = summary_rows(reports) + scoring_metrics() + chat_metrics()
    width = max(len(name) for name, _, _ in rows)
    print(f"\n{'metric':<{width}}  value  data")
    for name, value, where in rows:
        print(f"{name:<{width}}  {value:.3f}  {where}")
    misses = [f"{r.task} {r.accuracy:.3f} < {TARGETS[r.task]} on {r.where}" for r in reports
              if r.where.startswith("test") and r.task in TARGETS and r.accuracy < TARGETS[r.task]]
    print("\ntargets on the test sets:", "all met" if not misses else "; ".join(misses))
    if args.write_readme:
        write_readme(rows)


if __name__ == "__main__":
    main()
