"""Property-based fuzzing of the input paths of `label` (JSONL, CSV, JSON), `revise` and the
`annotate` API.

The contract for every generated input: either success, or a clear error (exit 2 from the
CLI, a message naming the file and the row or field; a 400 naming the field from the API),
and nothing half-written (no output directory or file left behind on an error). Rows have
wrong types, missing and extra fields, odd Unicode (unpaired surrogates, NUL, RTL marks,
combining characters), huge numbers and long text. Bounded (``max_examples``) so the file
runs in well under a minute.
"""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from editalign.annotate.server import AnnotateServer
from editalign.annotate.store import AnnotationStore, Conflict, Invalid
from editalign.cli import main
from editalign.data.pairs import EditPair

FUZZ = settings(max_examples=20, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

# Text that breaks naive code: unpaired surrogates (valid in JSON, not in UTF-8), NUL,
# bidi controls, combining marks, astral characters, and long runs.
ODD = ["\ud800", "\udfff", "\x00", "\u202e", "e\u0301", "\U0001f600", "\ufeff", "\r\n",
       "\u2028", "</script>", "{{response}}"]
odd_text = st.one_of(
    st.lists(st.sampled_from(ODD) | st.text(max_size=5), max_size=8).map("".join),
    st.text(max_size=40),
    st.sampled_from(["", " ", "x" * 20_000]),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), odd_text)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=8)
good_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]),
                    min_size=1, max_size=30).filter(str.strip)


@st.composite
def broken_rows(draw):
    """A row near the default layout: each field may be right, wrong-typed or missing."""
    row = {}
    for name in ("prompt", "original", "revised", "id", "meta"):
        kind = draw(st.sampled_from(["good", "odd", "wrong", "missing"]))
        if kind == "good":
            row[name] = ({"source": "fuzz"} if name == "meta" else draw(good_text))
        elif kind == "odd":
            row[name] = draw(odd_text)
        elif kind == "wrong":
            row[name] = draw(json_values)
    row.update(draw(st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=2)))
    return row


# Rows of the right shape with odd text, so that the generated files reach the tokenizer,
# the writer and the HTTP request, not only the type checks.
well_typed_rows = st.fixed_dictionaries(
    {"prompt": odd_text | good_text, "original": odd_text | good_text,
     "revised": odd_text | good_text},
    optional={"id": st.integers(-(10**30), 10**30) | odd_text,
              "meta": st.dictionaries(odd_text, json_values, max_size=2),
              "extra": json_values})
pair_rows = st.one_of(well_typed_rows, well_typed_rows, broken_rows())


def _write_jsonl(path: Path, rows) -> None:
    # ensure_ascii keeps unpaired surrogates as \ud800 escapes: valid JSON, as real files have
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _check_contract(rc: int, err: str, data: Path, outputs: list[Path]) -> None:
    if rc == 0:
        return
    assert rc == 2, err
    message = err.strip().splitlines()[-1]
    assert f"error: {data}" in message, message  # names the file ...
    assert ("row " in message or "no usable pair" in message), message  # ... and the row
    for path in outputs:
        assert not path.exists(), f"{path} left behind after an error"


# --------------------------------------------------------------------------- label


@FUZZ
@given(rows=st.lists(pair_rows, min_size=1, max_size=4))
def test_label_succeeds_or_names_the_row_and_writes_nothing(tmp_path_factory, rows, capsys):
    tmp = tmp_path_factory.mktemp("label")
    data, out = tmp / "rows.jsonl", tmp / "labels"
    _write_jsonl(data, rows)
    rc = main(["label", "--data", str(data), "--preset", "default", "--model", "tiny",
               "--max-length", "64", "--out", str(out), "--preview-pairs", "2"])
    err = capsys.readouterr().err
    _check_contract(rc, err, data, [out])
    if rc == 0:
        stats = json.loads((out / "stats.json").read_text())
        assert stats["labels"]["kept"] >= 1
    assert [p.name for p in tmp.iterdir()] in (["rows.jsonl"], ["rows.jsonl", "labels"],
                                              ["labels", "rows.jsonl"])  # no temp dir left


# --------------------------------------------------------------------------- revise


@contextlib.contextmanager
def _reviser_server():
    """An OpenAI-compatible endpoint on 127.0.0.1 that answers every request the same way."""
    body = json.dumps({"choices": [{"message": {"content": "A fixed, revised answer."},
                                    "finish_reason": "stop"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def reviser_endpoint():
    with _reviser_server() as base:
        yield base


@FUZZ
@given(rows=st.lists(pair_rows, min_size=1, max_size=4))
def test_revise_succeeds_or_names_the_row_and_writes_nothing(tmp_path_factory, rows, capsys,
                                                             reviser_endpoint):
    tmp = tmp_path_factory.mktemp("revise")
    data, out = tmp / "rows.jsonl", tmp / "out.jsonl"
    _write_jsonl(data, rows)
    rc = main(["revise", "--data", str(data), "--preset", "default", "--api-base",
               reviser_endpoint, "--model", "m", "--out", str(out), "--cache",
               str(tmp / "cache.sqlite"), "--max-edit-ratio", "1", "--no-progress"])
    err = capsys.readouterr().err
    _check_contract(rc, err, data, [out, tmp / "out.dropped.jsonl"])
    if rc == 0:
        kept = [json.loads(line) for line in out.read_text().splitlines()]
        assert all(p["revised"] == "A fixed, revised answer." for p in kept)


# --------------------------------------------------------------------------- annotate


@pytest.fixture(scope="module")
def annotate_server(tmp_path_factory):
    store = AnnotationStore(tmp_path_factory.mktemp("annotate") / "fuzz.sqlite")
    store.import_pairs([EditPair("Question?", "The answer is Berlin.", "The answer is Berlin.",
                                 "q0")])
    server = AnnotateServer(store, "127.0.0.1", 0, read_timeout=5)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


spans = st.one_of(json_values, st.lists(st.one_of(json_values, st.fixed_dictionaries(
    {"start": st.integers(-2, 30), "end": st.integers(-2, 30)},
    optional={"type": st.sampled_from(["error", "factual", "bogus"]) | json_values,
              "explanation": odd_text | json_values})), max_size=3))


@st.composite
def save_bodies(draw):
    body = {}
    for name, good in (("annotator", st.sampled_from(["ann", "a.b@c", "x y"])),
                       ("revised", odd_text), ("spans", spans),
                       ("version", st.integers(0, 3))):
        kind = draw(st.sampled_from(["good", "good", "wrong", "missing"]))
        if kind == "good":
            body[name] = draw(good)
        elif kind == "wrong":
            body[name] = draw(json_values | odd_text)
    body.update(draw(st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=2)))
    return draw(st.one_of(st.just(body), st.just(body), json_values))


@settings(FUZZ, max_examples=40)
@given(body=save_bodies())
def test_annotate_api_answers_every_body_with_200_400_or_409(annotate_server, body):
    server, base = annotate_server
    reply = httpx.post(f"{base}/api/items/0", content=json.dumps(body).encode(), timeout=30,
                       headers={"content-type": "application/json"})
    assert reply.status_code in (200, 400, 409), reply.text
    if reply.status_code == 400:
        error = reply.json()["error"]
        assert "field '" in error or error in ("expected a JSON object",), error
    if reply.status_code == 200:  # what was accepted reads back and exports
        stored = server.store.annotation("q0", body["annotator"])
        assert stored["version"] == reply.json()["version"]
        assert httpx.get(f"{base}/api/items/0", params={"annotator": body["annotator"]},
                         timeout=30).status_code == 200
        assert server.store.export_pairs()
    assert httpx.get(f"{base}/api/info", timeout=30).status_code == 200


@settings(FUZZ, max_examples=40)
@given(annotator=json_values, revised=json_values | odd_text, spans=spans,
       version=json_values)
def test_annotation_store_save_validates_any_value(tmp_path_factory, annotator, revised,
                                                   spans, version):
    store = AnnotationStore(tmp_path_factory.mktemp("store") / "s.sqlite")
    store.import_pairs([EditPair("Q?", "Berlin.", "Berlin.", "q0")])
    with contextlib.suppress(Invalid, Conflict):
        assert store.save(0, annotator, revised, spans, version) == 1
        assert store.export_pairs()[0].revised == revised


# --------------------------------------------------------------------------- other formats

# CSV cells are text: no unpaired surrogates (a UTF-8 file cannot hold them).
csv_text = st.one_of(good_text, st.text(alphabet=st.characters(exclude_categories=["Cs"]),
                                        max_size=30),
                     st.sampled_from(["", " ", '"', "a,b", "line\nbreak", "x" * 5_000]))


@FUZZ
@given(rows=st.lists(st.dictionaries(st.sampled_from(["prompt", "original", "revised", "id",
                                                      "other"]), csv_text, max_size=5),
                     min_size=1, max_size=4),
       header=st.sampled_from(["union", "fixed", "none"]))
def test_label_csv_succeeds_or_names_the_row_and_writes_nothing(tmp_path_factory, rows, header,
                                                                capsys):
    import csv

    tmp = tmp_path_factory.mktemp("label-csv")
    data, out = tmp / "rows.csv", tmp / "labels"
    columns = (sorted({k for r in rows for k in r}) or ["prompt"]) if header == "union" \
        else ["prompt", "original", "revised"]
    with data.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if header != "none":
            writer.writeheader()
        writer.writerows(rows)
    rc = main(["label", "--data", str(data), "--preset", "default", "--model", "tiny",
               "--max-length", "64", "--out", str(out), "--preview-pairs", "2"])
    err = capsys.readouterr().err
    if rc != 0:
        assert rc == 2, err
        message = err.strip().splitlines()[-1]
        assert f"error: {data}" in message, message  # names the file
        assert not out.exists()


@FUZZ
@given(rows=st.lists(pair_rows, min_size=1, max_size=4), wrap=st.booleans())
def test_label_json_array_succeeds_or_names_the_row_and_writes_nothing(tmp_path_factory, rows,
                                                                       wrap, capsys):
    tmp = tmp_path_factory.mktemp("label-json")
    data, out = tmp / "rows.json", tmp / "labels"
    data.write_text(json.dumps({"data": rows} if wrap else rows), encoding="utf-8")
    rc = main(["label", "--data", str(data), "--preset", "default", "--model", "tiny",
               "--max-length", "64", "--out", str(out), "--preview-pairs", "2"])
    err = capsys.readouterr().err
    _check_contract(rc, err, data, [out])
