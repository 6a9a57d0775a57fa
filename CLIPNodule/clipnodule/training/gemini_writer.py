"""Radiology-report-like text written by Google Gemini from a nodule's semantic features (optional).

Sends only the feature table (never patient or nodule identifiers, paths or labels) with
the prompt of Zhuang et al., J Biomed Inform 2025, appendix A.2, through the `google-genai`
SDK. Responses are cached on disk, and requests are rate-limited and retried with
exponential back-off. Depends on google-genai (imported when a writer is built); no torch, Qt or Slicer.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import CLIPNoduleError, InputError
from .report_text import SemanticReport, feature_table, format_report

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "gemini-1.5-flash"
API_KEY_VARIABLES = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
RETRIED_STATUS_CODES = frozenset({429, 500, 502, 503, 504})

# The prompt of appendix A.2, word for word, with the feature dictionary in place of "{...}".
PROMPT_TEMPLATE = (
    "Think as if you are a radiologist, you have a table/dictionary for lung nodule evaluation, "
    "and you want to transform it into radiology reports. Here is the dictionary {features}. "
    "Just show me the report. Do not add any additional information. In English! "
    "You should have an impression and findings part. Findings are bullet points listing each of "
    "the features separately. These features should be in random order. Combine nodule margins and "
    "additional nodule margins. If there is a missing value, just ignore it. For impression, do a "
    "quick summary of the findings in sentence and then state the suspiciousness of lung cancer. "
    "You can mention the absences in the findings but do not mention those in the impression."
)

_OFFLINE_HINT = "The template writer (`--writer template`) works offline."


def _transport_error_types() -> tuple[type[BaseException], ...]:
    """Return the connection and timeout error classes of the HTTP libraries the SDK may use."""
    found: list[type[BaseException]] = []
    for module_name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found.append(module.TransportError)
    return tuple(found)


def build_prompt(features: Mapping[str, str]) -> str:
    """Return the prompt for one nodule's feature table ({report name: value})."""
    return PROMPT_TEMPLATE.format(features=json.dumps(dict(features), ensure_ascii=False))


_HEADER = re.compile(r"^[\s#*_]*(findings|impression)\b[\s*_]*:?[\s*_]*(.*)$", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")


def parse_report(text: str) -> SemanticReport:
    """Split a generated report into findings lines and impression; raise CLIPNoduleError when it has neither."""
    sections: dict[str, list[str]] = {"findings": [], "impression": []}
    current: str | None = None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(1).lower()
            rest = header.group(2).strip()
            if rest:
                sections[current].append(rest)
            continue
        if current is not None and line.strip():
            sections[current].append(line.strip())

    findings = [_BULLET.sub("", line).replace("**", "").strip() for line in sections["findings"]]
    findings = [line for line in findings if line]
    impression = " ".join(sections["impression"]).replace("**", "").strip()
    if not findings or not impression:
        preview = text[:200].replace("\n", " | ")
        raise CLIPNoduleError(
            f"The generated report lacks a 'Findings:' list or an 'Impression:' section: {preview!r}. "
            "Run the command again (the response was not cached), or use the template writer."
        )
    return SemanticReport(findings=findings, impression=impression, text=format_report(findings, impression))


class GeminiReportWriter:
    """Report writer that requests each report from a Gemini model, with a disk cache, rate limit and retries.

    The API key comes from `api_key` or the environment (GEMINI_API_KEY, then
    GOOGLE_API_KEY). It is passed to the SDK only and never logged. `base_url` replaces the
    Gemini endpoint (for a proxy or a test server). Each response is cached in `cache_dir`
    under the sha256 of the model, prompt template, temperature and feature table, so a
    rerun sends no request for a nodule already written. Requests start at most
    `requests_per_minute` per minute. HTTP 429 and 5xx responses and connection errors are
    retried up to `max_retries` times, waiting `initial_delay_s` * 2**attempt seconds
    (at most `max_delay_s`). Nothing falls back silently: a missing key, an unreachable
    service or an exhausted quota raises CLIPNoduleError.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        cache_dir: str | Path | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        requests_per_minute: float | None = 15.0,
        max_retries: int = 5,
        initial_delay_s: float = 2.0,
        max_delay_s: float = 60.0,
        timeout_s: float = 60.0,
        temperature: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        key = api_key or next((os.environ[name] for name in API_KEY_VARIABLES if os.environ.get(name)), None)
        if not key:
            raise InputError(
                "No Gemini API key: set GEMINI_API_KEY or GOOGLE_API_KEY, and make sure this machine can reach "
                f"the Gemini service. {_OFFLINE_HINT}"
            )
        if max_retries < 0:
            raise InputError(f"max_retries {max_retries!r} must be 0 or more.")
        if requests_per_minute is not None and requests_per_minute <= 0:
            raise InputError(f"requests_per_minute {requests_per_minute!r} must be positive, or None for no limit.")

        try:
            from google import genai
            from google.genai import errors as genai_errors
            from google.genai import types as genai_types
        except ImportError:
            raise InputError(f"The Gemini writer needs the google-genai package: pip install google-genai. {_OFFLINE_HINT}") from None

        self.model = model
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.base_url = base_url
        self.requests_per_minute = requests_per_minute
        self.max_retries = max_retries
        self.initial_delay_s = initial_delay_s
        self.max_delay_s = max_delay_s
        self.temperature = temperature
        self.request_count = 0
        self._sleep = sleep
        self._last_request_start: float | None = None
        self._secret = key
        self._api_error = genai_errors.APIError
        self._transport_errors = _transport_error_types()
        self._config = genai_types.GenerateContentConfig(temperature=temperature)

        # The SDK's own retries stay off (no retry_options) so that this class alone
        # counts, logs and bounds the attempts.
        http_options = genai_types.HttpOptions(base_url=base_url, timeout=int(timeout_s * 1000))
        self._client = genai.Client(api_key=key, http_options=http_options)

    def __repr__(self) -> str:
        return f"GeminiReportWriter(model={self.model!r}, cache_dir={str(self.cache_dir)!r})"

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "[API key]")

    def cache_key(self, features: Mapping[str, str]) -> str:
        """Return the sha256 hex digest that names the cached response of a feature table."""
        content = json.dumps(
            {"model": self.model, "prompt": PROMPT_TEMPLATE, "temperature": self.temperature, "features": dict(features)},
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(content.encode("utf-8")).hexdigest()

    def _read_cache(self, key: str) -> str | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{key}.json"
        if not path.is_file():
            return None
        try:
            return str(json.loads(path.read_text(encoding="utf-8"))["response_text"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("Ignoring unreadable Gemini cache file %s (%s); requesting the report again.", path, error)
            return None

    def _write_cache(self, key: str, features: Mapping[str, str], text: str) -> None:
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.cache_dir / f"{key}.json"
        partial = path.with_suffix(".json.partial")
        record = {"model": self.model, "features": dict(features), "response_text": text}
        partial.write_text(json.dumps(record, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(partial, path)

    def _wait_for_rate_limit(self) -> None:
        if self.requests_per_minute is None or self._last_request_start is None:
            return
        wait = self._last_request_start + 60.0 / self.requests_per_minute - time.monotonic()
        if wait > 0:
            self._sleep(wait)

    def _retry_delay(self, attempt: int) -> float:
        return min(self.max_delay_s, self.initial_delay_s * 2.0**attempt)

    def _request(self, prompt: str) -> str:
        """Send one prompt with rate limit and retries; return the answer text."""
        for attempt in range(self.max_retries + 1):
            self._wait_for_rate_limit()
            self._last_request_start = time.monotonic()
            self.request_count += 1
            try:
                response = self._client.models.generate_content(model=self.model, contents=prompt, config=self._config)
            except self._api_error as error:
                if error.code not in RETRIED_STATUS_CODES:
                    raise CLIPNoduleError(
                        f"The Gemini request for model {self.model!r} failed with HTTP {error.code} {error.status}: "
                        f"{self._redact(str(error.message))}. Check the API key and the model name. {_OFFLINE_HINT}"
                    ) from None
                reason = f"HTTP {error.code} {error.status}"
            except self._transport_errors as error:
                reason = f"{type(error).__name__}: {self._redact(str(error))}"
            else:
                text = response.text
                if not text:
                    raise CLIPNoduleError(f"The Gemini model {self.model!r} returned no text (the response may have been blocked by a safety filter); run the command again or use the template writer.")
                return text

            if attempt == self.max_retries:
                raise CLIPNoduleError(
                    f"The Gemini request failed after {attempt + 1} attempt(s); last error: {reason}. "
                    f"HTTP 429 means the quota or rate limit is exhausted; a connection error means the service "
                    f"({self.base_url or 'Gemini API'}) cannot be reached. {_OFFLINE_HINT}"
                )
            delay = self._retry_delay(attempt)
            logger.warning("Gemini request failed (%s), attempt %d of %d; retrying in %.1f s.", reason, attempt + 1, self.max_retries + 1, delay)
            self._sleep(delay)
        raise AssertionError("unreachable")

    def write(self, row: Mapping[str, Any]) -> SemanticReport:
        """Write the report of one nodule; only its semantic feature values are sent."""
        features = feature_table(row)
        key = self.cache_key(features)

        cached = self._read_cache(key)
        if cached is not None:
            return parse_report(cached)

        text = self._request(build_prompt(features))
        report = parse_report(text)
        self._write_cache(key, features, text)
        return report
