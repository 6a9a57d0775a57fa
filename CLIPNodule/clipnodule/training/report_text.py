"""Radiology-report-like text from a nodule's semantic features, written offline by a template.

The text has a "Findings:" bullet list (one feature per line, in a seeded random order,
absences included) and an "Impression:" summary of the present findings and the level of
suspicion. The style follows the Gemini-written example report of Zhuang et al., J Biomed
Inform 2025, appendix A.2. Depends on pandas and tqdm only (no torch, Qt or Slicer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

import pandas as pd
from tqdm import tqdm

from ..errors import InputError
from .semantic_features import (
    FEATURES,
    FEATURES_BY_NAME,
    PRESENT,
    FeatureGroup,
    FeatureKind,
    FeatureSpec,
    normalize_feature_value,
    split_multi_value,
)

logger = logging.getLogger(__name__)

NO_FINDINGS_LINE = "No semantic features recorded."

# Adjective used in the impression where the canonical value is a noun.
_IMPRESSION_CONSISTENCY = {"semi-consolidation": "semi-consolidated", "pure ground glass": "pure ground-glass"}

# Impression wording of features whose report name reads oddly inside a sentence.
_IMPRESSION_NAMES = {"reticulation": "reticulation"}


@dataclass(frozen=True)
class SemanticReport:
    """Report text of one nodule: findings lines (without bullets), impression and full text."""

    findings: list[str]
    impression: str
    text: str


class ReportWriter(Protocol):
    """Anything that turns a row of semantic features into a SemanticReport."""

    def write(self, row: Mapping[str, Any]) -> SemanticReport: ...


def feature_values(row: Mapping[str, Any]) -> dict[str, Any]:
    """Return the known semantic features of `row` in canonical form, in FEATURES order.

    Keys that are not semantic features (pid, nodule_id, paths, labels) are ignored, and
    missing values are left out. Raises InputError for an invalid value.
    """
    values: dict[str, Any] = {}
    for spec in FEATURES:
        if spec.name not in row:
            continue
        value = normalize_feature_value(spec, row[spec.name])
        if value is not None:
            values[spec.name] = value
    return values


def display_value(spec: FeatureSpec, value: Any) -> str:
    """Format a canonical value as it appears in a findings line ('Part-solid', '17.0')."""
    if spec.kind is FeatureKind.NUMERIC:
        return f"{float(value):.1f}"
    if spec.kind is FeatureKind.MULTI:
        return ", ".join(part.capitalize() for part in split_multi_value(value))
    return str(value).capitalize()


def feature_table(row: Mapping[str, Any]) -> dict[str, str]:
    """Return {report name: display value} of the known features of `row`, identifiers excluded."""
    return {FEATURES_BY_NAME[name].display_name: display_value(FEATURES_BY_NAME[name], value) for name, value in feature_values(row).items()}


def _join_words(words: list[str]) -> str:
    if len(words) <= 2:
        return " and ".join(words)
    return ", ".join(words[:-1]) + ", and " + words[-1]


def _indefinite_article(phrase: str) -> str:
    first = phrase.split()[0]
    number = re.match(r"\d+", first)
    if number:
        # Spoken numbers that start with a vowel sound: eight, eleven, eighteen, eighty...
        integer = number.group(0)
        return "An" if integer.startswith("8") or integer in ("11", "18") else "A"
    return "An" if first[0].lower() in "aeiou" else "A"


def _size_phrase(values: Mapping[str, Any]) -> str | None:
    longest = values.get("longest_diameter_mm")
    short = values.get("short_diameter_mm")
    if longest is not None and short is not None:
        return f"{longest:.1f} × {short:.1f} mm"
    if longest is not None:
        return f"{longest:.1f} mm"
    return None


def _first_sentence(values: Mapping[str, Any]) -> str:
    descriptors = []
    size = _size_phrase(values)
    if size:
        descriptors.append(size)
    if "consistency" in values:
        descriptors.append(_IMPRESSION_CONSISTENCY.get(values["consistency"], values["consistency"]))
    if "shape" in values:
        descriptors.append(values["shape"])

    noun = "nodule"
    if "longest_diameter_mm" not in values and "short_diameter_mm" in values:
        noun = f"nodule with a short diameter of {values['short_diameter_mm']:.1f} mm"
    if not descriptors:
        return f"A {noun} is identified."
    phrase = ", ".join(descriptors)
    return f"{_indefinite_article(phrase)} {phrase} {noun} is identified."


def _margin_sentence(values: Mapping[str, Any]) -> str | None:
    margins = split_multi_value(values.get("margin"))
    conspicuity = values.get("margin_conspicuity")
    if conspicuity and margins:
        return f"It is {conspicuity} with {_join_words(margins)} margins."
    if conspicuity:
        return f"It is {conspicuity}."
    if margins:
        return f"It has {_join_words(margins)} margins."
    return None


def _present_features(values: Mapping[str, Any], group: FeatureGroup) -> list[str]:
    names = []
    for name, value in values.items():
        spec = FEATURES_BY_NAME[name]
        if spec.group is group and spec.kind is FeatureKind.BINARY and value == PRESENT:
            names.append(_IMPRESSION_NAMES.get(name, spec.display_name.lower()))
    return names


def impression_text(values: Mapping[str, Any]) -> str:
    """Summarise the present findings and the suspicion level; absences are not mentioned."""
    sentences = [_first_sentence(values)]

    margin = _margin_sentence(values)
    if margin:
        sentences.append(margin)

    internal = _present_features(values, FeatureGroup.INTERNAL)
    if internal:
        sentences.append(f"It shows {_join_words(internal)}.")

    external = _present_features(values, FeatureGroup.EXTERNAL)
    if external:
        sentences.append(f"It is associated with {_join_words(external)}.")

    if "suspicion" in values:
        sentences.append(f"The level of suspicion for lung cancer is {values['suspicion']}.")
    return " ".join(sentences)


def format_report(findings: list[str], impression: str) -> str:
    """Join findings lines and the impression into the report text."""
    body = "\n".join(f"- {line}" for line in findings) if findings else NO_FINDINGS_LINE
    return f"Findings:\n{body}\n\nImpression:\n{impression}"


class TemplateReportWriter:
    """Deterministic offline report writer: the same features and seed give the same text.

    The findings order is shuffled by a generator seeded from `seed` and the row's feature
    content, so two nodules with the same features get the same order for one seed. The
    level of suspicion appears in the impression only, as in the appendix A.2 example report.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def _generator(self, values: Mapping[str, Any]) -> random.Random:
        content = json.dumps({"seed": self.seed, "features": values}, sort_keys=True)
        digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
        return random.Random(int(digest[:16], 16))

    def write(self, row: Mapping[str, Any]) -> SemanticReport:
        """Write the report of one nodule from its semantic feature values."""
        values = feature_values(row)
        findings = [
            f"{FEATURES_BY_NAME[name].display_name}: {display_value(FEATURES_BY_NAME[name], value)}"
            for name, value in values.items()
            if FEATURES_BY_NAME[name].group is not FeatureGroup.ASSESSMENT
        ]
        self._generator(values).shuffle(findings)
        impression = impression_text(values)
        return SemanticReport(findings=findings, impression=impression, text=format_report(findings, impression))


def report_file_name(pid: Any, nodule_id: Any) -> str:
    """Return '<pid>_<nodule_id>.txt' with characters unsafe in file names replaced by '_'."""
    stem = f"{pid}_{nodule_id}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) + ".txt"


def write_reports(table: pd.DataFrame, writer: ReportWriter, output_dir: str | Path) -> pd.DataFrame:
    """Write one text file per nodule and `reports.csv`; return the reports table.

    `table` needs `pid` and `nodule_id` columns. The files are `<pid>_<nodule_id>.txt` in
    `output_dir`; `reports.csv` has the columns pid, nodule_id, findings (lines joined by
    newlines), impression and text.
    """
    missing = [column for column in ("pid", "nodule_id") if column not in table.columns]
    if missing:
        raise InputError(f"The nodule table lacks the column(s) {', '.join(missing)} needed to name the report files.")

    output = Path(output_dir).expanduser()
    output.mkdir(parents=True, exist_ok=True)

    names: dict[str, tuple[Any, Any]] = {}
    records: list[dict[str, Any]] = []
    for row in tqdm(table.to_dict(orient="records"), desc="Writing reports", unit="nodule"):
        name = report_file_name(row["pid"], row["nodule_id"])
        if name in names:
            raise InputError(
                f"Nodules {names[name]} and {(row['pid'], row['nodule_id'])} map to the same report file {name}; "
                "make (pid, nodule_id) unique."
            )
        names[name] = (row["pid"], row["nodule_id"])

        report = writer.write(row)
        (output / name).write_text(report.text + "\n", encoding="utf-8")
        records.append(
            {
                "pid": row["pid"],
                "nodule_id": row["nodule_id"],
                "findings": "\n".join(report.findings),
                "impression": report.impression,
                "text": report.text,
            }
        )

    reports = pd.DataFrame(records, columns=["pid", "nodule_id", "findings", "impression", "text"])
    reports.to_csv(output / "reports.csv", index=False)
    logger.info("Wrote %d reports to %s.", len(reports), output)
    return reports
