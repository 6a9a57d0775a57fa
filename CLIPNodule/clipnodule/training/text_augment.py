"""Training-time augmentation of the semantic report text: report part choice, synonyms and word crop.

Synonyms come from a radiology synonym table of this project, not from WordNet, so nothing
is downloaded; a random span of words is cut with nlpaug's RandomWordAug(action="crop").
Depends on nlpaug (no torch, Qt or Slicer).
"""

from __future__ import annotations

import logging
import random
import re

from ..errors import InputError
from .report_text import SemanticReport

logger = logging.getLogger(__name__)

# Interchangeable phrases for the words that the template report writer uses. Matching
# ignores case; a replacement is written as listed here.
RADIOLOGY_SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("nodule", "lesion", "pulmonary nodule"),
    ("is identified", "is seen", "is noted", "is present"),
    ("absent", "not seen", "not present", "none"),
    ("present", "seen", "identified"),
    ("well marginated", "well-defined", "well circumscribed", "sharply marginated"),
    # "ill-defined" is left out: it is a value of the margin feature, while "poorly
    # marginated" is a value of margin conspicuity, so swapping them would change the finding.
    ("poorly marginated", "poorly defined", "indistinct"),
    ("ovoid", "oval", "elliptical"),
    ("round", "spherical", "circular"),
    ("lobulated", "lobular"),
    ("spiculated", "spiculate", "with spiculation"),
    ("part-solid", "partly solid", "semi-solid", "mixed solid and ground-glass"),
    ("pure ground glass", "pure ground-glass", "non-solid"),
    ("margins", "borders", "edges"),
    ("longest axial diameter", "maximum axial diameter", "long-axis diameter"),
    ("cyst-like spaces", "cystic spaces", "cystic airspaces"),
    ("eccentric calcification", "eccentric calcium", "non-central calcification"),
    ("consistency", "attenuation", "density"),
)

REPORT_PARTS = ("findings", "impression")


def report_part(report: SemanticReport, part: str) -> tuple[str, str]:
    """Return (heading, body) of one part of a report: ('Findings', 'a; b.') or ('Impression', ...).

    A report without findings lines falls back to its impression.
    """
    if part not in REPORT_PARTS:
        raise InputError(f"Unknown report part {part!r}; use one of {', '.join(REPORT_PARTS)}.")
    if part == "findings" and report.findings:
        return "Findings", "; ".join(report.findings) + "."
    return "Impression", report.impression


def report_part_text(report: SemanticReport, part: str) -> str:
    """Return one part of a report as a single string: 'Findings: a; b.' or 'Impression: ...'."""
    heading, body = report_part(report, part)
    return f"{heading}: {body}"


class SynonymSubstitution:
    """Replace phrases of a synonym table by another phrase of the same group, at random.

    Each match of a table phrase (whole words, case ignored, longest phrase first) is
    replaced with probability `fraction` by a different phrase of its group, drawn with
    Python's `random` module. nlpaug's ReservedAug does the same job but its tokenizer
    splits hyphenated phrases and decimals apart, so this class does the matching itself.
    """

    def __init__(self, synonyms: tuple[tuple[str, ...], ...] = RADIOLOGY_SYNONYMS, fraction: float = 0.3) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise InputError(f"The synonym fraction must lie in [0, 1], got {fraction}.")
        self.fraction = fraction
        self.groups: dict[str, tuple[str, ...]] = {}
        for group in synonyms:
            for phrase in group:
                self.groups[phrase.lower()] = group
        alternatives = sorted(self.groups, key=len, reverse=True)
        escaped = "|".join(re.escape(phrase) for phrase in alternatives)
        self.pattern = re.compile(rf"(?<![\w-])({escaped})(?![\w-])", re.IGNORECASE)

    def __call__(self, text: str) -> str:
        return self.pattern.sub(self._replace, text)

    def _replace(self, match: re.Match[str]) -> str:
        found = match.group(0)
        if random.random() >= self.fraction:
            return found
        choices = [phrase for phrase in self.groups[found.lower()] if phrase != found.lower()]
        return random.choice(choices)


class ReportTextAugmenter:
    """Random text view of a report for one training step.

    Picks the findings part with `findings_probability`, else the impression. Then, each
    with its own probability, it replaces phrases from `synonyms` (`synonym_fraction` of
    the matches) and cuts one random span of about `crop_fraction` of the words (at least
    one, at most `max_crop_words`). Randomness comes from Python's `random` module, which
    PyTorch seeds in each DataLoader worker.
    """

    def __init__(
        self,
        findings_probability: float = 0.5,
        synonym_probability: float = 0.5,
        synonym_fraction: float = 0.3,
        crop_probability: float = 0.5,
        crop_fraction: float = 0.1,
        max_crop_words: int = 5,
        synonyms: tuple[tuple[str, ...], ...] = RADIOLOGY_SYNONYMS,
    ) -> None:
        import nlpaug.augmenter.word as naw

        for name, value in (
            ("findings_probability", findings_probability),
            ("synonym_probability", synonym_probability),
            ("synonym_fraction", synonym_fraction),
            ("crop_probability", crop_probability),
            ("crop_fraction", crop_fraction),
        ):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must lie in [0, 1], got {value}.")

        self.findings_probability = findings_probability
        self.synonym_probability = synonym_probability
        self.crop_probability = crop_probability
        self.synonym_substitution = SynonymSubstitution(synonyms, synonym_fraction)
        # Splitting on whitespace keeps decimals ("23.4") and hyphenated words whole, which
        # nlpaug's default tokenizer splits apart.
        self.crop_augmenter = naw.RandomWordAug(
            action="crop",
            aug_p=crop_fraction,
            aug_min=1,
            aug_max=max_crop_words,
            tokenizer=str.split,
            reverse_tokenizer=" ".join,
        )

    def __call__(self, report: SemanticReport) -> str:
        part = "findings" if random.random() < self.findings_probability else "impression"
        heading, body = report_part(report, part)

        # The heading is never changed, so the text always names the report part it comes from.
        if random.random() < self.synonym_probability:
            body = self.synonym_substitution(body)
        # Short texts are not cropped, because cutting a word from them can remove the only finding.
        if random.random() < self.crop_probability and len(body.split()) >= 8:
            body = _first(self.crop_augmenter.augment(body), body)
        return f"{heading}: {body}"


def _first(augmented: list[str] | str, fallback: str) -> str:
    # nlpaug 1.1 returns a list with one string per input text.
    if isinstance(augmented, str):
        return augmented or fallback
    return augmented[0] if augmented and augmented[0] else fallback
