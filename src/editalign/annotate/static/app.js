// editalign annotate: load an item, edit it with a live diff, mark error spans, save.
// Every piece of data goes into the page through .value or .textContent, never as HTML.
"use strict";
(function () {
  var $ = function (id) { return document.getElementById(id); };
  var params = new URLSearchParams(location.search);
  if (params.get("token")) sessionStorage.setItem("editalign-token", params.get("token"));
  var token = sessionStorage.getItem("editalign-token") || "";
  var state = { position: 0, count: 0, item: null, version: 0, spans: [], saved: "" };

  function headers(extra) {
    var h = Object.assign({}, extra || {});
    if (token) h["X-Token"] = token;
    return h;
  }
  function status(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "";
  }
  function annotator() { return $("annotator").value.trim(); }
  function dirty() {
    return state.item !== null && ($("editor").value !== state.saved ||
                                   JSON.stringify(state.spans) !== state.savedSpans);
  }
  function refresh() {
    EditDiff.render($("diff"), EditDiff.diff(state.item ? state.item.original : "",
                                             $("editor").value));
    $("dirty").textContent = dirty() ? "unsaved changes" : "";
  }
  function renderSpans() {
    var list = $("spans");
    list.replaceChildren();
    state.spans.forEach(function (span, index) {
      var li = document.createElement("li");
      var text = document.createElement("span");
      text.className = "span-text";
      text.textContent = state.item.original.slice(span.start, span.end);
      var label = document.createElement("span");
      label.textContent = " [" + span.type + "] " + span.start + "–" + span.end + " ";
      var remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "remove";
      remove.addEventListener("click", function () {
        state.spans.splice(index, 1); renderSpans(); refresh();
      });
      li.append(text, label, remove);
      list.appendChild(li);
    });
  }
  function showPrompt(prompt) {
    if (typeof prompt === "string") { $("prompt").textContent = prompt; return; }
    $("prompt").textContent = prompt.map(function (m) {
      return m.role + ": " + m.content;
    }).join("\n\n");
  }
  async function api(method, path, body) {
    var init = { method: method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
    if (body) init.body = JSON.stringify(body);
    var response = await fetch(path, init);
    var data = await response.json().catch(function () { return {}; });
    return { status: response.status, data: data };
  }
  async function load(position) {
    if (dirty() && !confirm("Discard unsaved changes?")) return;
    var who = annotator();
    var r = await api("GET", "/api/items/" + position + "?annotator=" + encodeURIComponent(who));
    if (r.status !== 200) { status(r.data.error || ("error " + r.status), true); return; }
    var item = r.data;
    state.item = item; state.position = item.position; state.count = item.count;
    var a = item.annotation;
    state.version = a ? a.version : 0;
    state.saved = a ? a.revised : item.original;
    state.spans = a ? a.spans.slice() : [];
    state.savedSpans = JSON.stringify(state.spans);
    showPrompt(item.prompt);
    $("original").value = item.original;
    $("other").textContent = item.revised;
    $("other-wrap").hidden = item.revised === item.original;
    $("editor").value = state.saved;
    $("position").textContent = (item.position + 1) + " / " + item.count + "  (" + item.id + ")";
    $("prev").disabled = item.position <= 0;
    $("next").disabled = item.position >= item.count - 1;
    history.replaceState(null, "", "#" + item.position);
    renderSpans(); refresh();
    status(a ? "loaded your saved version " + a.version : (who ? "not annotated yet" :
           "enter your name to save"));
  }
  async function save() {
    var who = annotator();
    if (!who) { status("enter your name first", true); $("annotator").focus(); return; }
    var r = await api("POST", "/api/items/" + state.position, {
      annotator: who, revised: $("editor").value, spans: state.spans, version: state.version });
    if (r.status === 200) {
      state.version = r.data.version; state.saved = $("editor").value;
      state.savedSpans = JSON.stringify(state.spans);
      status("saved (version " + state.version + ")"); refresh();
    } else if (r.status === 409) {
      status("not saved: a newer version " + (r.data.current.version || "") +
             " was saved elsewhere (another tab?); copy your text, then reload", true);
    } else {
      status("not saved: " + (r.data.error || ("error " + r.status)), true);
    }
  }
  function mark() {
    var box = $("original"), start = box.selectionStart, end = box.selectionEnd;
    if (start === end) { status("select part of the original first", true); return; }
    state.spans.push({ start: start, end: end, type: $("span-type").value, explanation: "" });
    state.spans.sort(function (a, b) { return a.start - b.start || a.end - b.end; });
    renderSpans(); refresh();
  }
  async function exportAll() {
    var r = await api("POST", "/api/export", {});
    if (r.status === 200) status("exported " + r.data.count + " pairs to " + r.data.path);
    else status(r.data.error || ("error " + r.status), true);
  }

  $("annotator").value = localStorage.getItem("editalign-annotator") || "";
  $("annotator").addEventListener("change", function () {
    localStorage.setItem("editalign-annotator", annotator());
    load(state.position);
  });
  $("editor").addEventListener("input", refresh);
  $("save").addEventListener("click", save);
  $("reset").addEventListener("click", function () {
    $("editor").value = state.item.original; refresh();
  });
  $("mark").addEventListener("click", mark);
  $("prev").addEventListener("click", function () { load(state.position - 1); });
  $("next").addEventListener("click", function () { load(state.position + 1); });
  $("export").addEventListener("click", exportAll);
  $("download").addEventListener("click", function (event) {
    if (!token) return;  // the plain link works without a token
    event.preventDefault();
    fetch("/api/export.jsonl", { headers: headers() }).then(function (r) { return r.blob(); })
      .then(function (blob) {
        var a = document.createElement("a");
        a.href = URL.createObjectURL(blob); a.download = "edits.jsonl"; a.click();
      });
  });
  document.addEventListener("keydown", function (event) {
    if ((event.ctrlKey || event.metaKey) && event.key === "s") { event.preventDefault(); save(); }
    if (event.altKey && event.key === "ArrowLeft" && !$("prev").disabled) load(state.position - 1);
    if (event.altKey && event.key === "ArrowRight" && !$("next").disabled) load(state.position + 1);
  });
  window.addEventListener("beforeunload", function (event) {
    if (dirty()) { event.preventDefault(); event.returnValue = ""; }
  });
  load(parseInt(location.hash.slice(1), 10) || 0);
})();
