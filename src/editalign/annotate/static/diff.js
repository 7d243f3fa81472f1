// Word-level diff for the live view: a small LCS over tokens (words, spaces, punctuation).
// Common prefix and suffix are trimmed first, so typical minimal edits cost almost
// nothing; a middle part larger than MAX_CELLS falls back to "all deleted, all added".
"use strict";
var EditDiff = (function () {
  var MAX_CELLS = 4000000;
  function tokens(text) { return text.match(/\s+|[\p{L}\p{N}_]+|[^\s\p{L}\p{N}_]/gu) || []; }
  function push(out, op, text) {
    if (!text) return;
    var last = out[out.length - 1];
    if (last && last[0] === op) last[1] += text; else out.push([op, text]);
  }
  function diff(a, b) {
    var x = tokens(a), y = tokens(b), out = [];
    var start = 0;
    while (start < x.length && start < y.length && x[start] === y[start]) start++;
    var endX = x.length, endY = y.length;
    while (endX > start && endY > start && x[endX - 1] === y[endY - 1]) { endX--; endY--; }
    push(out, "=", x.slice(0, start).join(""));
    var mx = x.slice(start, endX), my = y.slice(start, endY);
    var n = mx.length, m = my.length;
    if (n * m > MAX_CELLS) {
      push(out, "-", mx.join("")); push(out, "+", my.join(""));
    } else {
      // lcs[i][j] = LCS length of mx[i:] and my[j:], stored row-major in one array
      var w = m + 1, lcs = new Uint32Array((n + 1) * w);
      for (var i = n - 1; i >= 0; i--)
        for (var j = m - 1; j >= 0; j--)
          lcs[i * w + j] = mx[i] === my[j] ? lcs[(i + 1) * w + j + 1] + 1
                                            : Math.max(lcs[(i + 1) * w + j], lcs[i * w + j + 1]);
      i = 0; j = 0;
      while (i < n && j < m) {
        if (mx[i] === my[j]) { push(out, "=", mx[i]); i++; j++; }
        else if (lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) { push(out, "-", mx[i]); i++; }
        else { push(out, "+", my[j]); j++; }
      }
      for (; i < n; i++) push(out, "-", mx[i]);
      for (; j < m; j++) push(out, "+", my[j]);
    }
    push(out, "=", x.slice(endX).join(""));
    return out;
  }
  // Render into `node` with DOM nodes only (textContent), never HTML strings.
  function render(node, ops) {
    node.replaceChildren();
    ops.forEach(function (op) {
      var el = op[0] === "=" ? document.createElement("span")
             : document.createElement(op[0] === "-" ? "del" : "ins");
      el.textContent = op[1];
      node.appendChild(el);
    });
  }
  return { diff: diff, render: render, tokens: tokens };
})();
