"""Tests of the Gemini report writer through the real google-genai SDK against a local fake server.

The Gemini service cannot be reached from the test machine, so a fake generateContent
endpoint (http.server on 127.0.0.1, in a thread) replaces it. The SDK is pointed at it
through its base URL option. Everything else (SDK, HTTP client, cache, retries) is real.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clipnodule.errors import CLIPNoduleError, InputError
from clipnodule.training.gemini_writer import GeminiReportWriter, build_prompt, parse_report

SECRET_KEY = "test-key-7f3a9c1e-do-not-log"

ROW = {
    "pid": "PATIENT-SECRET-0042",
    "nodule_id": "N-77",
    "image_path": "/hospital/ct/PATIENT-SECRET-0042.nii.gz",
    "malignant": 1,
    "longest_diameter_mm": 17.0,
    "margin": "spiculated",
    "consistency": "part-solid",
    "necrosis": "absent",
    "suspicion": "high",
    "shape": None,
}

ANSWER = (
    "**Findings:**\n\n"
    "* Nodule margins: Spiculated\n"
    "* Longest axial diameter (mm): 17.0\n"
    "* Nodule consistency: Part-solid\n"
    "* Necrosis: Absent\n\n"
    "**Impression:**\n\n"
    "A 17.0 mm part-solid nodule with spiculated margins is identified.\n"
    "The level of suspicion for lung cancer is high.\n"
)


class FakeGemini:
    """Local stand-in for the generateContent endpoint: replays queued (status, body) responses."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.answers: list[tuple[int, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length).decode("utf-8")
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, payload = fake.answers.pop(0) if fake.answers else (200, fake.ok(ANSWER))
                data = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @staticmethod
    def ok(text: str) -> dict:
        return {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP"}]}

    @staticmethod
    def error(code: int, status: str, message: str) -> dict:
        return {"error": {"code": code, "message": message, "status": status}}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_gemini():
    server = FakeGemini()
    yield server
    server.close()


@pytest.fixture
def no_key_environment(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)


def _writer(fake: FakeGemini, tmp_path, sleeps: list[float], **options) -> GeminiReportWriter:
    settings = {"requests_per_minute": None, "initial_delay_s": 0.5, "timeout_s": 10.0}
    settings.update(options)
    return GeminiReportWriter(
        model="gemini-test",
        cache_dir=tmp_path / "cache",
        api_key=SECRET_KEY,
        base_url=fake.url,
        sleep=sleeps.append,
        **settings,
    )


def test_request_contains_features_only(fake_gemini, tmp_path) -> None:
    report = _writer(fake_gemini, tmp_path, []).write(ROW)

    assert len(fake_gemini.requests) == 1
    request = fake_gemini.requests[0]
    assert request["path"].endswith("/models/gemini-test:generateContent")
    assert request["headers"]["x-goog-api-key"] == SECRET_KEY
    prompt = json.loads(request["body"])["contents"][0]["parts"][0]["text"]
    assert prompt.startswith("Think as if you are a radiologist")
    assert '"Nodule margins": "Spiculated"' in prompt
    assert '"Longest axial diameter (mm)": "17.0"' in prompt
    assert '"Necrosis": "Absent"' in prompt
    assert '"Level of suspicion for lung cancer": "High"' in prompt
    assert "Nodule shape" not in prompt
    for identifier in ("PATIENT-SECRET-0042", "N-77", "/hospital", "malignant"):
        assert identifier not in request["body"]

    assert report.findings == [
        "Nodule margins: Spiculated",
        "Longest axial diameter (mm): 17.0",
        "Nodule consistency: Part-solid",
        "Necrosis: Absent",
    ]
    assert report.impression == (
        "A 17.0 mm part-solid nodule with spiculated margins is identified. The level of suspicion for lung cancer is high."
    )
    assert report.text.startswith("Findings:\n- Nodule margins: Spiculated\n")


def test_cache_avoids_second_request(fake_gemini, tmp_path) -> None:
    first = _writer(fake_gemini, tmp_path, []).write(ROW)
    other_identifiers = dict(ROW, pid="OTHER", nodule_id="1", image_path="/x.nii.gz")
    second = _writer(fake_gemini, tmp_path, []).write(other_identifiers)

    assert len(fake_gemini.requests) == 1
    assert second == first
    cached = list((tmp_path / "cache").glob("*.json"))
    assert len(cached) == 1
    assert json.loads(cached[0].read_text(encoding="utf-8"))["response_text"] == ANSWER

    _writer(fake_gemini, tmp_path, []).write(dict(ROW, suspicion="intermediate"))
    assert len(fake_gemini.requests) == 2


def test_cache_key_depends_on_model_and_features(fake_gemini, tmp_path) -> None:
    writer = _writer(fake_gemini, tmp_path, [])
    features = {"Nodule shape": "Round"}

    assert len(writer.cache_key(features)) == 64
    assert writer.cache_key(features) == writer.cache_key(dict(features))
    assert writer.cache_key(features) != writer.cache_key({"Nodule shape": "Ovoid"})
    writer.model = "another-model"
    assert writer.cache_key(features) != _writer(fake_gemini, tmp_path, []).cache_key(features)


def test_retry_after_429(fake_gemini, tmp_path) -> None:
    fake_gemini.answers = [(429, FakeGemini.error(429, "RESOURCE_EXHAUSTED", "Quota exceeded."))]
    sleeps: list[float] = []
    report = _writer(fake_gemini, tmp_path, sleeps).write(ROW)

    assert len(fake_gemini.requests) == 2
    assert sleeps == [0.5]
    assert report.findings[0] == "Nodule margins: Spiculated"


def test_retry_back_off_is_exponential_and_bounded(fake_gemini, tmp_path) -> None:
    fake_gemini.answers = [(503, FakeGemini.error(503, "UNAVAILABLE", "Overloaded."))] * 4
    sleeps: list[float] = []
    writer = _writer(fake_gemini, tmp_path, sleeps, max_retries=3, initial_delay_s=1.0, max_delay_s=3.0)

    with pytest.raises(CLIPNoduleError, match=r"failed after 4 attempt\(s\); last error: HTTP 503 UNAVAILABLE"):
        writer.write(ROW)
    assert len(fake_gemini.requests) == 4
    assert sleeps == [1.0, 2.0, 3.0]
    assert not list((tmp_path / "cache").glob("*.json"))


def test_client_error_not_retried(fake_gemini, tmp_path) -> None:
    fake_gemini.answers = [(400, FakeGemini.error(400, "INVALID_ARGUMENT", "API key not valid."))]
    sleeps: list[float] = []

    with pytest.raises(CLIPNoduleError, match=r"HTTP 400 INVALID_ARGUMENT: API key not valid.*--writer template"):
        _writer(fake_gemini, tmp_path, sleeps).write(ROW)
    assert len(fake_gemini.requests) == 1
    assert sleeps == []


def test_rate_limit_spaces_requests(fake_gemini, tmp_path) -> None:
    sleeps: list[float] = []
    writer = _writer(fake_gemini, tmp_path, sleeps, requests_per_minute=60.0)
    writer.write(ROW)
    writer.write(dict(ROW, necrosis="present"))

    assert len(fake_gemini.requests) == 2
    assert len(sleeps) == 1
    assert 0.5 < sleeps[0] <= 1.0


def test_key_never_logged(fake_gemini, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    fake_gemini.answers = [
        (429, FakeGemini.error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.")),
        (500, FakeGemini.error(500, "INTERNAL", "Internal error.")),
    ]
    writer = _writer(fake_gemini, tmp_path, [])
    writer.write(ROW)

    assert len(fake_gemini.requests) == 3
    assert "retrying" in caplog.text
    assert SECRET_KEY not in caplog.text
    assert SECRET_KEY not in repr(writer)


def test_unreachable_service_raises(tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    writer = GeminiReportWriter(
        api_key=SECRET_KEY,
        base_url="http://127.0.0.1:9",
        cache_dir=tmp_path,
        max_retries=1,
        initial_delay_s=0.0,
        requests_per_minute=None,
        timeout_s=5.0,
    )

    with pytest.raises(CLIPNoduleError, match=r"failed after 2 attempt\(s\).*ConnectError.*cannot be reached.*--writer template"):
        writer.write(ROW)
    assert SECRET_KEY not in caplog.text


def test_missing_key_raises(no_key_environment, tmp_path) -> None:
    with pytest.raises(InputError, match=r"No Gemini API key: set GEMINI_API_KEY or GOOGLE_API_KEY.*--writer template"):
        GeminiReportWriter(cache_dir=tmp_path)


def test_key_from_environment(no_key_environment, monkeypatch, fake_gemini, tmp_path) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", SECRET_KEY)
    GeminiReportWriter(base_url=fake_gemini.url, cache_dir=tmp_path, requests_per_minute=None).write(ROW)

    assert fake_gemini.requests[0]["headers"]["x-goog-api-key"] == SECRET_KEY


def test_malformed_answer_not_cached(fake_gemini, tmp_path) -> None:
    fake_gemini.answers = [(200, FakeGemini.ok("I cannot help with that."))]

    with pytest.raises(CLIPNoduleError, match="lacks a 'Findings:' list or an 'Impression:' section"):
        _writer(fake_gemini, tmp_path, []).write(ROW)
    assert not list((tmp_path / "cache").glob("*.json"))


def test_parse_report_plain_layout() -> None:
    report = parse_report("Findings:\n- Necrosis: Absent\n- Nodule shape: Round\n\nImpression: A round nodule is identified.")

    assert report.findings == ["Necrosis: Absent", "Nodule shape: Round"]
    assert report.impression == "A round nodule is identified."


def test_prompt_fills_dictionary() -> None:
    prompt = build_prompt({"Nodule shape": "Round"})

    assert 'Here is the dictionary {"Nodule shape": "Round"}. Just show me the report.' in prompt
    assert prompt.endswith("do not mention those in the impression.")
