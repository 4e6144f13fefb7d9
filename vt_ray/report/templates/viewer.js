// The rollout viewer: draws one card per response from the JSON the report embeds, and filters them.
// Plain DOM code, no framework: the page must open from a file with no network. Model output is only ever
// inserted with textContent, never as HTML.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("viewer-data").textContent);
  var root = document.getElementById("rollouts");
  var cards = [];

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function num(x, digits) {
    return (typeof x === "number") ? x.toFixed(digits === undefined ? 3 : digits) : "-";
  }
  function badge(text, kind) { return el("span", "badge" + (kind ? " " + kind : ""), text); }

  function timeline(group, response) {
    var box = el("div", "timeline");
    var duration = group.duration || 0;
    var spans = [].concat(group.gold_windows, response.windows);
    spans.forEach(function (w) { if (w[1] > duration) duration = w[1]; });
    if (!(duration > 0)) duration = 1;
    function track(label, windows, cls) {
      var t = el("div", "track");
      t.appendChild(el("span", "label", label));
      group.frame_times.forEach(function (s) {
        var tick = el("div", "tick");
        tick.style.left = (100 * s / duration) + "%";
        t.appendChild(tick);
      });
      windows.forEach(function (w) {
        var win = el("div", "win " + cls);
        win.style.left = (100 * w[0] / duration) + "%";
        win.style.width = (100 * Math.max(w[1] - w[0], 0) / duration) + "%";
        win.title = cls + " window " + num(w[0], 1) + "-" + num(w[1], 1) + " s";
        win.dataset.start = w[0];
        win.dataset.end = w[1];
        t.appendChild(win);
      });
      return t;
    }
    box.appendChild(track("gold", group.gold_windows, "gold"));
    box.appendChild(track("predicted", response.windows, "pred"));
    var axis = el("div", "axis");
    axis.appendChild(el("span", null, "0 s"));
    axis.appendChild(el("span", null, num(duration, 1) + " s"));
    box.appendChild(axis);
    return box;
  }

  function strip(group) {
    var frames = group.frames_key ? data.frames[group.frames_key] : null;
    if (!frames || !frames.length) {
      return el("div", "noframes", "No frames: " + (group.frames_problem || "video unreadable"));
    }
    var box = el("div", "strip");
    frames.forEach(function (uri, i) {
      var fig = el("figure");
      var img = el("img");
      img.src = uri;
      img.alt = "frame " + (group.frame_indices[i] !== undefined ? group.frame_indices[i] : i);
      fig.appendChild(img);
      var t = group.frame_times[i];
      fig.appendChild(el("figcaption", null, (typeof t === "number") ? t.toFixed(1) + " s" : "#" + i));
      box.appendChild(fig);
    });
    return box;
  }

  function rewardTable(response) {
    var table = el("table", "grid parts");
    var head = el("tr");
    head.appendChild(el("th", null, "reward part"));
    head.appendChild(el("th", null, "value"));
    table.appendChild(head);
    Object.keys(response.reward).forEach(function (k) {
      var tr = el("tr");
      tr.appendChild(el("td", null, k));
      tr.appendChild(el("td", null, num(response.reward[k])));
      table.appendChild(tr);
    });
    return table;
  }

  function siblingTable(group, current) {
    var table = el("table", "grid siblings");
    var head = el("tr");
    ["#", "total", "advantage", "answer", "format", "windows"].forEach(function (h) { head.appendChild(el("th", null, h)); });
    table.appendChild(head);
    group.responses.forEach(function (r, j) {
      var tr = el("tr", j === current ? "current" : null);
      tr.appendChild(el("td", null, j + 1));
      tr.appendChild(el("td", null, num(r.reward.total !== undefined ? r.reward.total : r.reward.correct)));
      tr.appendChild(el("td", null, num(r.advantage)));
      tr.appendChild(el("td", null, r.answer === null ? "(none)" : r.answer));
      tr.appendChild(el("td", null, r.format_valid ? "valid" : "invalid"));
      tr.appendChild(el("td", null, r.windows.length));
      table.appendChild(tr);
    });
    return table;
  }

  function card(group, response, j) {
    var c = el("article", "rollout");
    c.dataset.source = group.source;
    c.dataset.step = group.step === null ? "" : String(group.step);
    c.dataset.correct = response.correct ? "1" : "0";
    c.dataset.format = response.format_valid ? "1" : "0";
    c.dataset.group = String(group.id);
    var head = el("div", "head");
    head.appendChild(el("strong", null, group.step === null ? group.source : group.source + " · step " + group.step));
    head.appendChild(el("span", null, group.uid + " · response " + (j + 1) + "/" + group.responses.length));
    head.appendChild(badge(response.correct ? "correct" : "wrong", response.correct ? "ok" : "bad"));
    head.appendChild(badge(response.format_valid ? "format valid" : "format invalid", response.format_valid ? "ok" : "warn"));
    if (response.reward.total !== undefined) head.appendChild(badge("reward " + num(response.reward.total)));
    if (response.advantage !== null) head.appendChild(badge("advantage " + num(response.advantage)));
    if (response.truncated) head.appendChild(badge("truncated", "warn"));
    response.violations.forEach(function (v) { head.appendChild(badge(v, "warn")); });
    c.appendChild(head);
    var q = el("div", "question");
    q.appendChild(el("div", null, "Q: " + group.question));
    if (group.options.length) {
      q.appendChild(el("div", "opts", group.options.map(function (o, i) { return String.fromCharCode(65 + i) + ". " + o; }).join("   ")));
    }
    q.appendChild(el("div", null, "gold: " + group.answer + " · predicted: " + (response.answer === null ? "(none)" : response.answer)));
    c.appendChild(q);
    c.appendChild(strip(group));
    c.appendChild(timeline(group, response));
    var trace = el("div", "trace");
    response.segments.forEach(function (seg) {
      trace.appendChild(el("span", seg[0] ? "seg-" + seg[0] : null, seg[1]));
    });
    c.appendChild(trace);
    var cols = el("div", "cols");
    cols.appendChild(rewardTable(response));
    cols.appendChild(siblingTable(group, j));
    c.appendChild(cols);
    return c;
  }

  data.groups.forEach(function (group) {
    group.responses.forEach(function (response, j) {
      var c = card(group, response, j);
      cards.push({node: c, group: group, response: response});
      root.appendChild(c);
    });
  });

  // --- filters ---------------------------------------------------------------------------------------------
  var sources = [], steps = [], parts = [];
  cards.forEach(function (x) {
    var kind = x.group.source.split(" ")[0].replace(":", "");
    if (sources.indexOf(kind) < 0) sources.push(kind);
    if (x.group.step !== null && steps.indexOf(x.group.step) < 0) steps.push(x.group.step);
    Object.keys(x.response.reward).forEach(function (k) { if (parts.indexOf(k) < 0) parts.push(k); });
  });
  steps.sort(function (a, b) { return a - b; });
  function fill(id, values) {
    var sel = document.getElementById(id);
    values.forEach(function (v) { var o = el("option", null, v); o.value = String(v); sel.appendChild(o); });
    return sel;
  }
  var f = {
    source: fill("f-source", sources),
    step: fill("f-step", steps),
    outcome: document.getElementById("f-outcome"),
    format: document.getElementById("f-format"),
    part: fill("f-part", parts),
    min: document.getElementById("f-min"),
    max: document.getElementById("f-max")
  };
  function apply() {
    var shown = 0;
    var min = parseFloat(f.min.value), max = parseFloat(f.max.value);
    cards.forEach(function (x) {
      var ok = true;
      var kind = x.group.source.split(" ")[0].replace(":", "");
      if (f.source.value && kind !== f.source.value) ok = false;
      if (f.step.value && String(x.group.step) !== f.step.value) ok = false;
      if (f.outcome.value === "correct" && !x.response.correct) ok = false;
      if (f.outcome.value === "wrong" && x.response.correct) ok = false;
      if (f.format.value === "valid" && !x.response.format_valid) ok = false;
      if (f.format.value === "invalid" && x.response.format_valid) ok = false;
      if (f.part.value) {
        var v = x.response.reward[f.part.value];
        if (typeof v !== "number") ok = false;
        else if ((!isNaN(min) && v < min) || (!isNaN(max) && v > max)) ok = false;
      }
      x.node.hidden = !ok;
      if (ok) shown += 1;
    });
    document.getElementById("shown-count").textContent = "showing " + shown + " of " + cards.length + " rollouts";
  }
  Object.keys(f).forEach(function (k) { f[k].addEventListener(k === "min" || k === "max" ? "input" : "change", apply); });
  // Filters can come in the address (report.html?outcome=wrong&part=temporal_iou&max=0.2): a shareable view.
  var params = new URLSearchParams(window.location.search);
  Object.keys(f).forEach(function (k) { if (params.has(k)) f[k].value = params.get(k); });
  apply();
  document.body.dataset.viewerReady = String(cards.length);
}());
